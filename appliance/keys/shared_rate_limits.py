"""Fleet-wide rate windows: a key's requests and tokens per minute counted on every box, in PostgreSQL.

The same sliding one-minute windows as rate_limits.RateWindows, kept as rows (one per admitted
request, one per finished request's tokens) and read on the database's own clock, so boxes need
not agree on the time. Admitting a request locks its key for the transaction
(pg_advisory_xact_lock), so two boxes admitting at once cannot both take the last slot; rows older
than the window are deleted as the key is next admitted. Only keys with an rpm or tpm limit cost
a round trip.

Tokens are known when a request finishes, on the event loop, where nothing waits on the network:
they are kept in memory and written by the key store's flush thread every couple of seconds (and
this box's, for the key being admitted, before its count), so other boxes see them that late.
"""

import threading

from appliance.keys.rate_limits import WINDOW_S, RateLimited

_COUNT = f"""
SELECT
  (SELECT COUNT(*) FROM rate_requests WHERE key_id = ? AND at > clock_timestamp() - interval '{WINDOW_S} seconds')
    AS requests,
  (SELECT EXTRACT(EPOCH FROM MIN(at) + interval '{WINDOW_S} seconds' - clock_timestamp()) FROM rate_requests
    WHERE key_id = ? AND at > clock_timestamp() - interval '{WINDOW_S} seconds') AS request_wait_s,
  (SELECT COALESCE(SUM(tokens), 0) FROM rate_tokens WHERE key_id = ?
    AND at > clock_timestamp() - interval '{WINDOW_S} seconds') AS tokens
"""
_TOKEN_ROWS = f"""
SELECT tokens, EXTRACT(EPOCH FROM at + interval '{WINDOW_S} seconds' - clock_timestamp()) AS left_s
FROM rate_tokens WHERE key_id = ? AND at > clock_timestamp() - interval '{WINDOW_S} seconds' ORDER BY at
"""


class SharedRateWindows:
    def __init__(self, database):
        self._db = database
        self._lock = threading.Lock()
        self._pending_tokens: dict[str, int] = {}  # key -> tokens finished here, not yet written

    def admit(self, key_id: str, rpm_limit: int | None, tpm_limit: int | None) -> None:
        """Count one request, or raise RateLimited if the key's last minute, on every box, is full."""
        if rpm_limit is None and tpm_limit is None:
            return
        taken = self._take({key_id})
        refusal = None
        try:
            with self._db.transaction() as tx:
                tx.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (key_id,))
                self._write_tokens(tx, taken)
                tx.execute(f"DELETE FROM rate_requests WHERE key_id = ? AND at <= clock_timestamp() - interval "
                           f"'{WINDOW_S} seconds'", (key_id,))
                counts = tx.query_one(_COUNT, (key_id, key_id, key_id))
                if rpm_limit is not None and counts["requests"] >= rpm_limit:
                    wait = float(counts["request_wait_s"] or WINDOW_S)
                    refusal = RateLimited(max(wait, 0.0), f"rate limit: {rpm_limit} requests per minute for key {key_id}")
                elif tpm_limit is not None and counts["tokens"] >= tpm_limit:
                    refusal = RateLimited(self._wait_for_tokens(tx, key_id, tpm_limit, int(counts["tokens"])),
                                          f"rate limit: {tpm_limit} tokens per minute for key {key_id}")
                else:
                    tx.execute("INSERT INTO rate_requests (key_id, at) VALUES (?, clock_timestamp())", (key_id,))
        except self._db.errors:
            self._put_back(taken)
            raise
        if refusal is not None:  # raised after the commit, which keeps the tokens written above
            raise refusal

    def add_tokens(self, key_id: str, tokens: int) -> None:
        """Count a finished request's tokens; memory only, written by flush()."""
        with self._lock:
            self._pending_tokens[key_id] = self._pending_tokens.get(key_id, 0) + tokens

    def flush(self) -> None:
        """Write every key's pending tokens; on a database error they are kept for the next flush."""
        pending = self._take(None)
        if not pending:
            return
        try:
            with self._db.transaction() as tx:
                self._write_tokens(tx, pending)
                tx.execute(f"DELETE FROM rate_tokens WHERE at <= clock_timestamp() - interval '{WINDOW_S} seconds'")
        except self._db.errors:
            self._put_back(pending)
            raise

    def _put_back(self, pending: dict[str, int]) -> None:
        with self._lock:
            for key_id, tokens in pending.items():
                self._pending_tokens[key_id] = self._pending_tokens.get(key_id, 0) + tokens

    def _take(self, keys: set[str] | None) -> dict[str, int]:
        with self._lock:
            if keys is None:
                taken, self._pending_tokens = self._pending_tokens, {}
                return taken
            return {k: self._pending_tokens.pop(k) for k in keys if k in self._pending_tokens}

    @staticmethod
    def _write_tokens(tx, pending: dict[str, int]) -> None:
        if pending:
            tx.executemany("INSERT INTO rate_tokens (key_id, at, tokens) VALUES (?, clock_timestamp(), ?)",
                           [(key_id, tokens) for key_id, tokens in pending.items() if tokens > 0])

    @staticmethod
    def _wait_for_tokens(tx, key_id: str, limit: int, total: int) -> float:
        """Seconds until enough of the window's tokens age out to bring it below the limit."""
        for row in tx.query(_TOKEN_ROWS, (key_id,)):
            total -= row["tokens"]
            if total < limit:
                return max(float(row["left_s"]), 0.0)
        return WINDOW_S
