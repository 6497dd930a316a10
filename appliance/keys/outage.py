"""What the key store does while its database cannot be reached (a fleet's PostgreSQL).

The decided behaviour: a key this box verified against the database within the last
`grace_s` seconds (default 5 minutes) keeps working, with the record as it was then; every other
key — unknown, never seen here, seen too long ago, or last seen revoked or expired — gets 503 with
Retry-After. So an unknown or revoked key never gets in: a revocation made while the database is
up is seen at once (every request reads the key while it can), and a key only revoked during the
outage cannot exist (revoking needs the database). Rate windows fall back to this box's own
memory and budgets to the last figures read, until the database answers again.

The state (reachable or not, since when, the last error, how many requests the grace let in) is
what `appliance health`, /metrics and the TUI show.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.keys.records import KeyRecord, KeyStoreUnavailable

DEFAULT_GRACE_S = 300.0
RETRY_AFTER_S = 5.0
RETRY_DATABASE_EVERY_S = 2.0  # while unreachable, one request in this long asks the database; the rest do not wait


@dataclass
class _Verified:
    secret_sha256: str
    record: KeyRecord
    at: float  # monotonic


class OutageGuard:
    def __init__(self, grace_s: float = DEFAULT_GRACE_S, clock: Callable[[], float] = time.monotonic):
        self.grace_s = grace_s
        self._clock = clock
        self._lock = threading.Lock()
        self._verified: dict[str, _Verified] = {}
        self.reachable = True
        self._last_try = 0.0  # monotonic: when a request last asked an unreachable database
        self.unreachable_since: float | None = None  # wall-clock seconds, for status and metrics
        self.last_error: str | None = None
        self.grace_admissions = 0  # requests let in on a remembered verification
        self.refusals = 0  # requests refused because nothing recent vouched for their key

    def verified(self, secret_sha256: str, record: KeyRecord) -> None:
        """The database just confirmed this key active: it answers and the key is good."""
        with self._lock:
            self._verified[record.id] = _Verified(secret_sha256, record, self._clock())
            self._reached()

    def rejected(self, key_id: str | None) -> None:
        """The database answered that this key is unknown, wrong, revoked or expired."""
        with self._lock:
            if key_id is not None:
                self._verified.pop(key_id, None)
            self._reached()

    def reached(self) -> None:
        with self._lock:
            self._reached()

    def _reached(self) -> None:
        self.reachable, self.unreachable_since, self.last_error = True, None, None

    def failed(self, error: Exception) -> None:
        with self._lock:
            if self.reachable:
                self.unreachable_since = time.time()
            self.reachable = False
            self._last_try = self._clock()
            self.last_error = f"{type(error).__name__}: {error}".strip()

    def should_try(self) -> bool:
        """Whether a request should ask the database: always while it answers; during an outage once every
        RETRY_DATABASE_EVERY_S, so requests are answered at once instead of each waiting out a connect timeout."""
        with self._lock:
            if self.reachable or self._clock() - self._last_try >= RETRY_DATABASE_EVERY_S:
                self._last_try = self._clock()
                return True
            return False

    def admit_unverified(self, key_id: str | None, secret_sha256: str) -> KeyRecord:
        """During an outage: the remembered record when the key was verified within grace_s, else 503."""
        now = self._clock()
        with self._lock:
            entry = self._verified.get(key_id) if key_id is not None else None
            if entry is not None and entry.secret_sha256 == secret_sha256 and now - entry.at <= self.grace_s:
                self.grace_admissions += 1
                return entry.record
            self.refusals += 1
        raise KeyStoreUnavailable(
            RETRY_AFTER_S,
            "the key store's database cannot be reached, and this key was not verified here in the last "
            f"{self.grace_s:.0f} s; retry shortly",
        )

    def status(self) -> dict:
        with self._lock:
            return {"reachable": self.reachable, "unreachable_since": self.unreachable_since,
                    "last_error": self.last_error, "grace_s": self.grace_s,
                    "grace_admissions": self.grace_admissions, "refusals": self.refusals,
                    "remembered_keys": len(self._verified)}
