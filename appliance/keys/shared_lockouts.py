"""Fleet-wide lock-outs: failed authentications from a client address counted on every box, in PostgreSQL.

Each box still locks an address out at once on its own count (serving/lockout.AuthLockout); this
adds the fleet's view. The box's failures are kept in memory and written by the key store's flush
thread every couple of seconds, which also reads the addresses locked out anywhere, so an address
that guesses keys on several boxes is locked out on all of them within a flush interval. The
database decides (on its own clock) when an address's failures over the last minute, on every
box, reach the limit.
"""

from __future__ import annotations

import threading
import time

from appliance.keys.rate_limits import WINDOW_S


class SharedLockouts:
    def __init__(self, database):
        self._db = database
        self._lock = threading.Lock()
        self._pending: list[str] = []  # client keys that failed here since the last sync
        self._limits: tuple[int, float] | None = None  # (failures per minute, lock-out seconds)
        self._locked: dict[str, float] = {}  # client key -> until when (time.monotonic), as of the last sync

    def failed(self, client: str, failures_per_minute: int, lockout_s: float) -> None:
        """Count one failed authentication from `client` (memory only; sync() writes it)."""
        with self._lock:
            self._pending.append(client)
            self._limits = (failures_per_minute, lockout_s)

    def retry_after_s(self, client: str) -> float | None:
        """Seconds `client` stays locked out somewhere in the fleet (as of the last sync), or None."""
        with self._lock:
            until = self._locked.get(client)
        left = until - time.monotonic() if until is not None else 0.0
        return left if left > 0 else None

    def sync(self) -> None:
        """Write this box's failures, lock out addresses the fleet's failures put over the limit, read who is locked."""
        with self._lock:
            pending, self._pending = self._pending, []
            limits = self._limits
        try:
            with self._db.transaction() as tx:
                if pending:
                    tx.executemany("INSERT INTO auth_failures (client, at) VALUES (?, clock_timestamp())",
                                   [(client,) for client in pending])
                    failures_per_minute, lockout_s = limits
                    tx.executemany(
                        "INSERT INTO auth_lockouts (client, until_at) SELECT ?, clock_timestamp() + make_interval(secs => ?)"
                        " WHERE (SELECT COUNT(*) FROM auth_failures WHERE client = ?"
                        f" AND at > clock_timestamp() - interval '{WINDOW_S} seconds') >= ?"
                        " ON CONFLICT (client) DO UPDATE SET until_at = excluded.until_at"
                        " WHERE auth_lockouts.until_at <= clock_timestamp()",
                        [(client, lockout_s, client, failures_per_minute) for client in set(pending)])
                tx.execute(f"DELETE FROM auth_failures WHERE at <= clock_timestamp() - interval '{WINDOW_S} seconds'")
                rows = tx.query("SELECT client, EXTRACT(EPOCH FROM until_at - clock_timestamp()) AS left_s"
                                " FROM auth_lockouts WHERE until_at > clock_timestamp()")
        except self._db.errors:
            with self._lock:  # counted again at the next sync
                self._pending[:0] = pending
            raise
        now = time.monotonic()
        with self._lock:
            self._locked = {row["client"]: now + float(row["left_s"]) for row in rows}
