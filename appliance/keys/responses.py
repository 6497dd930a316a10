"""Stored responses (the Responses API's `store` and `previous_response_id`), kept per key in the key store's
database: what a response's conversation was, so that a client sending only the new turn is answered in context.

A key sees only its own: every lookup is by key and id. Rows older than the operator's retention
(`responses_retention_s`) are deleted as new ones are written.
"""

import json
import time
from collections.abc import Callable


class StoredResponses:
    def __init__(self, db, clock: Callable[[], float] = time.time):
        """db: the key store's database (keys/sqlite_db or keys/postgres_db); the table is migration 6's."""
        self._db = db
        self._clock = clock

    def put(self, key_id: str, response_id: str, conversation: list[dict], retention_s: float) -> None:
        """Keep a response's conversation (its input and its output, as chat messages); drop what outlived the
        retention."""
        now = self._clock()
        with self._db.transaction() as tx:  # response ids are new each time: a plain insert
            tx.execute("INSERT INTO responses (id, key_id, created_at, conversation) VALUES (?, ?, ?, ?)",
                       (response_id, key_id, now, json.dumps(conversation)))
            tx.execute("DELETE FROM responses WHERE created_at < ?", (now - retention_s,))

    def get(self, key_id: str, response_id: str, retention_s: float) -> list[dict] | None:
        """The conversation of the key's response `response_id`, or None (another key's, expired, or never kept)."""
        row = self._db.query_one(
            "SELECT conversation FROM responses WHERE id = ? AND key_id = ? AND created_at >= ?",
            (response_id, key_id, self._clock() - retention_s))
        return json.loads(row["conversation"]) if row is not None else None
