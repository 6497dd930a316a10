"""The key store on a real PostgreSQL server, as a fleet uses it: several stores (boxes) on one database."""

import time
from datetime import timedelta

import psycopg
import pytest

from appliance.keys import AuthError, KeyStore, KeyStoreUnavailable, RateLimited
from appliance.keys.migrations import MIGRATIONS, SCHEMA_VERSION


@pytest.fixture
def boxes(postgres_url):
    """Two stores on the same database, as two boxes of a fleet hold them."""
    a, b = KeyStore(postgres_url, flush_interval_s=0.1), KeyStore(postgres_url, flush_interval_s=0.1)
    yield a, b
    a.close()
    b.close()


def test_a_key_made_on_one_box_works_on_the_other_and_a_revocation_holds_on_both_at_once(boxes):
    a, b = boxes
    record, api_key = a.create("app", allowed_models=["m"])
    assert b.authenticate(api_key) == record
    a.revoke(record.id)
    with pytest.raises(AuthError) as e:
        b.authenticate(api_key)
    assert e.value.status == 403 and "revoked" in e.value.message
    assert [r.id for r in b.list()] == [record.id]


def test_requests_per_minute_count_every_boxs_requests(boxes):
    a, b = boxes
    record, _ = a.create("limited", rpm_limit=3)
    a.check_request(record, "m")
    b.check_request(record, "m")
    a.check_request(record, "m")
    for box in (a, b):
        with pytest.raises(RateLimited) as e:
            box.check_request(record, "m")
        assert 0 < e.value.retry_after_s <= 60 and "3 requests per minute" in e.value.message


def test_tokens_per_minute_count_every_boxs_tokens(boxes):
    a, b = boxes
    record, _ = a.create("tpm", tpm_limit=100)
    a.check_request(record, "m")
    a.record_usage(record.id, 40, 30)
    b.check_request(record, "m")
    b.record_usage(record.id, 20, 20)  # 110 tokens in the last minute, over two boxes
    a.flush()
    b.flush()
    with pytest.raises(RateLimited) as e:
        a.check_request(record, "m")
    assert "100 tokens per minute" in e.value.message and 0 < e.value.retry_after_s <= 60


def test_a_token_budget_counts_every_boxs_usage_within_a_flush_interval(boxes):
    a, b = boxes
    record, _ = a.create("budget", budget_tokens=100)
    a.check_request(record, "m")
    b.check_request(record, "m")  # both boxes have read the period's total (0)
    a.record_usage(record.id, 30, 30)
    b.record_usage(record.id, 30, 30)
    a.flush()
    b.flush()
    time.sleep(0.15)  # past the flush interval: the next check reads the database again
    for box in (a, b):
        with pytest.raises(RateLimited) as e:
            box.check_request(record, "m")
        assert "budget exhausted: 120 of 100" in e.value.message
    assert sum(d.prompt_tokens + d.completion_tokens for d in a.usage(record.id)) == 120


def test_the_schema_is_migrated_once_and_every_version_is_recorded(postgres_url):
    with KeyStore(postgres_url), KeyStore(postgres_url):
        pass
    with psycopg.connect(postgres_url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [m.version for m in MIGRATIONS] and versions[-1] == SCHEMA_VERSION


def test_while_the_database_is_down_only_recently_verified_keys_get_in(postgres_server, clock):
    url = postgres_server.new_database()
    store = KeyStore(url, clock=clock.monotonic, now=clock.now, outage_grace_s=300)
    try:
        known, known_key = store.create("known")
        _, unseen_key = store.create("never-used-here")
        _, expiring_key = store.create("expiring", expires_at=clock.now() + timedelta(seconds=30))
        store.authenticate(expiring_key)
        revoked, revoked_key = store.create("revoked")
        store.authenticate(known_key)
        store.authenticate(revoked_key)
        store.revoke(revoked.id)
        with pytest.raises(AuthError):
            store.authenticate(revoked_key)  # seen revoked: forgotten
        postgres_server.stop()
        try:
            assert store.authenticate(known_key) == known  # verified a moment ago: in
            store.check_request(known, "m")  # limits fall back to this box's memory
            for key in (unseen_key, revoked_key, "sk-app-00000000-unknown"):
                with pytest.raises(KeyStoreUnavailable) as e:
                    store.authenticate(key)
                assert e.value.retry_after_s > 0
            status = store.outage.status()
            assert status["reachable"] is False and status["grace_admissions"] == 1 and status["refusals"] == 3
            clock.advance(31)  # remembered as active, but expired since: the record says so without the database
            with pytest.raises(AuthError) as e:
                store.authenticate(expiring_key)
            assert e.value.status == 403 and "expired" in e.value.message
            assert status["last_error"]
            clock.advance(270)  # past the grace: the remembered verification no longer vouches
            with pytest.raises(KeyStoreUnavailable):
                store.authenticate(known_key)
            assert store.probe() is False
        finally:
            postgres_server.resume()
        clock.advance(5)
        assert store.authenticate(unseen_key).name == "never-used-here"  # the database answers again
        assert store.outage.status()["reachable"] is True
    finally:
        store.close()


def test_keys_copied_from_a_boxs_sqlite_work_in_postgresql_and_a_second_copy_adds_nothing(tmp_path, postgres_url):
    with KeyStore(tmp_path / "keys.db") as local:
        record, api_key = local.create("old-app", rpm_limit=9, allowed_networks=["10.0.0.0/8"])
        local.record_usage(record.id, 7, 3)
        keys, usage = local.export_rows()
    with KeyStore(postgres_url) as shared:
        assert shared.import_rows(keys, usage) == (1, 1)
        assert shared.import_rows(keys, usage) == (0, 0)
        copied = shared.authenticate(api_key)
        assert (copied.id, copied.rpm_limit, copied.allowed_networks) == (record.id, 9, ["10.0.0.0/8"])
        assert [(d.requests, d.prompt_tokens, d.completion_tokens) for d in shared.usage(record.id)] == [(1, 7, 3)]


def test_an_address_guessing_keys_on_two_boxes_is_locked_out_on_both_by_the_fleets_count(boxes):
    from appliance.serving.lockout import AuthLockout

    a, b = boxes
    on_a = AuthLockout(failures_per_minute=4, lockout_s=60, shared=a.shared_lockouts)
    on_b = AuthLockout(failures_per_minute=4, lockout_s=60, shared=b.shared_lockouts)
    for lockout in (on_a, on_b, on_a, on_b):  # 2 failures on each box: under each box's own limit of 4
        lockout.failed("198.51.100.7")
    assert on_a.retry_after_s("198.51.100.7") is None and on_b.retry_after_s("198.51.100.7") is None
    a.flush()
    b.flush()  # the fourth failure reaches the database: the fleet's count is 4
    a.flush()  # and box A reads who is locked out
    assert 55 < on_a.retry_after_s("198.51.100.7") <= 60 and 55 < on_b.retry_after_s("198.51.100.7") <= 60
    assert on_a.retry_after_s("198.51.100.8") is None
    on_a.set_exempt(["198.51.100.7"])  # a fleet's gateway is never locked out
    assert on_a.retry_after_s("198.51.100.7") is None
