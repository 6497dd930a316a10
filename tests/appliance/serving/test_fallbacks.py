"""Fallbacks against a live service: the primary made to fail, unloaded and overloaded; the fallback answers
every request, says so in a header and a metric; without a fallback, or for a key not allowed it, the
errors are the ones the primary gives.

Three tiny models with other weights: greedy outputs tell them apart.
"""

import asyncio

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.config import ModelSettings, Routing
from appliance.control.client import ControlClient
from appliance.keys import KeyStore
from tests.appliance.conftest import add_keys, make_config, put_in_store, start_server
from tests.conftest import build_tiny_model

PROMPT = "The weather today is"
GREEDY = {"temperature": 0, "ignore_eos": True, "max_tokens": 8}


@pytest.fixture(scope="module")
def server(default_model_path, tmp_path_factory):
    state = tmp_path_factory.mktemp("fallback-state")
    built = tmp_path_factory.mktemp("fallback-models")
    for seed, name in enumerate(("tiny-a", "tiny-b"), start=5):
        put_in_store(state / "models", build_tiny_model(built / name, default_model_path, seed=seed, tied=False), name)
    config = make_config(
        "tiny-a", state, max_num_seqs=4,
        models={"tiny-b": ModelSettings(pinned=True, max_num_seqs=1)},  # one at a time: easy to overload
        routing=Routing(aliases={"chat-fast": "tiny-b"}, fallbacks={"chat-fast": ["tiny-a"]}, fallback_queue_depth=2))
    server = start_server(config)
    add_keys(server, server.app.config.keys_db_path)
    store = KeyStore(server.app.config.keys_db_path)
    try:
        server.keys["chat-fast-only"] = store.create("chat-fast-only", allowed_models=["chat-fast"])[1]
    finally:
        store.close()
    yield server
    server.stop()


def complete(server, model: str, key: str | None = None, **extra) -> httpx.Response:
    return httpx.post(server.base_url + "/v1/completions", headers=server.headers(key), timeout=60,
                      json={"model": model, "prompt": PROMPT, **GREEDY, **extra})


def fallbacks_counted(server, reason: str) -> float:
    """appliance_fallbacks_total{from="tiny-b", to="tiny-a", reason} as /metrics has it now."""
    want = {"from": "tiny-b", "to": "tiny-a", "reason": reason}
    for family in text_string_to_metric_families(httpx.get(server.metrics_url).text):
        for sample in family.samples:
            if sample.name == "appliance_fallbacks_total" and sample.labels == want:
                return sample.value
    return 0.0


@pytest.fixture(scope="module")
def answers(server) -> dict[str, str]:
    """Each model's greedy text, asked by its own name."""
    texts = {}
    for name in ("tiny-a", "tiny-b"):
        response = complete(server, name)
        assert response.status_code == 200 and response.json()["model"] == name
        assert "x-appliance-fallback" not in response.headers
        texts[name] = response.json()["choices"][0]["text"]
    assert texts["tiny-a"] != texts["tiny-b"], "the test models must answer differently"
    assert complete(server, "chat-fast").json()["choices"][0]["text"] == texts["tiny-b"]
    return texts


def assert_fallback(response: httpx.Response, answers: dict, reason: str) -> None:
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "tiny-a"
    assert response.json()["choices"][0]["text"] == answers["tiny-a"]
    assert response.headers["x-appliance-fallback"] == f"{reason}; from=tiny-b; to=tiny-a"


def test_a_failing_primary_is_answered_by_its_fallback(server, answers):
    fault = server.service.readiness.fault.fail_file("tiny-b")
    before = fallbacks_counted(server, "failed")
    fault.touch()
    try:
        for _ in range(3):
            assert_fallback(complete(server, "chat-fast"), answers, "failed")
        with httpx.stream("POST", server.base_url + "/v1/completions", headers=server.headers(), timeout=60,
                          json={"model": "chat-fast", "prompt": PROMPT, **GREEDY, "stream": True}) as streamed:
            body = streamed.read().decode()
            assert streamed.status_code == 200 and streamed.headers["x-appliance-fallback"].startswith("failed;")
        assert '"model":"tiny-a"' in body.replace(" ", "") and body.rstrip().endswith("[DONE]")
        assert fallbacks_counted(server, "failed") == before + 4

        # No fallback for the name the request sent: the primary's error, as without routing.
        direct = complete(server, "tiny-b")
        assert direct.status_code == 500 and "fault injection" in direct.json()["error"]["message"]
        # A key allowed only chat-fast may not reach tiny-a through it.
        refused = complete(server, "chat-fast", key=server.keys["chat-fast-only"])
        assert refused.status_code == 500 and "fault injection" in refused.json()["error"]["message"]
    finally:
        fault.unlink()
    allowed = complete(server, "chat-fast", key=server.keys["chat-fast-only"])
    assert allowed.status_code == 200 and allowed.json()["choices"][0]["text"] == answers["tiny-b"]
    assert complete(server, "tiny-a", key=server.keys["chat-fast-only"]).status_code == 403


def test_an_overloaded_primary_sends_new_requests_to_its_fallback(server, answers):
    before = fallbacks_counted(server, "overloaded")

    async def scenario():
        async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers(), timeout=120) as http:
            # tiny-b runs one sequence at a time: these keep three waiting.
            long = [asyncio.ensure_future(http.post("/v1/completions", json={
                "model": "tiny-b", "prompt": PROMPT, "temperature": 0, "ignore_eos": True, "max_tokens": 400}))
                for _ in range(4)]
            tiny_b = server.service.pool.resident["tiny-b"]
            while tiny_b.async_engine.stats().num_waiting < 2:
                await asyncio.sleep(0.01)
            sent = await asyncio.gather(*(http.post("/v1/completions", json={
                "model": "chat-fast", "prompt": PROMPT, **GREEDY}) for _ in range(3)))
            finished = await asyncio.gather(*long)
            return sent, finished

    sent, finished = asyncio.run(scenario())
    for response in sent:
        assert_fallback(response, answers, "overloaded")
    assert [r.status_code for r in finished] == [200] * 4
    assert fallbacks_counted(server, "overloaded") == before + 3
    assert "x-appliance-fallback" not in complete(server, "chat-fast").headers  # idle again: its own model


def test_an_unloaded_primary_is_answered_by_its_fallback_until_it_is_back(server, answers):
    with ControlClient(server.app.config.control_socket) as control:
        task = control.unload_model("tiny-b")
        while task["state"] == "running":
            task = control.task(task["id"])
        assert task["state"] == "done", task
        assert "tiny-b" not in server.service.pool.resident
        for _ in range(2):
            assert_fallback(complete(server, "chat-fast"), answers, "not_ready")
        unknown = complete(server, "tiny-b")  # by its own name, with no fallback: as any model not served
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"

        task = control.load_model("tiny-b")
        while task["state"] == "running":
            task = control.task(task["id"])
        assert task["state"] == "done" and task["result"]["mode"] == "added", task
    back = complete(server, "chat-fast")
    assert back.status_code == 200 and "x-appliance-fallback" not in back.headers
    assert back.json()["choices"][0]["text"] == answers["tiny-b"]
