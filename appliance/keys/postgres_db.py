"""The key store's database for a fleet: PostgreSQL through a psycopg 3 connection pool.

Every box of a fleet opens the same database (`keys_database_url`), so a key made on one box
works on all and its limits count every box's requests. The face is sqlite_db.SQLiteDatabase's:
statements are written once with `?` placeholders and turned into psycopg's `%s` here.

Short timeouts everywhere (connecting, waiting for a pooled connection, each statement): an
unreachable database must turn into a quick, decided answer (store.KeyStore's outage rules),
not a request that hangs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from appliance.keys.migrations import MIGRATIONS
from appliance.keys.records import KeyStoreError

CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_MS = 5000
POOL_WAIT_S = 2.0
# psycopg_pool retries a lost connection with a growing backoff for this long, then gives up until the
# next request asks: kept short, so a database that is back is used at once, not after a backoff of minutes.
RECONNECT_GIVE_UP_S = 1.0
POOL_MAX_SIZE = 8
MIGRATION_LOCK = 7_402_811  # pg_advisory_xact_lock key: one box migrates, the others wait and find it done


class PostgresDatabase:
    shared = True  # many boxes: rate windows live in the database
    errors: tuple[type[Exception], ...] = (psycopg.Error, PoolTimeout)
    unreachable_errors: tuple[type[Exception], ...] = (psycopg.OperationalError, PoolTimeout)
    integrity_error = psycopg.IntegrityError

    def __init__(self, url: str, pool_max_size: int = POOL_MAX_SIZE):
        self.url = url
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_max_size, timeout=POOL_WAIT_S, open=False, name="keys",
            reconnect_timeout=RECONNECT_GIVE_UP_S,
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT_S,
                    "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}", "application_name": "appliance"},
            check=ConnectionPool.check_connection,  # a connection that died while idle is replaced, not handed out
        )
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
            self._upgrade()
        except (psycopg.Error, PoolTimeout) as e:
            self._pool.close()
            raise KeyStoreError(f"cannot open the key store at {self.describe()}: {e}") from e

    def describe(self) -> str:
        """The URL without its password (it goes to logs, status and the TUI)."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))

    def query(self, sql: str, params=()) -> list[dict]:
        with self._pool.connection() as conn:
            return conn.execute(_sql(sql), params).fetchall()

    def query_one(self, sql: str, params=()) -> dict | None:
        with self._pool.connection() as conn:
            return conn.execute(_sql(sql), params).fetchone()

    def execute(self, sql: str, params=()) -> None:
        with self._pool.connection() as conn:
            conn.execute(_sql(sql), params)

    def executemany(self, sql: str, rows) -> None:
        with self._pool.connection() as conn, conn.cursor() as cursor:
            cursor.executemany(_sql(sql), list(rows))

    @contextmanager
    def transaction(self) -> Iterator[_Transaction]:
        """One pooled connection between BEGIN and COMMIT (ROLLBACK on error)."""
        with self._pool.connection() as conn, conn.transaction():
            yield _Transaction(conn)

    def check(self) -> str:
        with self._pool.connection() as conn:
            conn.execute("SELECT 1")
        return "ok"

    def close(self) -> None:
        self._pool.close()

    def _upgrade(self) -> None:
        with self.transaction() as tx:
            tx.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            tx.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                       "what TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            version = tx.query_one("SELECT COALESCE(MAX(version), 0) AS version FROM schema_migrations")["version"]
            for migration in MIGRATIONS[version:]:
                for statement in migration.postgresql:
                    tx.execute(statement)
                tx.execute("INSERT INTO schema_migrations (version, what) VALUES (?, ?)",
                           (migration.version, migration.what))


class _Transaction:
    """The database's statements, on the one connection a transaction holds."""

    def __init__(self, conn: psycopg.Connection):
        self._conn = conn

    def query(self, sql: str, params=()) -> list[dict]:
        return self._conn.execute(_sql(sql), params).fetchall()

    def query_one(self, sql: str, params=()) -> dict | None:
        return self._conn.execute(_sql(sql), params).fetchone()

    def execute(self, sql: str, params=()) -> None:
        self._conn.execute(_sql(sql), params)

    def executemany(self, sql: str, rows) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(_sql(sql), list(rows))


def _sql(sql: str) -> str:
    # Our statements hold no literal '?' or '%': every '?' is a placeholder.
    return sql.replace("?", "%s")
