"""Several models at once against a live service: three tiny random models and the default model.

Three resident from the start, each answering its own name; four clients loop over the names for
60 s while a fourth model loads on demand and an idle one is evicted to make room: no request
fails, every answer comes from the model its name routes to (greedy outputs tell them apart).
Then the memory plan refuses a model that does not fit, with the numbers, and loads it after an
unload.
"""

import asyncio
import time

import httpx
import pytest

from appliance.config import ModelSettings, Routing
from appliance.control.client import ControlClient
from appliance.serving import memory_plan
from tests.appliance.conftest import add_keys, make_config, put_in_store, start_server
from tests.conftest import build_tiny_model

PROMPT = "The weather today is"
GREEDY = {"temperature": 0, "ignore_eos": True, "max_tokens": 6}
LOOP_S = 60.0
NAMES = {"tiny-a": "tiny-a", "chat-fast": "tiny-b", "smollm2": "smollm2"}  # name sent → model that answers


@pytest.fixture(scope="module")
def server(default_model_path, tmp_path_factory):
    state = tmp_path_factory.mktemp("pool-state")
    built = tmp_path_factory.mktemp("pool-models")
    for seed, name in enumerate(("tiny-a", "tiny-b", "tiny-c", "tiny-d"), start=11):
        put_in_store(state / "models", build_tiny_model(built / name, default_model_path, seed=seed, tied=False), name)
    put_in_store(state / "models", default_model_path, "smollm2")
    config = make_config(
        "tiny-a", state, max_num_seqs=4, load_on_demand=True,
        models={"tiny-b": ModelSettings(pinned=True), "smollm2": ModelSettings(pinned=True),
                "tiny-c": ModelSettings(keep_alive_s=0.0)},  # idle at once: the one to evict
        routing=Routing(aliases={"chat-fast": "tiny-b"}))
    server = start_server(config, timeout_s=180)
    add_keys(server, server.app.config.keys_db_path)
    yield server
    server.stop()


def control(server) -> ControlClient:
    return ControlClient(server.app.config.control_socket)


def run_task(server, start) -> dict:
    with control(server) as client:
        task = start(client)
        while task["state"] == "running":
            time.sleep(0.05)
            task = client.task(task["id"])
    return task


def complete(server, model: str) -> httpx.Response:
    return httpx.post(server.base_url + "/v1/completions", headers=server.headers(), timeout=120,
                      json={"model": model, "prompt": PROMPT, **GREEDY})


def test_three_models_resident_at_once_each_answering_its_own_name(server):
    pool = server.service.pool
    assert set(pool.resident) == {"tiny-a", "tiny-b", "smollm2"}
    texts = {}
    for name, model in NAMES.items():
        response = complete(server, name)
        assert response.status_code == 200 and response.json()["model"] == model
        texts[model] = response.json()["choices"][0]["text"]
    assert len(set(texts.values())) == 3, texts
    listed = {m["id"]: m for m in httpx.get(server.base_url + "/v1/models", headers=server.headers()).json()["data"]}
    assert {n: listed[n]["state"] for n in ("tiny-a", "tiny-b", "smollm2")} == dict.fromkeys(
        ("tiny-a", "tiny-b", "smollm2"), "loaded")
    assert listed["chat-fast"]["model"] == "tiny-b"
    assert listed["tiny-c"]["state"] == listed["tiny-d"]["state"] == "on_demand"
    with control(server) as client:
        engines = {e["model"] for e in client.status()["engines"]}
    assert engines == {"tiny-a", "tiny-b", "smollm2"}
    metrics = httpx.get(server.metrics_url).text
    for model in ("tiny-a", "tiny-b", "smollm2"):
        assert f'vllm:num_requests_running{{model_name="{model}"}}' in metrics


def test_clients_loop_while_a_model_loads_on_demand_and_an_idle_one_is_evicted(server):
    pool = server.service.pool
    assert run_task(server, lambda c: c.load_model("tiny-c"))["state"] == "done"
    expected = {model: complete(server, name).json()["choices"][0]["text"] for name, model in NAMES.items()}
    # Room for what is loaded and half of tiny-d: its load must evict idle tiny-c (the others are pinned
    # or the default).
    need_d = memory_plan.needs(server.service.config.models_dir / "tiny-d", pool.engine_config("tiny-d"),
                               server.service.config.kv_context)
    server.service.config.pool_memory_bytes = sum(n.total for n in pool.planned.values()) + need_d.total // 2
    results: list[tuple[str, int, dict]] = []

    async def one_client(http: httpx.AsyncClient, index: int, stop_at: float):
        names = [*NAMES, "tiny-d"]
        turn = index
        while time.monotonic() < stop_at:
            name = names[turn % len(names)]
            turn += 1
            response = await http.post("/v1/completions", json={"model": name, "prompt": PROMPT, **GREEDY})
            results.append((name, response.status_code, response.json()))

    async def scenario():
        stop_at = time.monotonic() + LOOP_S
        async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers(), timeout=120) as http:
            await asyncio.gather(*(one_client(http, i, stop_at) for i in range(4)))

    asyncio.run(scenario())
    failed = [r for r in results if r[1] != 200]
    assert not failed, failed[:3]
    routes = {**NAMES, "tiny-d": "tiny-d"}
    for name, _, body in results:
        assert body["model"] == routes[name], f"{name} was answered by {body['model']}"
    tiny_d = {body["choices"][0]["text"] for name, _, body in results if name == "tiny-d"}
    assert len(tiny_d) == 1 and tiny_d.isdisjoint(expected.values())
    for name, model in NAMES.items():
        assert {body["choices"][0]["text"] for n, _, body in results if n == name} == {expected[model]}
    assert len(results) >= 4 * 4  # every client went round its names at least once
    assert set(pool.resident) == {"tiny-a", "tiny-b", "smollm2", "tiny-d"}  # tiny-c made room


def test_the_memory_plan_refuses_what_does_not_fit_and_loads_it_after_an_unload(server):
    pool = server.service.pool
    with control(server) as client:
        client.pin_model("tiny-d")  # nothing is evictable now
    refused = run_task(server, lambda c: c.load_model("tiny-c"))
    assert refused["state"] == "failed"
    assert "tiny-c needs" in refused["error"] and "GiB free" in refused["error"]
    assert "; unload smollm2 or tiny-b or tiny-d or lower its kv_cache_bytes" in refused["error"]
    assert "tiny-c" not in pool.resident
    with control(server) as client:
        listed = {m["name"]: m for m in client.models()["models"]}
    assert listed["tiny-d"]["pinned"] and listed["tiny-d"]["state"] == "resident"
    assert listed["tiny-c"]["load_error"] == refused["error"]
    assert run_task(server, lambda c: c.unload_model("tiny-d"))["state"] == "done"
    loaded = run_task(server, lambda c: c.load_model("tiny-c"))
    assert loaded["state"] == "done", loaded
    assert set(pool.resident) == {"tiny-a", "tiny-b", "smollm2", "tiny-c"}
    assert complete(server, "tiny-c").json()["model"] == "tiny-c"
