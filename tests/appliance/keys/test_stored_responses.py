"""Stored responses in the key store: per key, gone after the retention, rows pruned as new ones come;
in a box's SQLite file and in a fleet's PostgreSQL alike."""

import pytest

from appliance.keys import KeyStore
from appliance.keys.responses import StoredResponses
from appliance.keys.sqlite_db import SQLiteDatabase


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    return tmp_path / "keys.db" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


def test_a_key_sees_only_its_own_and_a_later_box_finds_it(location):
    with KeyStore(location) as store:
        store.store_response("k1", "resp-1", [{"role": "user", "content": "hi"}], retention_s=60)
        assert store.stored_response("k1", "resp-1", retention_s=60) == [{"role": "user", "content": "hi"}]
        assert store.stored_response("k2", "resp-1", retention_s=60) is None
        assert store.stored_response("k1", "resp-2", retention_s=60) is None
    with KeyStore(location) as other:  # another process, or in a fleet another box
        assert other.stored_response("k1", "resp-1", retention_s=60) == [{"role": "user", "content": "hi"}]


def test_the_retention_ends_them_and_a_write_prunes_what_outlived_it(tmp_path):
    db = SQLiteDatabase(tmp_path / "keys.db")
    now = [1000.0]
    responses = StoredResponses(db, clock=lambda: now[0])
    responses.put("k1", "old", [], retention_s=60)
    now[0] += 61
    assert responses.get("k1", "old", retention_s=60) is None  # expired, though not deleted yet
    responses.put("k1", "new", [], retention_s=60)
    assert [row["id"] for row in db.query("SELECT id FROM responses")] == ["new"]  # the write pruned the old one
    db.close()
