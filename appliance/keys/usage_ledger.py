"""Per-key token usage for the key store: counted in memory, flushed to the database in the background.

Requests count their usage in memory (no I/O on the request path); a background thread writes the
counts every couple of seconds in one transaction, so a crash loses at most that much and the
database never half-applies a flush. Reads (usage per day, a budget period's total) add the
unflushed counts to what the database holds.

A budget period's total is read once and then kept up to date in memory; where other boxes write
the same database (a fleet) it is read again every flush interval, so a key's budget counts every
box's usage within a couple of seconds.
"""

import logging
import threading
import time
from collections.abc import Callable
from datetime import date, datetime

from appliance.keys.records import iso

log = logging.getLogger("appliance.keys")
FLUSH_INTERVAL_S = 2.0
Counts = list[int]  # [requests, prompt tokens, completion tokens]


class UsageLedger:
    def __init__(self, database, now: Callable[[], datetime], flush_interval_s: float,
                 also_flush: Callable[[], None] | None = None):
        self._db = database  # sqlite_db.SQLiteDatabase or postgres_db.PostgresDatabase
        self._now = now
        self._also_flush = also_flush  # run by the flush thread after each flush (a fleet's rate-window tokens)
        self._reread_after_s = flush_interval_s if database.shared else None
        self._lock = threading.Lock()  # guards everything in memory below; never held during I/O
        self._flush_lock = threading.Lock()  # one flush at a time; see tokens_since
        self._pending: dict[tuple[str, str], Counts] = {}  # (key, day) -> counts not yet written
        self._pending_last_used: dict[str, datetime] = {}
        self._period_used: dict[str, dict[str, int]] = {}  # key -> {period start: tokens since}
        self._period_read_at: dict[str, float] = {}  # key -> when its period total was read (monotonic)
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_loop, args=(flush_interval_s,), name="keystore-flush", daemon=True
        )
        self._flusher.start()

    def record(self, key_id: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one finished request; memory only, written by the flush thread."""
        now = self._now()
        day = now.date().isoformat()
        tokens = prompt_tokens + completion_tokens
        with self._lock:
            _add(self._pending.setdefault((key_id, day), [0, 0, 0]), [1, prompt_tokens, completion_tokens])
            self._pending_last_used[key_id] = now
            periods = self._period_used.get(key_id, {})
            for start in periods:
                if start <= day:
                    periods[start] += tokens

    def last_used(self, key_id: str) -> datetime | None:
        """When the key was last used, if that is not flushed yet."""
        with self._lock:
            return self._pending_last_used.get(key_id)

    def tokens_since(self, key_id: str, start: date) -> int:
        """Tokens used since `start`: read from the database once per key and period (a fleet's: again after
        each flush interval), kept up to date in memory in between.

        The read holds the flush lock, so no flush is half-way (rows written but not yet taken out of
        _pending): the database plus _pending then counts every token exactly once.
        """
        start_day = start.isoformat()
        with self._lock:
            cached = self._period_used.get(key_id, {}).get(start_day)
            fresh = self._reread_after_s is None or time.monotonic() - self._period_read_at.get(key_id, 0.0) < self._reread_after_s
            if cached is not None and fresh:
                return cached
        with self._flush_lock:
            row = self._db.query_one(
                "SELECT CAST(COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS BIGINT) AS used FROM usage"
                " WHERE key_id = ? AND day >= ?",
                (key_id, start_day),
            )
            with self._lock:
                pending = sum(c[1] + c[2] for (k, day), c in self._pending.items() if k == key_id and day >= start_day)
                # Only the current period matters; older entries are dropped so memory stays flat.
                self._period_used[key_id] = {start_day: row["used"] + pending}
                self._period_read_at[key_id] = time.monotonic()
                return row["used"] + pending

    def last_known_tokens_since(self, key_id: str, start: date) -> int:
        """The period's total as last read and counted here since (the database is unreachable); 0 if never read."""
        with self._lock:
            return self._period_used.get(key_id, {}).get(start.isoformat(), 0)

    def since(self, first: str, key_id: str | None = None) -> dict[tuple[str, str], Counts]:
        """(key id, day) -> counts from day `first` on, of one key or of all; unflushed counts included."""
        query = "SELECT key_id, day, requests, prompt_tokens, completion_tokens FROM usage WHERE day >= ?"
        args = [first]
        if key_id is not None:
            query += " AND key_id = ?"
            args.append(key_id)
        totals = {
            (row["key_id"], row["day"]): [row["requests"], row["prompt_tokens"], row["completion_tokens"]]
            for row in self._db.query(query, args)
        }
        with self._lock:
            for (key, day), counts in self._pending.items():
                if (key_id is None or key == key_id) and day >= first:
                    _add(totals.setdefault((key, day), [0, 0, 0]), counts)
        return totals

    def flush(self) -> None:
        """Write the counted usage to the database in one transaction."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
                last_used, self._pending_last_used = self._pending_last_used, {}
            if not pending and not last_used:
                return
            try:
                self._write(pending, last_used)
            except self._db.errors:
                with self._lock:  # put the counts back, to be retried at the next flush
                    for slot, counts in pending.items():
                        _add(self._pending.setdefault(slot, [0, 0, 0]), counts)
                    for key_id, when in last_used.items():
                        self._pending_last_used.setdefault(key_id, when)
                raise

    def _write(self, pending: dict, last_used: dict) -> None:
        with self._db.transaction() as tx:
            tx.executemany(
                "INSERT INTO usage (key_id, day, requests, prompt_tokens, completion_tokens) VALUES (?,?,?,?,?)"
                " ON CONFLICT (key_id, day) DO UPDATE SET requests = usage.requests + excluded.requests,"
                " prompt_tokens = usage.prompt_tokens + excluded.prompt_tokens,"
                " completion_tokens = usage.completion_tokens + excluded.completion_tokens",
                [(k, day, *counts) for (k, day), counts in pending.items()],
            )
            tx.executemany(
                "UPDATE keys SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                [(iso(when), k, iso(when)) for k, when in last_used.items()],
            )

    def _flush_loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.flush()
            except self._db.errors:
                pass  # counts were put back; the next flush retries (the database was busy, or unreachable)
            if self._also_flush is not None:
                self._also_flush()

    def close(self) -> None:
        """Stop the flush thread and write what is counted (lost if the database cannot be reached now)."""
        self._stop.set()
        self._flusher.join()
        try:
            self.flush()
        except self._db.errors as e:
            log.warning("the key store could not write the last usage counts: %s", e)


def _add(total: Counts, counts: Counts) -> None:
    for i in range(3):
        total[i] += counts[i]
