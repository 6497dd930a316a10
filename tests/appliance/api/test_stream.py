"""Streaming wire format, client disconnects, health endpoints and /openapi.json."""

import json
import time

import httpx

from tests.appliance.conftest import wait_engine_idle


def test_sse_wire_format(live_server, http):
    body = {"model": live_server.model, "prompt": "abc", "max_tokens": 3, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert [len(p["choices"]) for p in payloads] == [1, 1, 1, 0]
    assert payloads[-1]["usage"] == {"prompt_tokens": payloads[-1]["usage"]["prompt_tokens"], "completion_tokens": 3,
                                     "total_tokens": payloads[-1]["usage"]["prompt_tokens"] + 3,
                                     "prompt_tokens_details": payloads[-1]["usage"]["prompt_tokens_details"]}


def test_client_disconnect_mid_stream_frees_the_blocks(live_server):
    service = live_server.service
    wait_engine_idle(service)
    body = {"model": live_server.model, "messages": [{"role": "user", "content": "go on forever"}],
            "max_tokens": 900, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=live_server.base_url, headers=live_server.headers(), timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            received = [next(lines) for _ in range(6)]
            assert all(line == "" or line.startswith("data: {") for line in received)
            busy = service.pool.active.async_engine.stats()
            assert busy.num_running == 1 and busy.kv_blocks_used > 0
        # leaving the block closes the connection mid-stream
    stats = wait_engine_idle(service, timeout_s=5)
    assert (stats.num_running, stats.num_waiting, stats.kv_blocks_used) == (0, 0, 0)
    assert stats.generation_tokens_total - busy.generation_tokens_total < 600  # it did not run to the end


def test_every_way_a_request_ends_releases_its_lease_at_once(live_server, http):
    """The hold on the model is released explicitly, not by garbage collection (which is off here)."""
    import gc

    served = live_server.service.pool.active
    chat = {"model": live_server.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    def released(timeout_s: float = 0.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while served.leases and time.monotonic() < deadline:
            time.sleep(0.02)
        return served.leases == 0

    gc.disable()
    try:
        assert http.post("/v1/chat/completions", json=chat).status_code == 200 and released()
        with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as r:
            assert r.read().decode().endswith("data: [DONE]\n\n")
        assert released()
        too_long = {**chat, "messages": [{"role": "user", "content": "word " * 3000}]}  # past the context: 400
        assert http.post("/v1/chat/completions", json=too_long).status_code == 400 and released()
        limited = {"Authorization": f"Bearer {live_server.keys['rpm1']}"}
        answers = [http.post("/v1/completions", json={"model": live_server.model, "prompt": "a", "max_tokens": 1},
                             headers=limited).status_code for _ in range(2)]
        assert answers[-1] == 429 and released()  # (the key's one request a minute may be used up already)
        with httpx.Client(base_url=live_server.base_url, headers=live_server.headers(), timeout=30) as client:
            with client.stream("POST", "/v1/chat/completions",
                               json={**chat, "max_tokens": 900, "ignore_eos": True, "stream": True}) as r:
                assert next(r.iter_lines()).startswith("data: {")
        assert released(timeout_s=5)  # the client left mid-stream (the engine may have finished first: it is fast)
    finally:
        gc.enable()


def test_health_and_ready(live_server, http):
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    ready = http.get("/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready", "model": live_server.model, "reasons": []}


def test_failing_canary_turns_ready_503_with_the_reason(live_server, http):
    service = live_server.service
    saved = service.readiness.last_canary_error
    service.readiness.last_canary_error = "RuntimeError: injected"
    try:
        r = http.get("/ready")
        assert r.status_code == 503
        assert any("canary" in reason and "injected" in reason for reason in r.json()["reasons"])
    finally:
        service.readiness.last_canary_error = saved
    assert http.get("/ready").status_code == 200


def test_canary_runs_and_proves_generation(live_server):
    import asyncio

    service = live_server.service
    before = service.readiness.last_canary_ok
    future = asyncio.run_coroutine_threadsafe(service.readiness.run_canary(), live_server.app._loop)
    assert future.result(timeout=10) is True
    assert service.readiness.last_canary_ok > before


def test_openapi_describes_the_request_bodies(http):
    spec = http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for path, name in [("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest"),
                       ("/v1/embeddings", "EmbeddingRequest")]:
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{name}"
    chat = schemas["ChatCompletionRequest"]["properties"]
    for field in ("messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "n",
                  "logprobs", "top_logprobs", "stream_options", "top_k", "min_p", "repetition_penalty", "min_tokens",
                  "ignore_eos", "stop_token_ids"):
        assert field in chat, field
    assert "prompt" in schemas["CompletionRequest"]["properties"]
    assert "get" in spec["paths"]["/v1/models"]
    for path, event in [("/v1/chat/completions", "ChatCompletionChunk"), ("/v1/completions", "Completion"),
                        ("/v1/responses", None)]:
        streamed = spec["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]
        assert streamed["schema"]["type"] == "string"
        assert streamed.get("x-event-schema") == ({"$ref": f"#/components/schemas/{event}"} if event else None)


def test_request_log_lines_are_json_without_secrets(live_server, client, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="appliance.request"):
        client.chat.completions.create(model=live_server.model, messages=[{"role": "user", "content": "secret prompt"}],
                                       max_tokens=2)
        deadline = time.monotonic() + 2
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.01)
    line = caplog.records[-1].getMessage()
    record = json.loads(line)
    assert record["key_id"] == live_server.key_ids["main"] and record["endpoint"] == "chat"
    assert record["prompt_tokens"] > 0 and record["completion_tokens"] >= 1
    for field in ("request_id", "model", "queue_time_s", "ttft_s", "total_time_s", "finish_reason"):
        assert field in record
    assert live_server.key not in line and "secret prompt" not in line


def test_client_leaving_a_non_streamed_request_aborts_it(live_server):
    service = live_server.service
    wait_engine_idle(service)
    body = {"model": live_server.model, "prompt": "wait for me", "max_tokens": 900, "ignore_eos": True}
    before = service.pool.active.async_engine.stats().generation_tokens_total
    try:
        httpx.post(live_server.base_url + "/v1/completions", json=body, headers=live_server.headers(), timeout=0.5)
    except httpx.ReadTimeout:
        pass  # the client gives up and closes the connection
    stats = wait_engine_idle(service, timeout_s=5)
    assert (stats.num_running, stats.kv_blocks_used) == (0, 0)
    assert stats.generation_tokens_total - before < 600


def test_refused_requests_get_a_log_line_naming_who_and_why(live_server, http, caplog):
    import logging

    body = {"model": live_server.model, "messages": [{"role": "user", "content": "secret prompt"}], "max_tokens": 2}
    other_only = live_server.keys["other-model-only"]
    with caplog.at_level(logging.INFO, logger="appliance.request"):
        assert http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-app-nope"}).status_code == 401
        assert http.post("/v1/chat/completions", json=body, headers=live_server.headers(other_only)).status_code == 403
        assert http.post("/v1/completions", content=b"{not json").status_code == 400
    refused = [json.loads(r.getMessage()) for r in caplog.records if '"refused"' in r.getMessage()]
    assert [(r["path"], r["status"], r["code"]) for r in refused] == [
        ("/v1/chat/completions", "error 401", "invalid_api_key"),
        ("/v1/chat/completions", "error 403", "model_not_allowed"),
        ("/v1/completions", "error 400", "invalid_parameter"),
    ]
    assert refused[0]["key_id"] is None and refused[1]["key_id"] == live_server.key_ids["other-model-only"]
    assert refused[1]["model"] == live_server.model and refused[1]["request_id"].startswith("chatcmpl-")
    assert refused[2]["request_id"] is None  # refused before it had one: the body did not parse
    assert all(r["message"] for r in refused)
    assert not any(secret in caplog.text for secret in live_server.keys.values()) and "secret prompt" not in caplog.text
