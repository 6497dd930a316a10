"""The auth lock-out and per-key networks: on a fake clock, then against the live server from
addresses of 127.0.0.0/8 (each test its own, so that one's lock-out does not touch another)."""

import logging
import re
import time

import httpx
import pytest

from appliance.keys import KeyStore
from appliance.serving.lockout import AuthLockout, client_key

BAD_REQUESTS = 1000


def test_past_the_limit_an_address_is_locked_out_for_the_cool_down_and_others_are_not(clock):
    lockout = AuthLockout(failures_per_minute=3, lockout_s=30, clock=clock.monotonic)
    for _ in range(2):
        lockout.failed("203.0.113.9")
    assert lockout.retry_after_s("203.0.113.9") is None
    clock.advance(61)  # failures older than a minute no longer count
    for _ in range(2):
        lockout.failed("203.0.113.9")
    assert lockout.retry_after_s("203.0.113.9") is None
    lockout.failed("203.0.113.9")
    assert lockout.retry_after_s("203.0.113.9") == 30
    assert lockout.retry_after_s("203.0.113.10") is None
    clock.advance(29.5)
    assert lockout.retry_after_s("203.0.113.9") == pytest.approx(0.5)
    clock.advance(0.5)
    assert lockout.retry_after_s("203.0.113.9") is None


def test_a_fleet_gateways_address_is_never_locked_out_and_stops_being_exempt_when_the_box_leaves(clock):
    lockout = AuthLockout(failures_per_minute=2, lockout_s=30, clock=clock.monotonic)
    lockout.failed("10.0.0.5")
    lockout.set_exempt(["10.0.0.5"])  # joined: the gateway stands for every client behind it
    for _ in range(10):
        lockout.failed("10.0.0.5")
    assert lockout.retry_after_s("10.0.0.5") is None
    lockout.set_exempt(())  # left the fleet
    for _ in range(2):
        lockout.failed("10.0.0.5")
    assert lockout.retry_after_s("10.0.0.5") == 30


def test_an_ipv6_client_counts_by_its_64_and_a_mapped_ipv4_as_itself(clock):
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert client_key("::ffff:198.51.100.4") == "198.51.100.4"
    lockout = AuthLockout(failures_per_minute=2, lockout_s=60, clock=clock.monotonic)
    lockout.failed("2001:db8:1:2::1")
    lockout.failed("2001:db8:1:2::99")
    assert lockout.retry_after_s("2001:db8:1:2::ffff") is not None
    assert lockout.retry_after_s("2001:db8:1:3::1") is None


def test_memory_stays_bounded_under_a_spray_of_addresses(clock):
    lockout = AuthLockout(failures_per_minute=5, lockout_s=60, clock=clock.monotonic, max_tracked=100)
    for i in range(1000):
        lockout.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(lockout._failures) == 100


def counter(server, name: str) -> float:
    text = httpx.get(server.metrics_url).text
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def client_from(server, address: str, **headers) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, transport=httpx.HTTPTransport(local_address=address),
                        headers=headers, timeout=30)


def service_cpu_s(call) -> tuple[float, object]:
    """CPU the call costs every thread but this one (the client's): the in-process service's share."""
    cpu, own = time.process_time(), time.thread_time()
    result = call()
    return (time.process_time() - cpu) - (time.thread_time() - own), result


def test_a_thousand_bad_keys_from_one_address_lock_it_out_cheaply_while_others_are_served(live_server, caplog):
    failures, lockouts = counter(live_server, "appliance_auth_failures_total"), counter(live_server,
                                                                                        "appliance_auth_lockouts_total")
    limit = live_server.app.config.auth_failures_per_minute
    statuses, good = [], []
    caplog.set_level(logging.INFO, logger="appliance")
    with client_from(live_server, "127.0.0.2") as attacker, \
            client_from(live_server, "127.0.0.3", **live_server.headers()) as neighbour:
        # The peer: what a request with a good key costs the service (the whole authentication path).
        good_cpu = sum(service_cpu_s(lambda: neighbour.get("/v1/models"))[0] for _ in range(200)) / 200
        locked_cpu = 0.0
        for i in range(BAD_REQUESTS):
            guess = {"Authorization": f"Bearer sk-app-{i:08x}-guess{i}"}
            if i % 2:  # a body too, which a locked-out request never gets to send through the JSON parser
                body = {"model": live_server.model, "messages": [{"role": "user", "content": "x" * 10_000}]}
                cost, response = service_cpu_s(lambda: attacker.post("/v1/chat/completions", headers=guess, json=body))
            else:
                cost, response = service_cpu_s(lambda: attacker.get("/v1/models", headers=guess))
            statuses.append(response.status_code)
            locked_cpu += cost if i >= limit else 0.0
            if i % 50 == 0:
                good.append(neighbour.get("/v1/models").status_code)
        locked = attacker.get("/v1/models", headers=live_server.headers())  # even the right key, from there
    assert statuses[:limit] == [401] * limit and statuses[limit:] == [429] * (BAD_REQUESTS - limit)
    assert good == [200] * len(good)
    assert locked.status_code == 429 and 1 <= int(locked.headers["retry-after"]) <= 60
    assert locked.json()["error"]["code"] == "auth_locked_out" and "127.0.0.2" in locked.json()["error"]["message"]
    assert counter(live_server, "appliance_auth_failures_total") - failures == limit
    assert counter(live_server, "appliance_auth_lockouts_total") - lockouts == 1
    assert sum('"event": "lockout"' in r.getMessage() for r in caplog.records) == 1
    refused = [r.getMessage() for r in caplog.records if '"event": "refused"' in r.getMessage()]
    assert sum('"status": "error 401"' in line for line in refused) == limit  # the lock-out's 429s are not logged
    locked_cpu /= BAD_REQUESTS - limit
    print(f"\nservice CPU per request: locked out {locked_cpu * 1000:.2f} ms, good key {good_cpu * 1000:.2f} ms "
          f"(ratio {locked_cpu / good_cpu:.2f})")
    assert locked_cpu < good_cpu  # refused before the key store, the body and the route


def test_a_key_with_allowed_networks_refuses_other_addresses(live_server):
    store = KeyStore(live_server.app.config.keys_db_path)
    try:
        record, key = store.create("lab", allowed_networks=["127.0.0.4/32", "10.0.0.0/8"])
    finally:
        store.close()
    headers = {"Authorization": f"Bearer {key}"}
    with client_from(live_server, "127.0.0.4", **headers) as inside, \
            client_from(live_server, "127.0.0.5", **headers) as outside:
        assert inside.get("/v1/models").status_code == 200
        refused = outside.post("/v1/completions", json={"model": live_server.model, "prompt": "hi", "max_tokens": 1})
        assert outside.get("/v1/models", headers={"X-Forwarded-For": "127.0.0.4"}).status_code == 403  # not a proxy
    error = refused.json()["error"]
    assert refused.status_code == 403 and error["code"] == "network_not_allowed"
    assert error["message"].startswith(f"API key {record.id} may not be used from 127.0.0.5: it is limited to "
                                       "127.0.0.4/32, 10.0.0.0/8")
