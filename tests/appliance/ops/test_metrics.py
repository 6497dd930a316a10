"""/metrics on its own listener: vLLM names with model_name, per-key appliance_* counters."""

import httpx
from prometheus_client.parser import text_string_to_metric_families

VLLM_NAMES = [
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:prompt_tokens",
    "vllm:generation_tokens", "vllm:request_success", "vllm:num_preemptions", "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits", "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds", "vllm:cache_config_info",
]


def scrape(live_server) -> dict:
    text = httpx.get(live_server.metrics_url, timeout=5).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_listener_is_separate_and_local(live_server):
    assert live_server.app.config.metrics_host == "127.0.0.1"
    assert live_server.app.metrics_port != live_server.app.public_port
    public = httpx.get(live_server.base_url + "/metrics")
    assert public.status_code == 404  # not on the public listener


def test_vllm_names_and_counts_move_with_a_request(live_server, client):
    model = live_server.model
    key_id = live_server.key_ids["main"]
    before = scrape(live_server)
    r = client.completions.create(model=model, prompt="count me", max_tokens=5, extra_body={"ignore_eos": True})
    after = scrape(live_server)
    names = {name for name, _ in after}
    for name in VLLM_NAMES:
        assert any(n == name or n.startswith(name + "_") for n in names), name
    assert all(dict(labels).get("model_name") == model for name, labels in after if name.startswith("vllm:"))
    assert value(after, "vllm:generation_tokens_total", model_name=model) - value(before, "vllm:generation_tokens_total", model_name=model) >= 5
    assert value(after, "vllm:prompt_tokens_total", model_name=model) > value(before, "vllm:prompt_tokens_total", model_name=model)
    assert value(after, "vllm:request_success_total", model_name=model, finished_reason="length") == \
        value(before, "vllm:request_success_total", model_name=model, finished_reason="length") + 1
    assert value(after, "vllm:time_to_first_token_seconds_count", model_name=model) > value(before, "vllm:time_to_first_token_seconds_count", model_name=model)
    assert value(after, "vllm:inter_token_latency_seconds_count", model_name=model) - value(before, "vllm:inter_token_latency_seconds_count", model_name=model) == 4
    stats = live_server.service.pool.active.async_engine.stats()
    assert value(after, "vllm:cache_config_info", block_size=str(stats.block_size), num_gpu_blocks=str(stats.kv_blocks_total),
                 enable_prefix_caching="True", prefix_caching="on", num_state_slots="0", model_name=model) == 1.0
    # What runs the model: on these CPU machines, the portable torch path.
    dtype = stats.execution["dtype"]  # dtype auto: float32, or bfloat16 where this CPU computes it natively
    assert value(after, "appliance_engine_execution_info", device="cpu", dtype=dtype, attention_backend="torch",
                 fused_layers="false", cuda_graphs="false", async_scheduling="false", experts="none",
                 attention="full", kv_cache="1 full group of 2 layers", weights=dtype, kv_cache_dtype=dtype,
                 state_slots="none", recurrent="none", model_name=model) == 1.0
    # per key
    assert value(after, "appliance_key_requests_total", key_id=key_id) == value(before, "appliance_key_requests_total", key_id=key_id) + 1
    assert value(after, "appliance_key_completion_tokens_total", key_id=key_id) - value(before, "appliance_key_completion_tokens_total", key_id=key_id) == 5
    assert value(after, "appliance_key_prompt_tokens_total", key_id=key_id) - value(before, "appliance_key_prompt_tokens_total", key_id=key_id) == r.usage.prompt_tokens


def test_api_responses_are_counted_by_status_class_and_in_the_dashboard_totals(live_server, http):
    model = live_server.model
    window = live_server.service.window
    before, totals_before = scrape(live_server), window.summary()
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    assert http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-app-nope"}).status_code == 401
    assert http.post("/v1/chat/completions", json=body | {"model": "no-such-model"}).status_code == 404
    assert http.post("/v1/chat/completions", json=body | {"max_tokens": -1}).status_code == 400
    assert http.get("/v1/no-such-route").status_code == 404
    assert http.get("/ready").status_code == 200
    after, totals = scrape(live_server), window.summary()

    def moved(handler, method, status):
        labels = dict(handler=handler, method=method, status=status)
        return value(after, "http_requests_total", **labels) - value(before, "http_requests_total", **labels)

    assert moved("/v1/chat/completions", "POST", "2xx") == 1
    assert moved("/v1/chat/completions", "POST", "4xx") == 3
    assert moved("none", "GET", "4xx") == 1
    assert moved("/ready", "GET", "2xx") == 1
    # The dashboard counts API requests (not health probes): the refusals among them apart from errors.
    assert totals["requests_total"] - totals_before["requests_total"] == 5
    assert totals["rejected"] - totals_before["rejected"] == 4
    assert totals["errors"] == totals_before["errors"]


def test_embedding_tokens_are_charged_to_the_key(live_server, client):
    key_id = live_server.key_ids["main"]
    before = scrape(live_server)
    r = client.embeddings.create(model=live_server.model, input=["charge these tokens", "and these"])
    after = scrape(live_server)
    assert r.usage.prompt_tokens > 0
    assert value(after, "appliance_key_prompt_tokens_total", key_id=key_id) - \
        value(before, "appliance_key_prompt_tokens_total", key_id=key_id) == r.usage.prompt_tokens


def test_a_metrics_token_is_required_when_set_and_off_loopback_it_must_be(tmp_path):
    import asyncio

    import pytest
    from starlette.applications import Starlette

    from appliance.config import ConfigError, load_config
    from appliance.ops.metrics import Metrics, metrics_routes

    with pytest.raises(ConfigError, match="metrics_host 0.0.0.0 is reachable from other machines: set metrics_token"):
        load_config(None, {"metrics_host": "0.0.0.0", "state_dir": tmp_path})
    assert load_config(None, {"metrics_host": "0.0.0.0", "metrics_token": "t0ken", "state_dir": tmp_path})

    app = Starlette(routes=metrics_routes(Metrics(lambda: []), token="t0ken"))

    async def status(headers: dict) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
            response = await client.get("/metrics", headers=headers)
            return response.status_code, response.text

    code, text = asyncio.run(status({}))
    assert code == 401 and "metrics_token required" in text
    assert asyncio.run(status({"Authorization": "Bearer wrong"}))[0] == 401
    code, text = asyncio.run(status({"Authorization": "Bearer t0ken"}))
    assert code == 200 and "appliance_auth_failures_total 0.0" in text
