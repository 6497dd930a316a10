"""`appliance bench`, the load generator.

Most tests here are protocol tests of the client: they run it against a small starlette + uvicorn
server defined below that streams /v1/completions the way the OpenAI API does (SSE chunks, a usage
chunk, [DONE]) with known delays, so the measured numbers can be checked against the truth.
"""

import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from appliance.cli.bench import BenchConfig, BenchError, arrival_gaps, make_workload, percentile, run_benchmark

REPO = Path(__file__).resolve().parents[3]
FIRST_TOKEN_DELAY_S = 0.05
TOKEN_GAP_S = 0.01
API_KEY = "sk-app-test-good"
ERROR_AFTER_TWO = 13  # max_tokens that makes the fake server fail mid-stream


class FakeOpenAI:
    """Streams `max_tokens` one-token chunks; records arrivals and how many streams ran at once."""

    def __init__(self):
        self.in_flight = 0
        self.peak_in_flight = 0
        self.arrivals: list[float] = []
        self.bodies: list[dict] = []
        self.app = Starlette(
            routes=[Route("/v1/models", self.models), Route("/v1/completions", self.completions, methods=["POST"])]
        )

    async def models(self, request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def completions(self, request: Request):
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            error = {"message": "invalid API key", "type": "authentication_error", "param": None, "code": None}
            return JSONResponse({"error": error}, status_code=401)
        body = await request.json()
        self.arrivals.append(time.monotonic())
        self.bodies.append(body)
        return StreamingResponse(self.stream(body), media_type="text/event-stream")

    async def stream(self, body: dict):
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(FIRST_TOKEN_DELAY_S)
            n = body["max_tokens"]
            for i in range(n):
                if i > 0:
                    await asyncio.sleep(TOKEN_GAP_S)
                if n == ERROR_AFTER_TWO and i == 2:
                    yield sse({"error": {"message": "engine fell over", "type": "server_error"}})
                    return
                finish = "length" if i == n - 1 else None
                yield sse({"id": "c", "object": "text_completion", "model": body["model"],
                           "choices": [{"index": 0, "text": f" w{i}", "finish_reason": finish}]})
            usage = {"prompt_tokens": len(body["prompt"].split()), "completion_tokens": n,
                     "total_tokens": len(body["prompt"].split()) + n}
            yield sse({"id": "c", "object": "text_completion", "model": body["model"], "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
        finally:
            self.in_flight -= 1


def sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


@pytest.fixture
def fake_server():
    fake = FakeOpenAI()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    fake.base_url = f"http://127.0.0.1:{port}"
    yield fake
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def config(fake, **overrides) -> BenchConfig:
    settings = dict(base_url=fake.base_url, api_key=API_KEY, num_prompts=8, input_len=(5, 20), output_len=(4, 12))
    return BenchConfig(**{**settings, **overrides})


async def test_counts_tokens_exactly_and_measures_known_delays(fake_server):
    cfg = config(fake_server)
    workload = make_workload(cfg)
    result = await run_benchmark(cfg)
    assert (result.completed, result.failed, result.errors) == (8, 0, [])
    assert result.model == "fake-model"  # found through /v1/models
    assert result.total_output_tokens == sum(p.output_len for p in workload)
    assert result.total_input_tokens == sum(p.input_len for p in workload)
    assert all(b["ignore_eos"] and b["stream"] and b["stream_options"]["include_usage"] for b in fake_server.bodies)
    assert sorted(b["max_tokens"] for b in fake_server.bodies) == sorted(p.output_len for p in workload)
    # Timings: the fake waits 50 ms for the first token and 10 ms between tokens. TTFT ends at the first
    # token, not later: each request's e2e holds its token gaps after it (no wall-clock ceiling, which a
    # loaded CI machine's one-second stall once broke).
    assert FIRST_TOKEN_DELAY_S * 1000 * 0.9 <= result.ttft_ms.mean
    assert all(r.e2e_s - r.ttft_s >= 0.9 * TOKEN_GAP_S * (r.output_tokens - 1) for r in result.requests)
    assert TOKEN_GAP_S * 1000 * 0.8 <= result.itl_ms.p50 < 200
    assert TOKEN_GAP_S * 1000 * 0.8 <= result.tpot_ms.mean < 200
    assert result.ttft_ms.p50 <= result.ttft_ms.p99
    assert result.e2e_ms.mean > result.ttft_ms.mean
    assert result.request_throughput == pytest.approx(8 / result.duration_s)
    assert result.output_throughput == pytest.approx(result.total_output_tokens / result.duration_s)
    assert result.total_token_throughput == pytest.approx(
        (result.total_input_tokens + result.total_output_tokens) / result.duration_s
    )
    assert len(result.requests) == 8 and all(len(r.itls_s) == r.output_tokens - 1 for r in result.requests)


async def test_max_concurrency_caps_requests_in_flight(fake_server):
    result = await run_benchmark(config(fake_server, num_prompts=9, max_concurrency=3))
    assert result.completed == 9
    assert fake_server.peak_in_flight == 3


async def test_infinite_rate_sends_everything_at_once(fake_server):
    await run_benchmark(config(fake_server, num_prompts=10))
    assert fake_server.peak_in_flight == 10
    assert max(fake_server.arrivals) - min(fake_server.arrivals) < 0.5


async def test_request_rate_spaces_arrivals_like_the_seeded_poisson_gaps(fake_server):
    cfg = config(fake_server, num_prompts=10, request_rate=10.0, output_len=(2, 2))
    expected_span = sum(arrival_gaps(cfg)[1:])
    await run_benchmark(cfg)
    span = max(fake_server.arrivals) - min(fake_server.arrivals)
    assert expected_span > 0.5  # the seed gives a spread worth measuring
    # Sleeps never end early; a busy machine may make them end late.
    assert expected_span - 0.1 <= span <= expected_span + 0.5


async def test_rejected_requests_are_failures_with_the_server_message(fake_server):
    result = await run_benchmark(config(fake_server, api_key="sk-app-wrong-key", model="fake-model"))
    assert (result.completed, result.failed) == (0, 8)
    assert result.errors == ["HTTP 401: invalid API key"]
    assert result.request_throughput == 0 and result.ttft_ms.mean == 0


async def test_error_event_mid_stream_is_a_failure(fake_server):
    result = await run_benchmark(config(fake_server, num_prompts=3, output_len=(ERROR_AFTER_TWO, ERROR_AFTER_TWO)))
    assert (result.completed, result.failed) == (0, 3)
    assert result.errors == ["stream error: engine fell over"]


async def test_unreachable_server_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(BenchError, match="cannot reach"):
        await run_benchmark(BenchConfig(base_url=f"http://127.0.0.1:{port}", num_prompts=1))


def test_workload_is_reproducible_from_the_seed():
    cfg = BenchConfig(num_prompts=50, input_len=(10, 30), output_len=(5, 9), seed=7)
    first, again = make_workload(cfg), make_workload(cfg)
    assert first == again
    assert make_workload(BenchConfig(num_prompts=50, input_len=(10, 30), output_len=(5, 9), seed=8)) != first
    assert all(10 <= p.input_len <= 30 and len(p.text.split()) == p.input_len for p in first)
    assert all(5 <= p.output_len <= 9 for p in first)
    assert len({p.input_len for p in first}) > 5  # a range, not one length


@pytest.mark.parametrize(
    "bad", [dict(num_prompts=0), dict(request_rate=0), dict(max_concurrency=0), dict(input_len=(5, 2)),
            dict(output_len=(0, 3)), dict(endpoint="/v1/embeddings")]
)
def test_invalid_settings_are_rejected(bad):
    with pytest.raises(BenchError):
        BenchConfig(**bad)


def test_percentile_interpolates_like_numpy():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)
    assert percentile([5.0], 99) == 5.0
    assert math.isclose(percentile([0.0, 10.0], 25), 2.5)


def test_cli_reports_json(fake_server):
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "bench", "--base-url", fake_server.base_url, "--api-key", API_KEY,
         "--num-prompts", "4", "--input-len", "3:6", "--output-len", "5", "--max-concurrency", "2", "--json"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["completed"] == 4 and report["total_output_tokens"] == 20
    assert set(report["ttft_ms"]) == {"mean", "p50", "p99"}


def test_cli_text_report_and_failure_exit_code(fake_server):
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "bench", "--base-url", fake_server.base_url, "--api-key", "bad",
         "--model", "fake-model", "--num-prompts", "2", "--input-len", "3", "--output-len", "2"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60,
    )
    assert result.returncode == 1
    assert "Failed requests" in result.stdout and "error: HTTP 401: invalid API key" in result.stdout


# -- against the real service (tests/appliance/conftest.py: `appliance serve` on the tiny model) ------


@pytest.mark.parametrize("endpoint", ["/v1/completions", "/v1/chat/completions"])
async def test_real_server_streams_exact_output_lengths(live_server, endpoint):
    key_id = live_server.key_ids["main"]
    before = sum(d.requests for d in live_server.service.keys.usage(key_id))
    cfg = BenchConfig(
        base_url=live_server.base_url, api_key=live_server.key, endpoint=endpoint, num_prompts=6,
        input_len=(3, 8), output_len=(4, 8), max_concurrency=3, seed=3,
    )
    result = await run_benchmark(cfg)
    assert (result.completed, result.failed, result.errors) == (6, 0, [])
    assert result.model == live_server.model
    assert result.total_output_tokens == sum(p.output_len for p in make_workload(cfg))  # ignore_eos + max_tokens
    assert result.total_input_tokens >= 6 * 3  # as the server counted them
    assert all(0 < len(r.itls_s) <= r.output_tokens - 1 for r in result.requests)  # a gap per chunk after the first
    assert 0 < result.ttft_ms.p50 <= result.ttft_ms.p99 and result.itl_ms.mean > 0 and result.tpot_ms.mean > 0
    after = sum(d.requests for d in live_server.service.keys.usage(key_id))
    assert after - before == 6  # the key store counted every request


async def test_real_server_rate_limit_shows_as_failures(live_server):
    cfg = BenchConfig(base_url=live_server.base_url, api_key=live_server.keys["rpm1"], num_prompts=3,
                      input_len=(3, 3), output_len=(2, 2))
    result = await run_benchmark(cfg)
    assert result.failed >= 2 and result.completed + result.failed == 3
    assert result.errors[0].startswith("HTTP 429")
