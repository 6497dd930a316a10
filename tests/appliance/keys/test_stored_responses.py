"""Stored responses in the key store: per key, gone after the retention, rows pruned as new ones come; their images
kept once per key by content, going with the last response that holds them; in a box's SQLite file and in a
fleet's PostgreSQL alike."""

import pytest

from appliance.keys import KeyStore
from appliance.keys.responses import StoredResponses
from appliance.keys.sqlite_db import SQLiteDatabase

SCREEN, PHOTO = b"\x89PNG a screenshot", b"\xff\xd8 a photo, longer than the screenshot"


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    return tmp_path / "keys.db" if request.param == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def database(location):
    """The key store's database itself, for a clock of the test's own."""
    if isinstance(location, str):
        from appliance.keys.postgres_db import PostgresDatabase

        db = PostgresDatabase(location)
    else:
        db = SQLiteDatabase(location)
    yield db
    db.close()


def test_a_key_sees_only_its_own_and_a_later_box_finds_it(location):
    with KeyStore(location) as store:
        store.store_response("k1", "resp-1", [{"role": "user", "content": "hi"}], retention_s=60)
        assert store.stored_response("k1", "resp-1", retention_s=60).messages == [{"role": "user", "content": "hi"}]
        assert store.stored_response("k2", "resp-1", retention_s=60) is None
        assert store.stored_response("k1", "resp-2", retention_s=60) is None
    with KeyStore(location) as other:  # another process, or in a fleet another box
        assert other.stored_response("k1", "resp-1", retention_s=60).messages == [{"role": "user", "content": "hi"}]


def test_the_retention_ends_them_and_a_write_prunes_what_outlived_it(tmp_path):
    db = SQLiteDatabase(tmp_path / "keys.db")
    now = [1000.0]
    responses = StoredResponses(db, clock=lambda: now[0])
    responses.put("k1", "old", [], [], retention_s=60)
    now[0] += 61
    assert responses.get("k1", "old", retention_s=60) is None  # expired, though not deleted yet
    responses.put("k1", "new", [], [], retention_s=60)
    assert [row["id"] for row in db.query("SELECT id FROM responses")] == ["new"]  # the write pruned the old one
    db.close()


def test_images_are_kept_once_per_key_in_order_and_go_with_the_last_response_that_holds_them(database):
    now = [1000.0]
    responses = StoredResponses(database, clock=lambda: now[0])
    image = {"role": "user", "content": [{"type": "image"}, {"type": "image"}]}
    responses.put("k1", "first", [image], [SCREEN, PHOTO], retention_s=60)
    now[0] += 30
    responses.put("k1", "second", [image, image], [PHOTO, SCREEN, PHOTO], retention_s=60)  # a follow-up's
    responses.put("k2", "other", [image], [SCREEN], retention_s=60)
    assert responses.get("k1", "first", retention_s=60).images == [SCREEN, PHOTO]
    assert responses.get("k1", "second", retention_s=60).images == [PHOTO, SCREEN, PHOTO]
    rows = database.query("SELECT key_id, size FROM response_images ORDER BY key_id, size")
    assert [(r["key_id"], r["size"]) for r in rows] == [("k1", len(SCREEN)), ("k1", len(PHOTO)), ("k2", len(SCREEN))]
    # What the key holds counts once: another PHOTO adds nothing, a new image adds its bytes.
    held = len(SCREEN) + len(PHOTO)
    assert responses.image_bytes_with("k1", [PHOTO], retention_s=60) == held
    assert responses.image_bytes_with("k1", [PHOTO, b"new"], retention_s=60) == held + 3
    assert responses.image_bytes_with("k3", [PHOTO], retention_s=60) == len(PHOTO)

    now[0] += 40  # "first" has expired; "second" holds both images and keeps them
    responses.put("k1", "third", [], [], retention_s=60)
    assert responses.get("k1", "second", retention_s=60).images == [PHOTO, SCREEN, PHOTO]
    now[0] += 40  # every response of the keys has expired: their images are deleted with them
    responses.put("k1", "fourth", [], [], retention_s=60)
    assert database.query("SELECT sha256 FROM response_images") == []
    assert responses.image_bytes_with("k1", [], retention_s=60) == 0


def test_revoking_a_key_deletes_its_responses_and_images_and_no_other_keys(location):
    image = {"role": "user", "content": [{"type": "image"}]}
    with KeyStore(location) as store:
        revoked, kept = store.create("revoked")[0].id, store.create("kept")[0].id
        for key_id in (revoked, kept):
            store.store_response(key_id, f"resp-{key_id}", [image], retention_s=60, images=[SCREEN])
        store.revoke(revoked)
        assert store.stored_response(revoked, f"resp-{revoked}", retention_s=60) is None
        assert store.stored_response(kept, f"resp-{kept}", retention_s=60).images == [SCREEN]
        assert store.stored_image_bytes_with(revoked, [], retention_s=60) == 0  # the bytes are gone, not hidden
        assert store.stored_image_bytes_with(kept, [], retention_s=60) == len(SCREEN)
