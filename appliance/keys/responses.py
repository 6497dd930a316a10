"""Stored responses (the Responses API's `store` and `previous_response_id`), kept per key in the key store's
database: what a response's conversation was, images included, so that a client sending only the new turn is
answered in context.

A key sees only its own: every lookup is by key and id. A conversation's images are kept as the bytes the
server first read (a data: URL's, decoded; an allowed host's, as fetched), never as a URL to fetch again: a
host may have gone or changed, and a fetch on a follow-up would be a way in. Each image is kept once per key,
by its sha256, however many of the key's responses hold it (an agent's chain of responses repeats its
screenshots in every one). Rows older than the operator's retention (`responses_retention_s`) are deleted as
new ones are written; an image's `stored_at` is renewed by every response that stores it, so it outlives
none of them and goes with the last. A revoked key's are deleted at once: no request can read them again,
and what apps sent (screenshots, documents) is not kept past its use.
"""

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredConversation:
    messages: list[dict]  # chat messages; an image is an {"type": "image"} part of a user message
    images: list[bytes]  # the image parts' images, in the order they come in the messages


class StoredResponses:
    def __init__(self, db, clock: Callable[[], float] = time.time):
        """db: the key store's database (keys/sqlite_db or keys/postgres_db); the tables are migrations 6 and 8's."""
        self._db = db
        self._clock = clock

    def put(self, key_id: str, response_id: str, conversation: list[dict], images: Sequence[bytes],
            retention_s: float) -> None:
        """Keep a response's conversation (its input and its output, as chat messages) and its images; drop what
        outlived the retention."""
        now = self._clock()
        hashes = [_sha256(data) for data in images]
        with self._db.transaction() as tx:  # response ids are new each time: a plain insert
            tx.execute("INSERT INTO responses (id, key_id, created_at, conversation, images) VALUES (?, ?, ?, ?, ?)",
                       (response_id, key_id, now, json.dumps(conversation), json.dumps(hashes)))
            _keep_images(tx, key_id, dict(zip(hashes, images)), now)
            tx.execute("DELETE FROM responses WHERE created_at < ?", (now - retention_s,))
            tx.execute("DELETE FROM response_images WHERE stored_at < ?", (now - retention_s,))

    def get(self, key_id: str, response_id: str, retention_s: float) -> StoredConversation | None:
        """The conversation of the key's response `response_id`, or None (another key's, expired, or never kept)."""
        since = self._clock() - retention_s
        row = self._db.query_one(
            "SELECT conversation, images FROM responses WHERE id = ? AND key_id = ? AND created_at >= ?",
            (response_id, key_id, since))
        if row is None:
            return None
        hashes = json.loads(row["images"])
        held = {r["sha256"]: bytes(r["data"]) for r in self._db.query(
            f"SELECT sha256, data FROM response_images WHERE key_id = ? AND sha256 IN ({_marks(hashes)})",
            (key_id, *hashes))} if hashes else {}
        if any(h not in held for h in hashes):  # pruned by a box whose clock runs ahead: as good as expired
            return None
        return StoredConversation(json.loads(row["conversation"]), [held[h] for h in hashes])

    def forget(self, key_id: str) -> None:
        """Delete the key's responses and their images (the key is revoked)."""
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM responses WHERE key_id = ?", (key_id,))
            tx.execute("DELETE FROM response_images WHERE key_id = ?", (key_id,))

    def image_bytes_with(self, key_id: str, images: Sequence[bytes], retention_s: float) -> int:
        """The bytes of images the key's stored responses would hold with `images` stored too (an image the key
        holds already counts once)."""
        since = self._clock() - retention_s
        total = self._db.query_one("SELECT COALESCE(SUM(size), 0) AS total FROM response_images "
                                   "WHERE key_id = ? AND stored_at >= ?", (key_id, since))["total"]
        sizes = {_sha256(data): len(data) for data in images}
        held = {r["sha256"] for r in self._db.query(
            f"SELECT sha256 FROM response_images WHERE key_id = ? AND stored_at >= ? AND sha256 IN ({_marks(sizes)})",
            (key_id, since, *sizes))} if sizes else set()
        return int(total) + sum(size for h, size in sizes.items() if h not in held)


def _keep_images(tx, key_id: str, by_hash: dict[str, bytes], now: float) -> None:
    """Renew the images the key holds already (their bytes are not sent again), insert the others."""
    if not by_hash:
        return
    renewed = {r["sha256"] for r in tx.query(
        f"UPDATE response_images SET stored_at = ? WHERE key_id = ? AND sha256 IN ({_marks(by_hash)}) RETURNING sha256",
        (now, key_id, *by_hash))}
    new = [(key_id, h, now, len(data), data) for h, data in by_hash.items() if h not in renewed]
    if new:  # another request of the key may have inserted one meanwhile: then it is only renewed
        tx.executemany("INSERT INTO response_images (key_id, sha256, stored_at, size, data) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT (key_id, sha256) DO UPDATE SET stored_at = excluded.stored_at", new)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _marks(values) -> str:
    return ", ".join("?" * len(values))
