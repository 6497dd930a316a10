"""API keys: a store with per-key limits, budgets and daily usage, in SQLite or PostgreSQL.

One box keeps its keys in a SQLite (WAL) file; a fleet shares one PostgreSQL database
(`keys_database_url`), so that a key made on any box works on all, is revoked on all at once, and
its limits and budget count every box's requests (sqlite_db.py, postgres_db.py; the schema's
versions in migrations.py). What happens while PostgreSQL cannot be reached is decided in
outage.py.

A key looks like `sk-app-<id>-<secret>`. The id is public (it names the key in logs, the CLI and
the TUI); the secret is shown once, at creation, and only its sha256 is stored. A slow password
hash (bcrypt, scrypt) protects low-entropy secrets chosen by people; ours are 192 random bits, so
brute force is out of reach whatever the hash, and a fast hash keeps authentication off the
request's critical path.

Usage is counted in memory and flushed to the database in the background (usage_ledger.py).
Rate windows (rpm, tpm) live in memory on one box (rate_limits.py) and in the database for a
fleet (shared_rate_limits.py).
"""

from __future__ import annotations  # the KeyStore.list method shadows `list` in annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path

from appliance.keys.outage import DEFAULT_GRACE_S, OutageGuard
from appliance.keys.rate_limits import RateLimited, RateWindows, period_bounds
from appliance.keys.records import (
    PURPOSES,
    AuthError,
    DayUsage,
    KeyNotFound,
    KeyRecord,
    KeyStoreError,
    KeyStoreUnavailable,
    iso,
    parse_dt,
    to_column,
    utcnow,
    validate_limits,
)
from appliance.keys.responses import StoredConversation, StoredResponses
from appliance.keys.sqlite_db import SQLiteDatabase
from appliance.keys.usage_ledger import FLUSH_INTERVAL_S, UsageLedger

__all__ = ["AuthError", "DayUsage", "KeyNotFound", "KeyRecord", "KeyStore", "KeyStoreError", "KeyStoreUnavailable",
           "RateLimited"]

log = logging.getLogger("appliance.keys")
KEY_PREFIX = "sk-app-"
MAX_KEY_LENGTH = 256  # longer Authorization values are rejected before any hashing
KEY_COLUMNS = ("id", "name", "secret_sha256", "created_at", "expires_at", "revoked_at", "rpm_limit", "tpm_limit",
               "budget_tokens", "budget_period", "allowed_models", "last_used_at", "allowed_networks", "purpose")
USAGE_COLUMNS = ("key_id", "day", "requests", "prompt_tokens", "completion_tokens")


def is_database_url(location) -> bool:
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


class KeyStore:
    def __init__(
        self,
        location: Path | str,
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        outage_grace_s: float = DEFAULT_GRACE_S,
    ):
        """`location`: a keys.db path (one box), or a postgresql:// URL (a fleet's shared store)."""
        if is_database_url(location):
            from appliance.keys.postgres_db import PostgresDatabase  # psycopg only where a fleet uses it
            from appliance.keys.shared_lockouts import SharedLockouts
            from appliance.keys.shared_rate_limits import SharedRateWindows

            self._db = PostgresDatabase(location)
            self.db_path = None
            self._shared_windows = SharedRateWindows(self._db)
            self.shared_lockouts = SharedLockouts(self._db)  # the failed-key lock-out (serving) reports to it
        else:
            self._db = SQLiteDatabase(Path(location))
            self.db_path = self._db.path
            self._shared_windows = None
            self.shared_lockouts = None
        self._now = now  # for dates: expiry, budget periods, usage days
        self._windows = RateWindows(clock)  # one box's windows; a fleet's during a database outage
        self.outage = OutageGuard(outage_grace_s, clock)
        self._closed = False
        self._usage = UsageLedger(self._db, now, flush_interval_s, also_flush=self._flush_shared)
        self._responses = StoredResponses(self._db)

    @property
    def location(self) -> str:
        """Where the keys are: the keys.db path, or the database URL without its password."""
        return self._db.describe()

    @property
    def database_errors(self) -> tuple[type[Exception], ...]:
        """What a call may raise when the database fails (callers that must not, such as a scrape, catch these)."""
        return self._db.errors

    @property
    def shared(self) -> bool:
        """Whether other boxes use the same keys (PostgreSQL)."""
        return self._db.shared

    # -- stored responses (keys/responses.py) ------------------------------------------------

    def store_response(self, key_id: str, response_id: str, conversation: list[dict], retention_s: float,
                       images: Sequence[bytes] = ()) -> None:
        self._responses.put(key_id, response_id, conversation, images, retention_s)

    def stored_response(self, key_id: str, response_id: str, retention_s: float) -> StoredConversation | None:
        return self._responses.get(key_id, response_id, retention_s)

    def stored_image_bytes_with(self, key_id: str, images: Sequence[bytes], retention_s: float) -> int:
        """What the key's stored responses would hold in images once `images` were stored too."""
        return self._responses.image_bytes_with(key_id, images, retention_s)

    # -- keys -----------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        rpm_limit: int | None = None,
        tpm_limit: int | None = None,
        budget_tokens: int | None = None,
        budget_period: str = "day",
        expires_at: datetime | None = None,
        allowed_models: list[str] | None = None,
        allowed_networks: list[str] | None = None,
        priority: int = 0,
        weight: float = 1.0,
        purpose: str = "api",
    ) -> tuple[KeyRecord, str]:
        fields = validate_limits(
            dict(
                name=name, rpm_limit=rpm_limit, tpm_limit=tpm_limit, budget_tokens=budget_tokens,
                budget_period=budget_period, expires_at=expires_at, allowed_models=allowed_models,
                allowed_networks=allowed_networks, priority=priority, weight=weight,
            )
        )
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
        columns = ["id", "secret_sha256", "created_at", "purpose", *fields]
        secret = secrets.token_urlsafe(24)
        for _ in range(10):  # 32-bit ids: a collision is rare, and retried
            key_id = secrets.token_hex(4)
            values = [key_id, _hash_secret(secret), iso(self._now()), purpose]
            values += [to_column(name, value) for name, value in fields.items()]
            try:
                self._db.execute(
                    f"INSERT INTO keys ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", values
                )
                break
            except self._db.integrity_error:
                continue
        else:
            raise KeyStoreError("could not find a free key id after 10 tries")
        return self._require(key_id), f"{KEY_PREFIX}{key_id}-{secret}"

    def get(self, key_id: str) -> KeyRecord | None:
        row = self._db.query_one("SELECT * FROM keys WHERE id = ?", (key_id,))
        return self._record(row) if row is not None else None

    def list(self) -> list[KeyRecord]:
        return [self._record(row) for row in self._db.query("SELECT * FROM keys ORDER BY created_at, id")]

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke the key for good, and delete its stored responses: no request can read them again."""
        self._require(key_id)
        # COALESCE keeps the first revocation time when a key is revoked twice.
        self._db.execute("UPDATE keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", (iso(self._now()), key_id))
        self._responses.forget(key_id)
        return self._require(key_id)

    def update(self, key_id: str, **limits) -> KeyRecord:
        fields = validate_limits(limits)
        self._require(key_id)
        if fields:
            values = [to_column(name, value) for name, value in fields.items()]
            assignments = ", ".join(f"{k} = ?" for k in fields)  # names checked against UPDATABLE
            self._db.execute(f"UPDATE keys SET {assignments} WHERE id = ?", (*values, key_id))
        return self._require(key_id)

    def _require(self, key_id: str) -> KeyRecord:
        record = self.get(key_id)
        if record is None:
            raise KeyNotFound(f"no key with id {key_id!r}")
        return record

    def _record(self, row) -> KeyRecord:
        # The last use not yet flushed is newer than what the database says.
        last_used = parse_dt(row["last_used_at"])
        pending = self._usage.last_used(row["id"])
        if pending is not None and (last_used is None or pending > last_used):
            last_used = pending
        return KeyRecord.from_row(row, last_used)

    # -- copying a store (`appliance keys migrate`) ------------------------------------------------

    def export_rows(self) -> tuple[list[dict], list[dict]]:
        """Every key (with its secret's hash) and every day of usage, as stored, flushed first."""
        self.flush()
        keys = [{c: row[c] for c in KEY_COLUMNS} for row in self._db.query("SELECT * FROM keys ORDER BY id")]
        usage = [{c: row[c] for c in USAGE_COLUMNS}
                 for row in self._db.query("SELECT * FROM usage ORDER BY key_id, day")]
        return keys, usage

    def import_rows(self, keys: list[dict], usage: list[dict]) -> tuple[int, int]:
        """Add keys and usage days this store lacks, in one transaction; rows it has are left as they are,
        so copying twice adds nothing. Returns (keys added, usage days added)."""
        with self._db.transaction() as tx:
            have_keys = {row["id"] for row in tx.query("SELECT id FROM keys")}
            have_days = {(row["key_id"], row["day"]) for row in tx.query("SELECT key_id, day FROM usage")}
            new_keys = [k for k in keys if k["id"] not in have_keys]
            new_days = [u for u in usage if (u["key_id"], u["day"]) not in have_days]
            if new_keys:
                tx.executemany(f"INSERT INTO keys ({', '.join(KEY_COLUMNS)}) VALUES ({', '.join('?' * len(KEY_COLUMNS))})",
                               [tuple(k[c] for c in KEY_COLUMNS) for k in new_keys])
            if new_days:
                tx.executemany(f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES "
                               f"({', '.join('?' * len(USAGE_COLUMNS))})",
                               [tuple(u[c] for c in USAGE_COLUMNS) for u in new_days])
        return len(new_keys), len(new_days)

    # -- per request ----------------------------------------------------------------------------

    def authenticate(self, api_key: str | None) -> KeyRecord:
        """The key's record; AuthError 401 for a missing or wrong key, 403 if revoked or expired;
        KeyStoreUnavailable (503) when the database cannot be reached and nothing recent vouches for the key."""
        key_id, secret = _split_key(api_key)
        secret_hash = _hash_secret(secret or "")
        row = None
        if key_id is not None:
            try:
                if not self.outage.should_try():
                    return self._active(self.outage.admit_unverified(key_id, secret_hash))
                row = self._db.query_one("SELECT * FROM keys WHERE id = ?", (key_id,))
            except self._db.unreachable_errors as e:
                self.outage.failed(e)
                return self._active(self.outage.admit_unverified(key_id, secret_hash))
        # Compare even when the id is unknown, so timing says nothing about the secret.
        stored = row["secret_sha256"] if row is not None else _hash_secret("no such key")
        matches = hmac.compare_digest(secret_hash, stored)
        if api_key is None or api_key == "":
            raise AuthError(401, "missing API key: send it as 'Authorization: Bearer sk-app-...'")
        if key_id is None:
            raise AuthError(401, "malformed API key: expected 'sk-app-<id>-<secret>'")
        if row is None or not matches:
            self.outage.reached()
            raise AuthError(401, "invalid API key")
        try:
            record = self._active(self._record(row))
        except AuthError:
            self.outage.rejected(key_id)
            raise
        self.outage.verified(secret_hash, record)
        return record

    def _active(self, record: KeyRecord) -> KeyRecord:
        """The record, unless it is revoked or expired (403); a remembered one may have expired since."""
        status = record.status(self._now())
        if status != "active":
            raise AuthError(403, f"API key {record.id} is {status}")
        return record

    @staticmethod
    def check_model(record: KeyRecord, model: str) -> None:
        """A 403 AuthError unless the key may name `model`."""
        if record.purpose == "fleet-probe":
            raise AuthError(403, f"API key {record.id} is the fleet gateway's probe key: it may list models "
                                 "(GET /v1/models) and nothing else")
        if record.allowed_models is not None and model not in record.allowed_models:
            raise AuthError(403, f"API key {record.id} may not use model {model!r}")

    def check_request(self, record: KeyRecord, model: str) -> None:
        """Admit one request for `model`, counting it against the key's requests per minute."""
        self.check_model(record, model)
        self._check_budget(record)
        if self._shared_windows is not None and self.outage.reachable:
            try:
                self._shared_windows.admit(record.id, record.rpm_limit, record.tpm_limit)
                return
            except self._db.unreachable_errors as e:
                self.outage.failed(e)  # counted on this box alone until the database answers again
        self._windows.admit(record.id, record.rpm_limit, record.tpm_limit)

    def _check_budget(self, record: KeyRecord) -> None:
        if record.budget_tokens is None:
            return
        start, end = period_bounds(record.budget_period, self._now())
        used = None
        if self.outage.reachable:
            try:
                used = self._usage.tokens_since(record.id, start)
            except self._db.unreachable_errors as e:
                self.outage.failed(e)
        if used is None:  # the database is unreachable: the last total read, plus what this box counted since
            used = self._usage.last_known_tokens_since(record.id, start)
        if used >= record.budget_tokens:
            retry = max((end - self._now()).total_seconds(), 1.0)
            raise RateLimited(
                retry,
                f"token budget exhausted: {used} of {record.budget_tokens} tokens this {record.budget_period}"
                f" for key {record.id}; it renews at {end.isoformat()}",
            )

    def record_usage(self, key_id: str, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one finished request; memory only, written by the flush thread."""
        self._windows.add_tokens(key_id, prompt_tokens + completion_tokens)
        if self._shared_windows is not None:
            self._shared_windows.add_tokens(key_id, prompt_tokens + completion_tokens)
        self._usage.record(key_id, prompt_tokens, completion_tokens)

    def usage(self, key_id: str, days: int = 30) -> list[DayUsage]:
        """Per-day usage for the last `days` days (today included), oldest first; unflushed counts included."""
        first = (self._now().date() - timedelta(days=days - 1)).isoformat()
        totals = self._usage.since(first, key_id)
        return [DayUsage(date.fromisoformat(day), *totals[key, day]) for key, day in sorted(totals)]

    def usage_today(self) -> dict[str, DayUsage]:
        """Today's usage of every key that has any, by key id, in one query (the key list shows it)."""
        today = self._now().date()
        return {key: DayUsage(today, *counts) for (key, _), counts in self._usage.since(today.isoformat()).items()}

    def flush(self) -> None:
        """Write the counted usage (and a fleet's rate-window tokens and failed authentications) to the database now."""
        self._usage.flush()
        self._flush_shared()

    def _flush_shared(self) -> None:
        """A fleet's: write this box's rate-window tokens and failed authentications, read the fleet's lock-outs."""
        if self._shared_windows is None:
            return
        try:
            self._shared_windows.flush()
            self.shared_lockouts.sync()
            self.outage.reached()
        except self._db.unreachable_errors as e:
            self.outage.failed(e)
        except self._db.errors as e:  # kept for the next flush; the flush thread must not die of it
            log.warning("the key store could not write the fleet's rate windows and lock-outs: %s", e)

    def probe(self) -> bool:
        """Ask the database whether it answers (health checks); the outage state follows."""
        try:
            self._db.check()
        except self._db.errors as e:
            self.outage.failed(e)
            return False
        self.outage.reached()
        return True

    def integrity(self) -> str:
        """The database's own check: 'ok' when sound."""
        return self._db.check()

    def close(self) -> None:
        """Stop the flush thread, write what is counted, close the connections."""
        if self._closed:
            return
        self._closed = True
        try:
            self._usage.close()
            self._flush_shared()
        finally:
            self._db.close()

    def __enter__(self) -> "KeyStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _split_key(api_key: str | None) -> tuple[str | None, str | None]:
    """(id, secret) of a well-formed key, else (None, None)."""
    if not api_key or len(api_key) > MAX_KEY_LENGTH or not api_key.startswith(KEY_PREFIX):
        return None, None
    key_id, sep, secret = api_key[len(KEY_PREFIX):].partition("-")
    if not sep or not key_id or not secret:
        return None, None
    return key_id, secret


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
