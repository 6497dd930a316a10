"""Stored responses in the key store: per key, gone after the retention, rows pruned as new ones come."""

import sqlite3

from appliance.keys import KeyStore
from appliance.keys.responses import StoredResponses


def test_a_key_sees_only_its_own_and_the_retention_ends_them(tmp_path):
    store = KeyStore(tmp_path / "keys.db")
    try:
        store.store_response("k1", "resp-1", [{"role": "user", "content": "hi"}], retention_s=60)
        assert store.stored_response("k1", "resp-1", retention_s=60) == [{"role": "user", "content": "hi"}]
        assert store.stored_response("k2", "resp-1", retention_s=60) is None
        assert store.stored_response("k1", "resp-2", retention_s=60) is None
    finally:
        store.close()
    now = [1000.0]
    conn = sqlite3.connect(tmp_path / "keys.db")
    conn.execute("DELETE FROM responses")
    responses = StoredResponses(lambda: conn, clock=lambda: now[0])
    responses.put("k1", "old", [], retention_s=60)
    now[0] += 61
    assert responses.get("k1", "old", retention_s=60) is None  # expired, though not deleted yet
    responses.put("k1", "new", [], retention_s=60)
    assert [row[0] for row in conn.execute("SELECT id FROM responses")] == ["new"]  # the write pruned the old one
