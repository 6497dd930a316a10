"""The key store's schema, as one list of versioned migrations shared by both databases.

A store records the last version it applied (SQLite: PRAGMA user_version; PostgreSQL: the
schema_migrations table) and applies the ones after it, in order, in one transaction. A new
column or table is one new entry at the end, written for each database; entries are never edited
once released, since stores out there have applied them.

The databases differ in types only: PostgreSQL's INTEGER is 32-bit, so counts and limits are
BIGINT there; timestamps are ISO 8601 text in UTC in both (they sort as strings), except the rate
windows' rows, which only PostgreSQL has and which use its own clock.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    sqlite: tuple[str, ...]
    postgresql: tuple[str, ...]


def _keys_table(integer: str) -> str:
    return f"""CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        revoked_at TEXT,
        rpm_limit {integer},
        tpm_limit {integer},
        budget_tokens {integer},
        budget_period TEXT NOT NULL DEFAULT 'day',
        allowed_models TEXT,
        last_used_at TEXT
    )"""


def _usage_table(integer: str) -> str:
    return f"""CREATE TABLE usage (
        key_id TEXT NOT NULL,
        day TEXT NOT NULL,
        requests {integer} NOT NULL DEFAULT 0,
        prompt_tokens {integer} NOT NULL DEFAULT 0,
        completion_tokens {integer} NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, day)
    )"""


MIGRATIONS: list[Migration] = [
    Migration(1, "keys and their usage per day",
              sqlite=(_keys_table("INTEGER"), _usage_table("INTEGER")),
              postgresql=(_keys_table("BIGINT"), _usage_table("BIGINT"))),
    Migration(2, "a key's allowed networks",
              sqlite=("ALTER TABLE keys ADD COLUMN allowed_networks TEXT",),
              postgresql=("ALTER TABLE keys ADD COLUMN allowed_networks TEXT",)),
    Migration(3, "a key's purpose: 'api', or 'fleet-probe' for the gateway's probes of a box",
              sqlite=("ALTER TABLE keys ADD COLUMN purpose TEXT NOT NULL DEFAULT 'api'",),
              postgresql=("ALTER TABLE keys ADD COLUMN purpose TEXT NOT NULL DEFAULT 'api'",)),
    Migration(4, "fleet-wide rate windows: each admitted request and each finished request's tokens",
              sqlite=(),  # one box keeps its windows in memory (rate_limits.RateWindows)
              postgresql=(
                  "CREATE TABLE rate_requests (key_id TEXT NOT NULL, at TIMESTAMPTZ NOT NULL)",
                  "CREATE INDEX rate_requests_key_at ON rate_requests (key_id, at)",
                  "CREATE TABLE rate_tokens (key_id TEXT NOT NULL, at TIMESTAMPTZ NOT NULL, tokens BIGINT NOT NULL)",
                  "CREATE INDEX rate_tokens_key_at ON rate_tokens (key_id, at)",
              )),
    Migration(5, "fleet-wide lock-outs: failed authentications per client address, and the addresses locked out",
              sqlite=(),  # one box keeps its lock-outs in memory (serving/lockout.AuthLockout)
              postgresql=(
                  "CREATE TABLE auth_failures (client TEXT NOT NULL, at TIMESTAMPTZ NOT NULL)",
                  "CREATE INDEX auth_failures_client_at ON auth_failures (client, at)",
                  "CREATE TABLE auth_lockouts (client TEXT PRIMARY KEY, until_at TIMESTAMPTZ NOT NULL)",
              )),
    Migration(6, "stored responses (the Responses API's store and previous_response_id), per key",
              sqlite=("CREATE TABLE responses (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, created_at REAL NOT NULL, "
                      "conversation TEXT NOT NULL)",
                      "CREATE INDEX responses_by_age ON responses (created_at)"),
              postgresql=("CREATE TABLE responses (id TEXT PRIMARY KEY, key_id TEXT NOT NULL, "
                          "created_at DOUBLE PRECISION NOT NULL, conversation TEXT NOT NULL)",
                          "CREATE INDEX responses_by_age ON responses (created_at)")),
    Migration(7, "a key's default priority and its weight in the fair share",
              sqlite=("ALTER TABLE keys ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
                      "ALTER TABLE keys ADD COLUMN weight REAL NOT NULL DEFAULT 1.0"),
              postgresql=("ALTER TABLE keys ADD COLUMN priority BIGINT NOT NULL DEFAULT 0",
                          "ALTER TABLE keys ADD COLUMN weight DOUBLE PRECISION NOT NULL DEFAULT 1.0")),
    Migration(8, "stored responses' images: each image's bytes once per key, by sha256; a response's images in order",
              sqlite=("ALTER TABLE responses ADD COLUMN images TEXT NOT NULL DEFAULT '[]'",
                      "CREATE TABLE response_images (key_id TEXT NOT NULL, sha256 TEXT NOT NULL, "
                      "stored_at REAL NOT NULL, size INTEGER NOT NULL, data BLOB NOT NULL, "
                      "PRIMARY KEY (key_id, sha256))",
                      "CREATE INDEX response_images_by_age ON response_images (stored_at)"),
              postgresql=("ALTER TABLE responses ADD COLUMN images TEXT NOT NULL DEFAULT '[]'",
                          "CREATE TABLE response_images (key_id TEXT NOT NULL, sha256 TEXT NOT NULL, "
                          "stored_at DOUBLE PRECISION NOT NULL, size BIGINT NOT NULL, data BYTEA NOT NULL, "
                          "PRIMARY KEY (key_id, sha256))",
                          "CREATE INDEX response_images_by_age ON response_images (stored_at)")),
]
SCHEMA_VERSION = MIGRATIONS[-1].version
assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1)), "versions run 1, 2, 3, … with no gap"
