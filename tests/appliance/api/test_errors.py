"""Every error class answers with the right status and an OpenAI error object; bad input never 500s."""

import json
import time

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.appliance.conftest import make_config, start_server


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    return body["error"]


def chat_body(model, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **extra}


def test_401_missing_and_unknown_key(live_server):
    for headers in ({}, {"Authorization": "Bearer sk-app-deadbeef-nosuchsecret"}, {"Authorization": "Basic abc"}):
        r = httpx.post(live_server.base_url + "/v1/chat/completions", json=chat_body(live_server.model), headers=headers)
        assert r.status_code == 401, r.text
        assert error_of(r)["type"] == "authentication_error"
    bad = openai.OpenAI(base_url=live_server.base_url + "/v1", api_key="sk-app-00000000-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


@pytest.mark.parametrize("key", ["revoked", "expired", "other-model-only"])
def test_403_revoked_expired_or_model_not_allowed(live_server, key):
    r = httpx.post(live_server.base_url + "/v1/chat/completions", json=chat_body(live_server.model),
                   headers=live_server.headers(live_server.keys[key]))
    assert r.status_code == 403, r.text
    assert error_of(r)["type"] == "permission_error"


def test_404_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "model"


def test_400_names_the_invalid_parameter(client, live_server):
    for kwargs, param in [({"top_p": 2.0}, "top_p"), ({"n": 0}, "n"), ({"temperature": -1}, "temperature"),
                          ({"extra_body": {"top_k": -7}}, "top_k"), ({"stop": ["x"] * 40}, "stop")]:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=live_server.model, prompt="hi", max_tokens=2, **kwargs)
        assert e.value.status_code == 400
        assert e.value.body["param"] == param, (kwargs, e.value.body)


def test_400_prompt_too_long_says_both_numbers(client, live_server):
    limit = live_server.service.pool.active.max_model_len
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=live_server.model, prompt=[7] * (limit + 50), max_tokens=2)
    message = e.value.body["message"]
    assert str(limit) in message and str(limit + 50) in message
    assert e.value.body["code"] == "context_length_exceeded"


def test_413_body_too_large_before_parsing(live_server, http):
    limit = live_server.app.config.max_request_body_bytes
    big = b'{"model": "x", "prompt": "' + b"a" * (limit + 10) + b'"}'
    r = http.post("/v1/completions", content=big)
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "x", "prompt": "'
        for _ in range(limit // 65536 + 2):
            yield b"a" * 65536
        yield b'"}'

    r = http.post("/v1/completions", content=chunks())
    assert r.status_code == 413


def test_429_rate_limit_with_retry_after(live_server):
    headers = live_server.headers(live_server.keys["rpm1"])
    first = httpx.post(live_server.base_url + "/v1/chat/completions", json=chat_body(live_server.model), headers=headers)
    assert first.status_code == 200, first.text
    second = httpx.post(live_server.base_url + "/v1/chat/completions", json=chat_body(live_server.model), headers=headers)
    assert second.status_code == 429
    assert error_of(second)["type"] == "rate_limit_error"
    assert int(second.headers["Retry-After"]) >= 1


def test_unknown_route_is_an_openai_error(http):
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404 and error_of(r)


def test_405_names_the_allowed_methods(http):
    r = http.get("/v1/chat/completions")
    assert r.status_code == 405 and error_of(r)
    assert r.headers["Allow"] == "POST"  # RFC 9110: a 405 must say what is allowed


BAD_BODIES = [
    b"{not json",
    b"",
    b"\xff\xfe\x00garbage",
    b'{"model": "m", "messages": [{"role": "user", "content": "\xc3\x28"}]}',  # invalid UTF-8 inside JSON
    b"[]",
    b"null",
    b'"just a string"',
    b'{"model": 1e999, "messages": []}',
    b'{"model": "M", "messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}",
    b"[" * 100000 + b"]" * 100000,
]


def bad_json_bodies(model: str) -> list[dict]:
    ok_msg = [{"role": "user", "content": "hi"}]
    return [
        {},
        {"model": model},
        {"model": model, "messages": []},
        {"model": model, "messages": "hi"},
        {"model": model, "messages": [{}]},
        {"model": model, "messages": [{"role": "wizard", "content": "hi"}]},
        {"model": model, "messages": [{"role": "user", "content": {"a": 1}}]},
        {"model": model, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        {"model": model, "messages": ok_msg, "max_tokens": 10**30},
        {"model": model, "messages": ok_msg, "max_tokens": -1},
        {"model": model, "messages": ok_msg, "max_tokens": "lots"},
        {"model": model, "messages": ok_msg, "temperature": 1e308},
        {"model": model, "messages": ok_msg, "n": 10**9},
        {"model": model, "messages": ok_msg, "seed": 2**70},
        {"model": model, "messages": ok_msg, "stop": ["s%d" % i for i in range(5000)]},
        {"model": model, "messages": ok_msg, "stop": [""]},
        {"model": model, "messages": ok_msg, "stop": 5},
        {"model": model, "messages": ok_msg, "stop_token_ids": [-1]},
        {"model": model, "messages": ok_msg, "top_logprobs": 1000, "logprobs": True},
        {"model": model, "messages": ok_msg, "stream_options": "yes"},
        {"model": model, "messages": ok_msg, "min_tokens": 5, "max_tokens": 2},
        {"model": model, "messages": ok_msg, "repetition_penalty": 0},
        {"model": [model], "messages": ok_msg},
    ]


def bad_completion_bodies(model: str) -> list[dict]:
    return [
        {"model": model, "prompt": ""},
        {"model": model, "prompt": []},
        {"model": model, "prompt": [[]]},
        {"model": model, "prompt": [-1, 5]},
        {"model": model, "prompt": [10**12]},
        {"model": model, "prompt": [1, "a"]},
        {"model": model, "prompt": ["a"] * 1000},
        {"model": model, "prompt": ["hi"] * 5, "n": 16, "max_tokens": 1, "echo": True, "logprobs": 1},
        {"model": model, "prompt": ["a"] * 10, "n": 16},
        {"model": model, "prompt": "hi", "logprobs": 99},
        {"model": model, "prompt": {"text": "hi"}},
    ]


def test_battery_of_bad_bodies_gets_4xx_openai_errors(live_server, http):
    model = live_server.model
    cases = [("/v1/chat/completions", b) for b in BAD_BODIES]
    cases += [("/v1/chat/completions", json.dumps(b).encode()) for b in bad_json_bodies(model)]
    cases += [("/v1/completions", json.dumps(b).encode()) for b in bad_completion_bodies(model)]
    cases += [("/v1/embeddings", json.dumps(b).encode()) for b in ({"model": model, "input": []}, {"model": model})]
    for path, body in cases:
        r = http.post(path, content=body, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (path, body[:200], r.status_code, r.text[:300])
        error_of(r)
    assert live_server.service.readiness.health()[0]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(["model", "messages", "prompt", "max_tokens", "temperature", "top_p", "n", "stop", "seed",
                          "logprobs", "top_logprobs", "stream", "stream_options", "top_k", "min_p", "min_tokens",
                          "stop_token_ids", "repetition_penalty", "ignore_eos", "presence_penalty"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(fields, json_values, max_size=6), chat=st.booleans())
def test_random_bodies_never_500(live_server, http, body, chat):
    body.setdefault("model", live_server.model)
    if isinstance(body.get("max_tokens"), int):
        body["max_tokens"] = max(1, min(body["max_tokens"], 3))  # keep any valid one cheap
    body["stream"] = False
    content = json.dumps(body).encode()  # NaN and Infinity included, as Python's json writes them
    r = http.post("/v1/chat/completions" if chat else "/v1/completions", content=content)
    assert r.status_code < 500, (body, r.text[:300])
    if r.status_code != 200:
        error_of(r)


@pytest.fixture(scope="module")
def small_queue_server(tiny_model_path, tmp_path_factory):
    """One running sequence and one waiting slot: the third request finds the queue full."""
    from tests.appliance.conftest import add_keys

    state = tmp_path_factory.mktemp("small-queue")
    # No periodic canary: it would take the one running or waiting slot at a random moment.
    config = make_config(tiny_model_path, state, max_num_seqs=1, max_waiting_requests=1, metrics_port=0,
                         canary_interval_s=3600.0)
    server = start_server(config)
    add_keys(server, server.app.config.keys_db_path)
    yield server
    server.stop()


def test_503_with_retry_after_when_the_queue_is_full(small_queue_server):
    import threading

    server = small_queue_server
    body = {"model": server.model, "prompt": "go", "max_tokens": 1000, "ignore_eos": True}
    with httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=60) as http:
        with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as running:
            lines = running.iter_lines()  # kept: dropping the iterator would close the stream
            next(lines)  # one request runs...
            waiting = threading.Thread(target=lambda: http.post("/v1/completions", json={**body, "max_tokens": 1}))
            waiting.start()  # ...one waits (headers come with its first token)
            deadline = time.monotonic() + 20
            while server.service.pool.active.async_engine.stats().num_waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert server.service.pool.active.async_engine.stats().num_waiting == 1
            r = http.post("/v1/completions", json=body)
            assert r.status_code == 503, r.text
            assert error_of(r)["code"] == "overloaded"
            assert int(r.headers["Retry-After"]) >= 1
        waiting.join(60)
