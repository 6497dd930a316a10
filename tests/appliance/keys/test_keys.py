"""The API key store, on real SQLite files in temporary folders."""

import hashlib
import json
import os
import sqlite3
import threading
from datetime import datetime, timedelta, timezone

import pytest

from appliance.keys import AuthError, KeyNotFound, KeyStore, KeyStoreError, RateLimited
from appliance.keys.migrations import SCHEMA_VERSION


@pytest.fixture
def store(tmp_path):
    s = KeyStore(tmp_path / "state" / "keys.db")
    yield s
    s.close()


@pytest.fixture
def timed_store(tmp_path, clock):
    s = KeyStore(tmp_path / "keys.db", clock=clock.monotonic, now=clock.now)
    yield s
    s.close()


def test_created_key_authenticates_to_its_record(store):
    record, api_key = store.create("ci-bot", rpm_limit=10, allowed_models=["m1"])
    assert api_key.startswith(f"sk-app-{record.id}-")
    assert len(api_key) > len(f"sk-app-{record.id}-") + 30  # a real secret follows the id
    assert store.authenticate(api_key) == record
    assert record.name == "ci-bot" and record.rpm_limit == 10 and record.allowed_models == ["m1"]
    assert store.db_path.exists() and store.db_path.parent.name == "state"


def test_each_key_gets_its_own_id_and_secret(store):
    keys = [store.create(f"k{i}") for i in range(20)]
    assert len({r.id for r, _ in keys}) == 20
    assert len({k for _, k in keys}) == 20


@pytest.mark.parametrize(
    "bad",
    [None, "", "sk-app-", "Bearer x", "sk-app-abcd", "sk-app-abcd-", "sk-other-abcd-secret", "sk-app-" + "x" * 500],
)
def test_missing_or_malformed_key_is_401(store, bad):
    store.create("someone")
    with pytest.raises(AuthError) as e:
        store.authenticate(bad)
    assert e.value.status == 401


def test_wrong_secret_and_unknown_id_are_401(store):
    record, api_key = store.create("a")
    with pytest.raises(AuthError) as e:
        store.authenticate(api_key[:-1] + ("A" if api_key[-1] != "A" else "B"))
    assert e.value.status == 401
    with pytest.raises(AuthError) as e:
        store.authenticate(api_key.replace(record.id, "ffffffff" if record.id != "ffffffff" else "00000000"))
    assert e.value.status == 401


def test_revoked_key_is_403(store):
    record, api_key = store.create("a")
    revoked = store.revoke(record.id)
    assert revoked.revoked_at is not None
    with pytest.raises(AuthError) as e:
        store.authenticate(api_key)
    assert e.value.status == 403 and "revoked" in e.value.message
    assert store.revoke(record.id).revoked_at == revoked.revoked_at  # revoking twice keeps the first time


def test_expired_key_is_403(timed_store, clock):
    record, api_key = timed_store.create("a", expires_at=clock.now() + timedelta(seconds=10))
    timed_store.authenticate(api_key)
    clock.advance(10)
    with pytest.raises(AuthError) as e:
        timed_store.authenticate(api_key)
    assert e.value.status == 403 and "expired" in e.value.message


def test_model_not_allowed_is_403(store):
    record, api_key = store.create("a", allowed_models=["small"])
    store.check_request(record, "small")
    with pytest.raises(AuthError) as e:
        store.check_request(record, "large")
    assert e.value.status == 403 and "large" in e.value.message


def test_rpm_limit_rejects_with_time_until_oldest_request_leaves(timed_store, clock):
    record, _ = timed_store.create("a", rpm_limit=3)
    for _ in range(3):
        timed_store.check_request(record, "m")
        clock.advance(10)
    with pytest.raises(RateLimited) as e:
        timed_store.check_request(record, "m")
    assert e.value.retry_after_s == pytest.approx(30.0)  # first request at t=0 leaves at t=60; now t=30
    assert "3 requests per minute" in e.value.message
    clock.advance(30.01)
    timed_store.check_request(record, "m")


def test_tpm_limit_counts_recorded_tokens(timed_store, clock):
    record, _ = timed_store.create("a", tpm_limit=1000)
    timed_store.check_request(record, "m")
    timed_store.record_usage(record.id, 400, 200)  # t=0: 600
    clock.advance(20)
    timed_store.check_request(record, "m")
    timed_store.record_usage(record.id, 300, 200)  # t=20: 1100 in the window
    clock.advance(5)
    with pytest.raises(RateLimited) as e:
        timed_store.check_request(record, "m")
    assert e.value.retry_after_s == pytest.approx(35.0)  # the t=0 tokens leave at t=60; now t=25
    clock.advance(35.01)
    timed_store.check_request(record, "m")


def test_other_keys_are_not_limited_by_a_full_key(timed_store):
    busy, _ = timed_store.create("busy", rpm_limit=1)
    idle, _ = timed_store.create("idle", rpm_limit=1)
    timed_store.check_request(busy, "m")
    with pytest.raises(RateLimited):
        timed_store.check_request(busy, "m")
    timed_store.check_request(idle, "m")


def test_daily_budget_rejects_until_midnight_utc(timed_store, clock):
    record, _ = timed_store.create("a", budget_tokens=1000, budget_period="day")
    timed_store.check_request(record, "m")
    timed_store.record_usage(record.id, 600, 300)
    timed_store.check_request(record, "m")  # 900 < 1000
    timed_store.record_usage(record.id, 50, 50)
    with pytest.raises(RateLimited) as e:
        timed_store.check_request(record, "m")
    assert e.value.retry_after_s == pytest.approx(12 * 3600)  # clock is at 12:00 UTC
    assert "1000 of 1000" in e.value.message
    clock.advance(12 * 3600)
    timed_store.check_request(record, "m")  # a new day, a new budget


def test_monthly_budget_counts_flushed_usage_from_earlier_days(tmp_path, clock):
    path = tmp_path / "keys.db"
    with KeyStore(path, clock=clock.monotonic, now=clock.now) as s:
        record, _ = s.create("a", budget_tokens=500, budget_period="month")
        s.record_usage(record.id, 200, 100)
    clock.advance(3 * 86400)  # March 17th, same month, a new process
    with KeyStore(path, clock=clock.monotonic, now=clock.now) as s:
        s.check_request(record, "m")
        s.record_usage(record.id, 150, 50)  # 500 this month
        with pytest.raises(RateLimited) as e:
            s.check_request(record, "m")
        april_first = datetime(2026, 4, 1, tzinfo=timezone.utc)
        assert e.value.retry_after_s == pytest.approx((april_first - clock.now()).total_seconds())


def test_budget_is_exact_across_a_concurrent_flush(timed_store):
    record, _ = timed_store.create("a", budget_tokens=10_000)
    timed_store.check_request(record, "m")  # loads the period total into memory
    for _ in range(99):
        timed_store.record_usage(record.id, 50, 50)
        timed_store.flush()
    timed_store.check_request(record, "m")  # 9,900 < 10,000: counted once, not twice
    timed_store.record_usage(record.id, 50, 50)
    with pytest.raises(RateLimited):
        timed_store.check_request(record, "m")


def test_secret_is_never_stored_in_clear(tmp_path):
    path = tmp_path / "keys.db"
    s = KeyStore(path)
    record, api_key = s.create("a")
    secret = api_key.split("-", 3)[3]
    s.record_usage(record.id, 1, 1)
    s.flush()
    for f in tmp_path.iterdir():  # keys.db, keys.db-wal, keys.db-shm
        assert secret.encode() not in f.read_bytes(), f.name
    s.close()
    assert secret.encode() not in path.read_bytes()
    assert secret not in json.dumps(record.to_dict())
    assert not any("secret" in k or "hash" in k for k in record.to_dict())


def test_to_dict_is_json_with_iso_dates(store):
    record, _ = store.create("a", expires_at=datetime(2030, 1, 1), budget_tokens=5)
    data = json.loads(json.dumps(record.to_dict()))
    assert data["expires_at"] == "2030-01-01T00:00:00+00:00"  # naive datetimes are taken as UTC
    assert data["budget_tokens"] == 5 and data["revoked_at"] is None


def test_update_changes_and_clears_limits(store):
    record, api_key = store.create("a", rpm_limit=5, allowed_models=["x"])
    updated = store.update(record.id, rpm_limit=None, tpm_limit=100, allowed_models=None, name="b")
    assert (updated.rpm_limit, updated.tpm_limit, updated.allowed_models, updated.name) == (None, 100, None, "b")
    assert store.get(record.id) == updated
    assert store.authenticate(api_key).tpm_limit == 100


def test_unknown_key_id_raises_key_not_found(store):
    with pytest.raises(KeyNotFound):
        store.revoke("nope")
    with pytest.raises(KeyNotFound):
        store.update("nope", rpm_limit=1)
    assert store.get("nope") is None


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "a", "rpm_limit": -1}, "rpm_limit"),
        ({"name": "a", "tpm_limit": -5}, "tpm_limit"),
        ({"name": "a", "budget_tokens": -1}, "budget_tokens"),
        ({"name": "a", "rpm_limit": 1.5}, "rpm_limit"),
        ({"name": "a", "rpm_limit": True}, "rpm_limit"),
        ({"name": "a", "budget_period": "week"}, "budget_period"),
        ({"name": "a", "allowed_models": []}, "allowed_models"),
        ({"name": "a", "allowed_models": "m1"}, "allowed_models"),
        ({"name": "a", "expires_at": "2030-01-01"}, "expires_at"),
        ({"name": "a", "allowed_networks": "10.0.0.0/8"}, "allowed_networks"),
        ({"name": "a", "allowed_networks": ["10.0.0.0/33"]}, "allowed_networks: '10.0.0.0/33' is not"),
        ({"name": "a", "allowed_networks": []}, "allowed_networks must name at least one"),
    ],
)
def test_invalid_fields_are_rejected_by_name(store, kwargs, field):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=field):
        store.create(name, **kwargs)
    assert store.list() == []


def test_update_rejects_unknown_fields(store):
    record, _ = store.create("a")
    with pytest.raises(ValueError, match="colour"):
        store.update(record.id, colour="red")


def test_list_returns_every_key_in_creation_order(store):
    ids = [store.create(f"k{i}")[0].id for i in range(5)]
    assert [r.id for r in store.list()] == ids


def test_unwritable_state_dir_raises_key_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(KeyStoreError, match=str(blocker)):
        KeyStore(blocker / "keys.db")


def test_concurrent_threads_count_every_request(store):
    record, api_key = store.create("shared")
    other, other_key = store.create("other")
    errors = []

    def worker(key: str, key_id: str):
        try:
            for _ in range(200):
                r = store.authenticate(key)
                store.check_request(r, "m")
                store.record_usage(key_id, 3, 2)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(api_key, record.id)) for _ in range(6)]
    threads += [threading.Thread(target=worker, args=(other_key, other.id)) for _ in range(2)]
    flusher_stop = threading.Event()
    flushes = threading.Thread(target=lambda: [store.flush() for _ in iter(lambda: flusher_stop.wait(0.01), True)])
    flushes.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flusher_stop.set()
    flushes.join()
    assert errors == []
    store.flush()
    [day] = store.usage(record.id)
    assert (day.requests, day.prompt_tokens, day.completion_tokens) == (1200, 3600, 2400)
    assert store.usage(other.id)[0].requests == 400


def test_a_second_process_sees_keys_created_by_the_cli_store(tmp_path):
    path = tmp_path / "keys.db"
    server = KeyStore(path)
    try:
        with KeyStore(path) as cli:
            record, api_key = cli.create("made-later")
        assert server.authenticate(api_key).id == record.id
        with KeyStore(path) as cli:
            cli.revoke(record.id)
        with pytest.raises(AuthError) as e:
            server.authenticate(api_key)
        assert e.value.status == 403
    finally:
        server.close()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to create as another user")
def test_store_created_by_root_belongs_to_the_state_dir_owner(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 12345, 12345)
    KeyStore(state / "keys.db").close()
    assert (state / "keys.db").stat().st_uid == 12345


def test_allowed_networks_are_stored_canonical_and_match_addresses(store):
    record, api_key = store.create("lab", allowed_networks=["10.1.2.3/8", "2001:db8::1/32", "192.0.2.7"])
    assert record.allowed_networks == ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]
    assert store.authenticate(api_key).allowed_networks == record.allowed_networks
    assert record.allows_address("10.200.0.1") and record.allows_address("192.0.2.7")
    assert record.allows_address("2001:db8:ffff::1") and record.allows_address("::ffff:10.0.0.9")  # a mapped IPv4
    assert not record.allows_address("192.0.2.8") and not record.allows_address("11.0.0.1")
    assert not record.allows_address(None) and not record.allows_address("not-an-address")
    assert store.update(record.id, allowed_networks=None).allows_address("198.51.100.1")
    assert json.loads(json.dumps(record.to_dict()))["allowed_networks"] == record.allowed_networks


def test_a_keys_db_of_the_first_version_is_migrated_to_the_last_and_keeps_its_keys(tmp_path):
    path = tmp_path / "keys.db"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, secret_sha256 TEXT NOT NULL,
            created_at TEXT NOT NULL, expires_at TEXT, revoked_at TEXT, rpm_limit INTEGER, tpm_limit INTEGER,
            budget_tokens INTEGER, budget_period TEXT NOT NULL DEFAULT 'day', allowed_models TEXT, last_used_at TEXT);
        CREATE TABLE usage (key_id TEXT NOT NULL, day TEXT NOT NULL, requests INTEGER NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (key_id, day));
        PRAGMA user_version=1;
    """)
    secret_hash = hashlib.sha256(b"oldsecret").hexdigest()
    old.execute("INSERT INTO keys (id, name, secret_sha256, created_at, rpm_limit) VALUES "
                "('0ld0ld00', 'from-before', ?, '2026-01-01T00:00:00+00:00', 7)", (secret_hash,))
    old.commit()
    old.close()
    with KeyStore(path) as store:
        record = store.authenticate("sk-app-0ld0ld00-oldsecret")
        assert (record.name, record.rpm_limit, record.allowed_networks) == ("from-before", 7, None)
        assert (record.priority, record.weight) == (0, 1.0)  # version 4's columns, with their defaults
        assert store.update(record.id, allowed_networks=["10.0.0.0/8"]).allowed_networks == ["10.0.0.0/8"]
        store.store_response(record.id, "resp-1", [], retention_s=60, images=[b"png"])  # migrations 6 and 8
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    check.close()
    with KeyStore(path) as again:  # opening a migrated store changes nothing more
        assert again.get("0ld0ld00").allowed_networks == ["10.0.0.0/8"]
