"""Stored responses (the Responses API's `store` and `previous_response_id`), kept per key in the key store's
database: what a response's conversation was, so that a client sending only the new turn is answered in context.

A key sees only its own: every lookup is by key and id. Rows older than the operator's retention
(`responses_retention_s`) are deleted as new ones are written.
"""

import json
import sqlite3
import time
from collections.abc import Callable

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    conversation TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created_at)
"""


class StoredResponses:
    def __init__(self, conn: Callable[[], sqlite3.Connection], clock: Callable[[], float] = time.time):
        self._conn = conn
        self._clock = clock

    def put(self, key_id: str, response_id: str, conversation: list[dict], retention_s: float) -> None:
        """Keep a response's conversation (its input and its output, as chat messages); drop what outlived the
        retention."""
        now = self._clock()
        conn = self._conn()
        conn.execute("INSERT OR REPLACE INTO responses (id, key_id, created_at, conversation) VALUES (?, ?, ?, ?)",
                     (response_id, key_id, now, json.dumps(conversation)))
        conn.execute("DELETE FROM responses WHERE created_at < ?", (now - retention_s,))

    def get(self, key_id: str, response_id: str, retention_s: float) -> list[dict] | None:
        """The conversation of the key's response `response_id`, or None (another key's, expired, or never kept)."""
        row = self._conn().execute(
            "SELECT conversation FROM responses WHERE id = ? AND key_id = ? AND created_at >= ?",
            (response_id, key_id, self._clock() - retention_s)).fetchone()
        return json.loads(row[0]) if row is not None else None
