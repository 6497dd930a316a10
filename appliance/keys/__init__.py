"""The API key store: key records in SQLite, rate limits, the usage ledger."""

from appliance.keys.rate_limits import RateLimited
from appliance.keys.records import AuthError, KeyNotFound, KeyRecord, KeyStoreError
from appliance.keys.store import KeyStore

__all__ = ["AuthError", "KeyNotFound", "KeyRecord", "KeyStore", "KeyStoreError", "RateLimited"]
