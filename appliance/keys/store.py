"""API keys: a SQLite (WAL) store with per-key limits, budgets and daily usage.

A key looks like `sk-app-<id>-<secret>`. The id is public (it names the key in logs, the CLI and
the TUI); the secret is shown once, at creation, and only its sha256 is stored. A slow password
hash (bcrypt, scrypt) protects low-entropy secrets chosen by people; ours are 192 random bits, so
brute force is out of reach whatever the hash, and a fast hash keeps authentication off the
request's critical path.

Usage is counted in memory and flushed to SQLite in the background (appliance/usage_ledger.py).
Rate windows (rpm, tpm) live only in memory: they describe the last minute.
"""

from __future__ import annotations  # the KeyStore.list method shadows `list` in annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

from appliance.keys.records import (
    AuthError,
    DayUsage,
    KeyNotFound,
    KeyRecord,
    KeyStoreError,
    iso,
    parse_dt,
    to_column,
    utcnow,
    validate_limits,
)
from appliance.keys.rate_limits import RateLimited, RateWindows, period_bounds
from appliance.keys.responses import SCHEMA as RESPONSES_SCHEMA
from appliance.keys.responses import StoredResponses
from appliance.keys.usage_ledger import FLUSH_INTERVAL_S, UsageLedger

__all__ = ["AuthError", "DayUsage", "KeyNotFound", "KeyRecord", "KeyStore", "KeyStoreError", "RateLimited"]

KEY_PREFIX = "sk-app-"
MAX_KEY_LENGTH = 256  # longer Authorization values are rejected before any hashing

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT,
    rpm_limit INTEGER,
    tpm_limit INTEGER,
    budget_tokens INTEGER,
    budget_period TEXT NOT NULL DEFAULT 'day',
    allowed_models TEXT,
    last_used_at TEXT,
    allowed_networks TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    weight REAL NOT NULL DEFAULT 1.0
);
CREATE TABLE IF NOT EXISTS usage (
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day)
);
""" + RESPONSES_SCHEMA
# What a keys.db of an older version (PRAGMA user_version) needs to reach the next one (statements split on ";").
MIGRATIONS = {
    2: "ALTER TABLE keys ADD COLUMN allowed_networks TEXT",
    3: RESPONSES_SCHEMA,
    4: "ALTER TABLE keys ADD COLUMN priority INTEGER NOT NULL DEFAULT 0; "
       "ALTER TABLE keys ADD COLUMN weight REAL NOT NULL DEFAULT 1.0",
}
SCHEMA_VERSION = max(MIGRATIONS)


class KeyStore:
    def __init__(
        self,
        db_path: Path,
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
    ):
        self.db_path = Path(db_path)
        self._now = now  # for dates: expiry, budget periods, usage days
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # guards the connection list
        self._windows = RateWindows(clock)
        self._closed = False
        self._open_schema()
        self._usage = UsageLedger(self._conn, now, flush_interval_s)
        self._responses = StoredResponses(self._conn)

    # -- connections --------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            # FULL syncs the WAL on every commit: with NORMAL a power cut could lose every flush
            # since the last checkpoint (minutes), not just the last couple of seconds.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _open_schema(self) -> None:
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            is_new = not self.db_path.exists()
            conn = self._conn()
            conn.execute("PRAGMA journal_mode=WAL")
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:  # only then a write
                _upgrade(conn)
            if is_new:
                _match_folder_owner(self.db_path)
        except (OSError, sqlite3.Error) as e:
            raise KeyStoreError(f"cannot open the key store at {self.db_path}: {e}") from e

    # -- stored responses (keys/responses.py) ------------------------------------------------

    def store_response(self, key_id: str, response_id: str, conversation: list[dict], retention_s: float) -> None:
        self._responses.put(key_id, response_id, conversation, retention_s)

    def stored_response(self, key_id: str, response_id: str, retention_s: float) -> list[dict] | None:
        return self._responses.get(key_id, response_id, retention_s)

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
    ) -> tuple[KeyRecord, str]:
        fields = validate_limits(
            dict(
                name=name, rpm_limit=rpm_limit, tpm_limit=tpm_limit, budget_tokens=budget_tokens,
                budget_period=budget_period, expires_at=expires_at, allowed_models=allowed_models,
                allowed_networks=allowed_networks, priority=priority, weight=weight,
            )
        )
        columns = ["id", "secret_sha256", "created_at", *fields]
        secret = secrets.token_urlsafe(24)
        conn = self._conn()
        for _ in range(10):  # 32-bit ids: a collision is rare, and retried
            key_id = secrets.token_hex(4)
            try:
                values = [key_id, _hash_secret(secret), iso(self._now())]
                values += [to_column(name, value) for name, value in fields.items()]
                conn.execute(
                    f"INSERT INTO keys ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", values
                )
                break
            except sqlite3.IntegrityError:
                continue
        else:
            raise KeyStoreError("could not find a free key id after 10 tries")
        return self._require(key_id), f"{KEY_PREFIX}{key_id}-{secret}"

    def get(self, key_id: str) -> KeyRecord | None:
        row = self._conn().execute("SELECT * FROM keys WHERE id = ?", (key_id,)).fetchone()
        return self._record(row) if row is not None else None

    def list(self) -> list[KeyRecord]:
        rows = self._conn().execute("SELECT * FROM keys ORDER BY created_at, id").fetchall()
        return [self._record(row) for row in rows]

    def revoke(self, key_id: str) -> KeyRecord:
        self._require(key_id)
        # COALESCE keeps the first revocation time when a key is revoked twice.
        self._conn().execute(
            "UPDATE keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", (iso(self._now()), key_id)
        )
        return self._require(key_id)

    def update(self, key_id: str, **limits) -> KeyRecord:
        fields = validate_limits(limits)
        self._require(key_id)
        if fields:
            values = [to_column(name, value) for name, value in fields.items()]
            assignments = ", ".join(f"{k} = ?" for k in fields)  # names checked against UPDATABLE
            self._conn().execute(f"UPDATE keys SET {assignments} WHERE id = ?", (*values, key_id))
        return self._require(key_id)

    def _require(self, key_id: str) -> KeyRecord:
        record = self.get(key_id)
        if record is None:
            raise KeyNotFound(f"no key with id {key_id!r}")
        return record

    def _record(self, row: sqlite3.Row) -> KeyRecord:
        # The last use not yet flushed is newer than what the database says.
        last_used = parse_dt(row["last_used_at"])
        pending = self._usage.last_used(row["id"])
        if pending is not None and (last_used is None or pending > last_used):
            last_used = pending
        return KeyRecord.from_row(row, last_used)

    # -- per request ----------------------------------------------------------------------------

    def authenticate(self, api_key: str | None) -> KeyRecord:
        """The key's record; AuthError 401 for a missing or wrong key, 403 if revoked or expired."""
        key_id, secret = _split_key(api_key)
        row = None
        if key_id is not None:
            row = self._conn().execute("SELECT * FROM keys WHERE id = ?", (key_id,)).fetchone()
        # Compare even when the id is unknown, so timing says nothing about the secret.
        stored = row["secret_sha256"] if row is not None else _hash_secret("no such key")
        matches = hmac.compare_digest(_hash_secret(secret or ""), stored)
        if api_key is None or api_key == "":
            raise AuthError(401, "missing API key: send it as 'Authorization: Bearer sk-app-...'")
        if key_id is None:
            raise AuthError(401, "malformed API key: expected 'sk-app-<id>-<secret>'")
        if row is None or not matches:
            raise AuthError(401, "invalid API key")
        record = self._record(row)
        status = record.status(self._now())
        if status != "active":
            raise AuthError(403, f"API key {record.id} is {status}")
        return record

    @staticmethod
    def check_model(record: KeyRecord, model: str) -> None:
        """A 403 AuthError unless the key may name `model`."""
        if record.allowed_models is not None and model not in record.allowed_models:
            raise AuthError(403, f"API key {record.id} may not use model {model!r}")

    def check_request(self, record: KeyRecord, model: str) -> None:
        """Admit one request for `model`, counting it against the key's requests per minute."""
        self.check_model(record, model)
        self._check_budget(record)
        self._windows.admit(record.id, record.rpm_limit, record.tpm_limit)

    def _check_budget(self, record: KeyRecord) -> None:
        if record.budget_tokens is None:
            return
        start, end = period_bounds(record.budget_period, self._now())
        used = self._usage.tokens_since(record.id, start)
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
        """Write the counted usage to SQLite now."""
        self._usage.flush()

    def close(self) -> None:
        """Stop the flush thread, write what is counted, close the connections."""
        if self._closed:
            return
        self._closed = True
        self._usage.close()
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()

    def __enter__(self) -> "KeyStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _upgrade(conn: sqlite3.Connection) -> None:
    """Create a new store, or migrate an older one, in one transaction: a second process opening the
    same file meanwhile (the CLI while the service starts) waits, then finds it done."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        else:
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _split_key(api_key: str | None) -> tuple[str | None, str | None]:
    """(id, secret) of a well-formed key, else (None, None)."""
    if not api_key or len(api_key) > MAX_KEY_LENGTH or not api_key.startswith(KEY_PREFIX):
        return None, None
    key_id, sep, secret = api_key[len(KEY_PREFIX):].partition("-")
    if not sep or not key_id or not secret:
        return None, None
    return key_id, secret


def _match_folder_owner(path: Path) -> None:
    """Give a store that root just created (`sudo appliance keys create`) to the state dir's owner,
    so the service, which runs as that user, can still write it."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        folder = path.parent.stat()
        if folder.st_uid != 0:
            os.chown(path, folder.st_uid, folder.st_gid)


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
