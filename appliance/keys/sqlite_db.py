"""The key store's database on one box: a SQLite file in WAL mode, one connection per thread.

Both databases (this and postgres_db.PostgresDatabase) offer the same small face to the store and
the usage ledger: query / query_one / execute / executemany with `?` placeholders, rows read by
column name, transaction() for several statements at once, and `errors`, what a failing database
raises.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.keys.migrations import MIGRATIONS, SCHEMA_VERSION
from appliance.keys.records import KeyStoreError


class SQLiteDatabase:
    shared = False  # one box: rate windows stay in memory
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    unreachable_errors: tuple[type[Exception], ...] = ()  # a local file is never "unreachable"
    integrity_error = sqlite3.IntegrityError

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # guards the connection list
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            is_new = not self.path.exists()
            conn = self._conn()
            conn.execute("PRAGMA journal_mode=WAL")
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:  # only then a write
                _upgrade(conn)
            if is_new:
                _match_folder_owner(self.path)
        except (OSError, sqlite3.Error) as e:
            raise KeyStoreError(f"cannot open the key store at {self.path}: {e}") from e

    def describe(self) -> str:
        return str(self.path)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            # FULL syncs the WAL on every commit: with NORMAL a power cut could lose every flush
            # since the last checkpoint (minutes), not just the last couple of seconds.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def query(self, sql: str, params=()) -> list[sqlite3.Row]:
        return self._conn().execute(sql, params).fetchall()

    def query_one(self, sql: str, params=()) -> sqlite3.Row | None:
        return self._conn().execute(sql, params).fetchone()

    def execute(self, sql: str, params=()) -> None:
        self._conn().execute(sql, params)

    def executemany(self, sql: str, rows) -> None:
        self._conn().executemany(sql, rows)

    @contextmanager
    def transaction(self) -> Iterator[SQLiteDatabase]:
        """Statements on this thread's connection between BEGIN IMMEDIATE and COMMIT (ROLLBACK on error)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def check(self) -> str:
        """What PRAGMA integrity_check says ('ok' when the file is sound)."""
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()


def _upgrade(conn: sqlite3.Connection) -> None:
    """Apply the migrations this file lacks in one transaction: a second process opening the same
    file meanwhile (the CLI while the service starts) waits, then finds it done."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for migration in MIGRATIONS[version:]:
            for statement in migration.sqlite:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _match_folder_owner(path: Path) -> None:
    """Give a store that root just created (`sudo appliance keys create`) to the state dir's owner,
    so the service, which runs as that user, can still write it."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        folder = path.parent.stat()
        if folder.st_uid != 0:
            os.chown(path, folder.st_uid, folder.st_gid)
