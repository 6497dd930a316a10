"""The API key store: key records in SQLite (one box) or PostgreSQL (a fleet), rate limits, the usage ledger."""

from appliance.keys.rate_limits import RateLimited
from appliance.keys.records import AuthError, KeyNotFound, KeyRecord, KeyStoreError, KeyStoreUnavailable
from appliance.keys.store import KeyStore

__all__ = ["AuthError", "KeyNotFound", "KeyRecord", "KeyStore", "KeyStoreError", "KeyStoreUnavailable", "RateLimited"]
