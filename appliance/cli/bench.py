"""`appliance bench`: a load generator for the OpenAI API, in the spirit of `vllm bench serve`.

A seeded workload of prompts built from common English words (about one token per word) is sent
over HTTP, streaming, at a Poisson request rate or all at once, optionally capped at a number of
requests in flight. Completions use ignore_eos with max_tokens, so output lengths are exact.

Per request it measures TTFT (send to first content chunk), ITL (gaps between content chunks)
and TPOT ((end-to-end - TTFT) / (output tokens - 1)); over the run, request and token throughput.
`run_benchmark(config)` is the entry point for other code (e.g. HTTP vs engine-direct comparisons).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field

import httpx

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by"
    " word but not what all were we when your can said there use an each which she do how their if will up"
    " other about out many then them these so some her would make like him into time has look two more write"
    " go see number no way could people my than first water been call who oil its now find long down day did"
    " get come made may part over new sound take only little work know place year live me back give most very"
    " after thing our just name good sentence man think say great where help through much before line right"
).split()
ERRORS_KEPT = 5


class BenchError(Exception):
    """The benchmark could not start (bad settings, server unreachable, no model)."""


@dataclass
class BenchConfig:
    base_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    model: str | None = None  # None: the first model the server lists
    endpoint: str = "/v1/completions"  # or /v1/chat/completions
    num_prompts: int = 100
    request_rate: float = math.inf  # requests per second, Poisson arrivals; inf sends all at once
    max_concurrency: int | None = None
    input_len: tuple[int, int] = (128, 128)  # words per prompt, inclusive range
    output_len: tuple[int, int] = (128, 128)  # max_tokens, inclusive range
    seed: int = 0
    timeout_s: float = 600.0

    def __post_init__(self):
        if self.num_prompts < 1:
            raise BenchError(f"num_prompts must be at least 1, got {self.num_prompts}")
        if not self.request_rate > 0:
            raise BenchError(f"request_rate must be positive (or inf), got {self.request_rate}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise BenchError(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        for name in ("input_len", "output_len"):
            low, high = getattr(self, name)
            if not 1 <= low <= high:
                raise BenchError(f"{name} must be a range 1 <= low <= high, got {low}:{high}")
        if self.endpoint not in ("/v1/completions", "/v1/chat/completions"):
            raise BenchError(f"endpoint must be /v1/completions or /v1/chat/completions, got {self.endpoint}")


@dataclass
class BenchPrompt:
    text: str
    input_len: int  # words, roughly tokens
    output_len: int


@dataclass
class RequestResult:
    ok: bool = False
    prompt_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itls_s: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else None


@dataclass
class Stats:
    mean: float
    p50: float
    p99: float

    @classmethod
    def of(cls, values_s: list[float]) -> Stats:
        """Milliseconds; zeros when there is nothing to summarise."""
        ms = sorted(v * 1000.0 for v in values_s)
        if not ms:
            return cls(0.0, 0.0, 0.0)
        return cls(sum(ms) / len(ms), percentile(ms, 50), percentile(ms, 99))


@dataclass
class BenchResult:
    model: str
    num_prompts: int
    completed: int
    failed: int
    errors: list[str]  # the first few distinct messages
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float  # completed requests per second
    output_throughput: float  # output tokens per second
    total_token_throughput: float  # input + output tokens per second
    ttft_ms: Stats
    tpot_ms: Stats
    itl_ms: Stats
    e2e_ms: Stats
    requests: list[RequestResult] = field(repr=False, default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        del out["requests"]
        return out


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(sorted_values) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def make_workload(config: BenchConfig) -> list[BenchPrompt]:
    """The same prompts and lengths for the same seed."""
    rng = random.Random(config.seed)
    prompts = []
    for _ in range(config.num_prompts):
        input_len = rng.randint(*config.input_len)
        output_len = rng.randint(*config.output_len)
        text = " ".join(rng.choice(WORDS) for _ in range(input_len))
        prompts.append(BenchPrompt(text, input_len, output_len))
    return prompts


def arrival_gaps(config: BenchConfig) -> list[float]:
    """Seconds to wait before each request: exponential gaps make a Poisson process."""
    if math.isinf(config.request_rate):
        return [0.0] * config.num_prompts
    rng = random.Random(config.seed + 1)  # independent of the prompts, still reproducible
    return [rng.expovariate(config.request_rate) for _ in range(config.num_prompts)]


async def run_benchmark(config: BenchConfig) -> BenchResult:
    prompts = make_workload(config)
    gaps = arrival_gaps(config)
    connections = config.max_concurrency or config.num_prompts
    async with httpx.AsyncClient(
        base_url=config.base_url.rstrip("/"),
        headers={"Authorization": f"Bearer {config.api_key}"} if config.api_key else {},
        timeout=httpx.Timeout(config.timeout_s, connect=10.0),
        # As many connections as requests may be in flight: a pool queue would count as server TTFT.
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    ) as client:
        model = config.model or await first_model(client)
        gate = asyncio.Semaphore(connections)

        async def limited(prompt: BenchPrompt) -> RequestResult:
            async with gate:
                return await send_request(client, config, model, prompt)

        start = time.perf_counter()
        tasks = []
        for prompt, gap in zip(prompts, gaps):
            if gap > 0:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(limited(prompt)))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return summarise(config, model, results, duration)


async def first_model(client: httpx.AsyncClient) -> str:
    try:
        response = await client.get("/v1/models")
    except httpx.HTTPError as e:
        raise BenchError(f"cannot reach {client.base_url}: {e!r}; is the service running (--base-url)?") from None
    if response.status_code != 200:
        raise BenchError(f"GET /v1/models answered {response.status_code}: {error_message(response.text)}")
    models = response.json().get("data") or []
    if not models:
        raise BenchError("the server lists no models; pass --model")
    return models[0]["id"]


def request_body(config: BenchConfig, model: str, prompt: BenchPrompt) -> dict:
    body = {
        "model": model,
        "max_tokens": prompt.output_len,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if config.endpoint == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": prompt.text}]
    else:
        body["prompt"] = prompt.text
    return body


async def send_request(client: httpx.AsyncClient, config: BenchConfig, model: str, prompt: BenchPrompt) -> RequestResult:
    result = RequestResult(prompt_tokens=prompt.input_len)
    chunks = 0
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", config.endpoint, json=request_body(config, model, prompt)) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {error_message(body)}"
                return result
            async for data in sse_data(response):
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    result.error = f"stream error: {error_message(data)}"
                    return result
                if event.get("usage"):
                    result.prompt_tokens = event["usage"].get("prompt_tokens", result.prompt_tokens)
                    result.output_tokens = event["usage"].get("completion_tokens", 0)
                if not chunk_text(event):
                    continue
                now = time.perf_counter()
                if chunks == 0:
                    result.ttft_s = now - start
                else:
                    result.itls_s.append(now - last)
                chunks += 1
                last = now
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as e:
        result.error = f"{type(e).__name__}: {e}"
        return result
    result.e2e_s = time.perf_counter() - start
    if chunks == 0:
        result.error = "the stream ended without any content"
        return result
    result.output_tokens = result.output_tokens or chunks  # without a usage chunk, one token per chunk
    result.ok = True
    return result


async def sse_data(response: httpx.Response):
    """The data fields of a server-sent event stream, one per event line."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            yield line[5:].strip()


def chunk_text(event: dict) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "delta" in choice:
        return (choice["delta"] or {}).get("content") or ""
    return choice.get("text") or ""


def error_message(body: str) -> str:
    """The message of an OpenAI error object, or the start of whatever came back."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.strip()[:200]


def summarise(config: BenchConfig, model: str, results: list[RequestResult], duration_s: float) -> BenchResult:
    done = [r for r in results if r.ok]
    errors: list[str] = []
    for r in results:
        if r.error and r.error not in errors and len(errors) < ERRORS_KEPT:
            errors.append(r.error)
    input_tokens = sum(r.prompt_tokens for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    return BenchResult(
        model=model,
        num_prompts=config.num_prompts,
        completed=len(done),
        failed=len(results) - len(done),
        errors=errors,
        duration_s=duration_s,
        total_input_tokens=input_tokens,
        total_output_tokens=output_tokens,
        request_throughput=len(done) / duration_s,
        output_throughput=output_tokens / duration_s,
        total_token_throughput=(input_tokens + output_tokens) / duration_s,
        ttft_ms=Stats.of([r.ttft_s for r in done]),
        tpot_ms=Stats.of([r.tpot_s for r in done if r.tpot_s is not None]),
        itl_ms=Stats.of([gap for r in done for gap in r.itls_s]),
        e2e_ms=Stats.of([r.e2e_s for r in done]),
        requests=results,
    )


def format_report(result: BenchResult) -> str:
    rows = [
        ("Model", result.model),
        ("Successful requests", result.completed),
        ("Failed requests", result.failed),
        ("Benchmark duration (s)", f"{result.duration_s:.2f}"),
        ("Total input tokens", result.total_input_tokens),
        ("Total generated tokens", result.total_output_tokens),
        ("Request throughput (req/s)", f"{result.request_throughput:.2f}"),
        ("Output token throughput (tok/s)", f"{result.output_throughput:.2f}"),
        ("Total token throughput (tok/s)", f"{result.total_token_throughput:.2f}"),
    ]
    for label, stats in (("TTFT", result.ttft_ms), ("TPOT", result.tpot_ms), ("ITL", result.itl_ms)):
        rows += [(f"{kind} {label} (ms)", f"{getattr(stats, kind.lower()):.2f}") for kind in ("Mean", "P50", "P99")]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    lines += [f"error: {e}" for e in result.errors]
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------


def length_range(text: str) -> tuple[int, int]:
    """'128' or '64:256'."""
    low, _, high = text.partition(":")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LOW:HIGH, got {text!r}") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected 1 <= LOW <= HIGH, got {text!r}")
    return bounds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="the service (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="default: $OPENAI_API_KEY")
    parser.add_argument("--model", help="model id (default: the first the server lists)")
    parser.add_argument("--endpoint", default="/v1/completions", choices=["/v1/completions", "/v1/chat/completions"])
    parser.add_argument("--num-prompts", type=int, default=100)
    parser.add_argument("--request-rate", type=float, default=math.inf, help="requests/s, Poisson (default: inf, all at once)")
    parser.add_argument("--max-concurrency", type=int, help="most requests in flight (default: no cap)")
    parser.add_argument("--input-len", type=length_range, default=(128, 128), metavar="N|LOW:HIGH", help="prompt words")
    parser.add_argument("--output-len", type=length_range, default=(128, 128), metavar="N|LOW:HIGH", help="max_tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        config = BenchConfig(
            base_url=args.base_url, api_key=args.api_key, model=args.model, endpoint=args.endpoint,
            num_prompts=args.num_prompts, request_rate=args.request_rate, max_concurrency=args.max_concurrency,
            input_len=args.input_len, output_len=args.output_len, seed=args.seed, timeout_s=args.timeout,
        )
        result = asyncio.run(run_benchmark(config))
    except BenchError as e:
        print(f"appliance bench: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_report(result))
    return 0 if result.completed else 1
