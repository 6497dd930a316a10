"""Hot swap under load: two tiny models with different weights, a stream of concurrent requests.

Greedy outputs tell the models apart, so each answer's text must be the output of the model its
`model` field names; requests sent after a swap ended must come from the new model; none fail.
"""

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from appliance.control.client import ControlClient
from appliance.models.store import write_manifest
from tests.appliance.conftest import add_keys, make_config, put_in_store, start_server

REPO = Path(__file__).resolve().parents[3]
PROMPT = "The weather today is"
MAX_TOKENS = 24
SAMPLING = {"temperature": 0, "ignore_eos": True}  # greedy: each model's answer is fixed


@pytest.fixture(scope="module")
def swapper(tiny_model_path, tiny_model_path_b, tmp_path_factory):
    state = tmp_path_factory.mktemp("swap-state")
    put_in_store(state / "models", tiny_model_path, "model-a")
    put_in_store(state / "models", tiny_model_path_b, "model-b")
    broken = state / "models" / "model-broken"
    shutil.copytree(tiny_model_path, broken)
    (broken / "model.safetensors").write_bytes(b"not weights at all")
    write_manifest(broken, "model-broken", source="local:test", revision=None)
    server = start_server(make_config("model-a", state, swap_drain_timeout_s=30.0, max_num_seqs=8))
    add_keys(server, server.app.config.keys_db_path)
    yield server
    server.stop()


def complete(server, model="model-a") -> httpx.Response:
    return httpx.post(server.base_url + "/v1/completions", headers=server.headers(), timeout=60,
                      json={"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, **SAMPLING})


def load(server, name: str) -> dict:
    """Start a hot swap of the default model and follow it to its end; returns the final task."""
    with ControlClient(server.app.config.control_socket) as client:
        task = client.load_model(name, replace=server.service.pool.default)
        while task["state"] == "running":
            time.sleep(0.05)
            task = client.task(task["id"])
    return task


async def traffic(server, stop: asyncio.Event, clients: int = 4) -> list[tuple[float, float, int, dict]]:
    """(sent, answered, status, body) of every request the clients made until `stop`."""
    results = []

    async def one_client(http: httpx.AsyncClient):
        while not stop.is_set():
            sent = time.time()
            response = await http.post("/v1/completions", json={
                "model": "model-a", "prompt": PROMPT, "max_tokens": MAX_TOKENS, **SAMPLING})
            results.append((sent, time.time(), response.status_code, response.json()))

    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers(), timeout=60) as http:
        await asyncio.gather(*(one_client(http) for _ in range(clients)))
    return results


def test_swaps_under_load_fail_no_request_and_answer_from_the_admitting_model(swapper):
    expected = {"model-a": complete(swapper).json()["choices"][0]["text"]}
    assert load(swapper, "model-b")["state"] == "done"
    expected["model-b"] = complete(swapper).json()["choices"][0]["text"]
    assert expected["model-a"] != expected["model-b"], "the two test models must answer differently"
    assert load(swapper, "model-a")["state"] == "done"

    swaps = []

    async def scenario():
        stop = asyncio.Event()
        running = asyncio.ensure_future(traffic(swapper, stop))
        await asyncio.sleep(1.0)
        for target in ("model-b", "model-a", "model-b"):
            began = time.time()
            task = await asyncio.to_thread(load, swapper, target)
            swaps.append((began, time.time(), target, task))
            await asyncio.sleep(1.0)
        stop.set()
        return await running

    results = asyncio.run(scenario())
    assert [s[3]["state"] for s in swaps] == ["done"] * 3, [s[3] for s in swaps]
    assert all(s[3]["result"]["mode"] == "overlap" for s in swaps)
    failed = [r for r in results if r[2] != 200]
    assert not failed, failed[:3]
    for began, ended, target, _ in swaps:  # the clients loop, so a request was in flight during every swap
        assert any(sent < ended and answered > began for sent, answered, *_ in results), f"none during {target}"
    for sent, answered, _, body in results:
        model = body["model"]
        assert body["choices"][0]["text"] == expected[model], f"{model} answered with another model's text"
        ended_before = [s for s in swaps if s[1] < sent]
        if ended_before:  # sent after a swap ended: that swap's model, or one whose swap overlapped it
            overlapping = {s[2] for s in swaps if s[1] >= sent and s[0] < answered}
            assert model in {ended_before[-1][2]} | overlapping
    models_seen = {body["model"] for *_, body in results}
    assert models_seen == {"model-a", "model-b"}


def test_failing_load_leaves_the_old_model_serving_and_says_why(swapper):
    before = swapper.service.pool.active.name
    task = load(swapper, "model-broken")
    assert task["state"] == "failed"
    assert "model-broken could not be loaded" in task["error"] and f"{before} keeps serving" in task["error"]
    assert swapper.service.pool.active.name == before
    response = complete(swapper)
    assert response.status_code == 200 and response.json()["model"] == before
    with ControlClient(swapper.app.config.control_socket) as client:
        status = client.status()
        assert status["service"]["loaded_model"] == before and status["service"]["ready"]
        assert any(e["action"] == "model.load" and e["target"] == "model-broken" for e in client.audit())


def test_sequential_swap_queues_new_requests_instead_of_failing(swapper):
    swapper.service.config.swap_mode = "sequential"  # as when both models do not fit in memory
    try:
        target = "model-b" if swapper.service.pool.active.name == "model-a" else "model-a"

        async def scenario():
            async with httpx.AsyncClient(base_url=swapper.base_url, headers=swapper.headers(), timeout=60) as http:
                swap = asyncio.ensure_future(asyncio.to_thread(load, swapper, target))
                await asyncio.sleep(0.05)
                responses = await asyncio.gather(*(http.post("/v1/completions", json={
                    "model": "model-a", "prompt": PROMPT, "max_tokens": 4, "temperature": 0}) for _ in range(6)))
                return await swap, responses

        task, responses = asyncio.run(scenario())
    finally:
        swapper.service.config.swap_mode = "auto"
    assert task["state"] == "done" and task["result"]["mode"] == "sequential"
    assert [r.status_code for r in responses] == [200] * 6
    assert swapper.service.pool.active.name == target


def test_deleting_the_loaded_model_is_refused(swapper):
    from appliance.control.client import ControlError

    with ControlClient(swapper.app.config.control_socket) as client:
        loaded = client.models()["loaded"]
        with pytest.raises(ControlError) as refused:
            client.delete_model(loaded)
    assert refused.value.status == 409


def wait_task(client: ControlClient, task: dict) -> dict:
    while task["state"] == "running":
        time.sleep(0.05)
        task = client.task(task["id"])
    return task


def test_import_through_the_socket_reports_progress_and_lists_the_model(swapper, tiny_model_path):
    with ControlClient(swapper.app.config.control_socket) as client:
        task = wait_task(client, client.import_model(str(tiny_model_path), "imported-tiny"))
        assert task["state"] == "done", task
        listed = {m["name"]: m for m in client.models()["models"]}
        assert listed["imported-tiny"]["architecture"] == "LlamaForCausalLM" and not listed["imported-tiny"]["loaded"]
        assert listed["imported-tiny"]["source"] == f"local:{tiny_model_path}"
        failed = wait_task(client, client.import_model("/no/such/folder", "nothing"))
        assert failed["state"] == "failed" and "/no/such/folder" in failed["error"]
        client.delete_model("imported-tiny")
        assert "imported-tiny" not in {m["name"] for m in client.models()["models"]}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_talks_to_the_service_over_the_socket(swapper):
    socket = str(swapper.app.config.control_socket)
    listed = cli("models", "list", "--socket", socket)
    assert listed.returncode == 0 and "model-a" in listed.stdout and "model-b" in listed.stdout
    target = "model-b" if swapper.service.pool.active.name == "model-a" else "model-a"
    loaded = cli("models", "load", target, "--replace", swapper.service.pool.default, "--socket", socket)
    assert loaded.returncode == 0, loaded.stderr
    # Progress lines as the task goes (which stages a fast load shows depends on when the CLI listened).
    stages = [line.split("]")[0] + "]" for line in loaded.stderr.splitlines() if line.startswith("[")]
    assert len(stages) >= 2 and stages[-1] == "[done]" and f"load {target}: done" in loaded.stdout
    status = cli("status", "--socket", socket)
    assert status.returncode == 0 and f"model     {target}" in status.stdout
    assert "engine    torch · cpu float32" in status.stdout  # the test servers' dtype (tests/appliance/conftest.py)
    created = cli("keys", "create", "from-cli", "--rpm", "5", "--socket", socket)
    assert created.returncode == 0 and created.stdout.count("sk-app-") == 1
    listed_keys = cli("keys", "list", "--socket", socket)
    assert "from-cli" in listed_keys.stdout and "sk-app-" not in listed_keys.stdout
    refused = cli("models", "delete", target, "--yes", "--socket", socket)
    assert refused.returncode == 1 and "unload it first" in refused.stderr
    missing = cli("status", "--socket", socket + ".missing")
    assert missing.returncode == 1 and "is the service running?" in missing.stderr


def test_swapped_in_model_stays_loaded_after_a_restart(tiny_model_path, tiny_model_path_b, tmp_path):
    state = tmp_path / "state"
    put_in_store(state / "models", tiny_model_path, "model-a")
    put_in_store(state / "models", tiny_model_path_b, "model-b")
    config = make_config("model-a", state)
    server = start_server(config)
    try:
        assert load(server, "model-b")["state"] == "done"
    finally:
        server.stop()
    again = start_server(make_config("model-a", state))
    add_keys(again, again.app.config.keys_db_path)
    try:
        assert again.service.pool.active.name == "model-b"
        answer = complete(again, model="model-a")  # the configured name reaches its replacement
        assert answer.status_code == 200 and answer.json()["model"] == "model-b"
    finally:
        again.stop()
