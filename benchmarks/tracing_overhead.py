"""The HTTP path with tracing on vs off, same run: requests/s and p99 latency of streamed chat requests.

Two `appliance serve` processes on the tiny random model (so the HTTP path, not the model, is most
of each request's time): one without traces, one exporting every span over OTLP/HTTP to a
receiver in this process (tests/appliance/ops/otlp_receiver.py, which decodes them). Rounds
alternate off, on, off, on… so that drift and other load on the machine hit both; each round sends
the same requests from a fixed number of concurrent clients. Prints each round, the medians, and
the median of each pair's on/off ratio (issue 19's target: traced throughput >= 0.97 of untraced),
and the server's CPU seconds per request (its user + system time over the round: what tracing
costs, even while other work on the machine makes the rates swing).

    python -m benchmarks.tracing_overhead [--rounds 8] [--requests 100] [--concurrency 8]
"""

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from appliance.keys import KeyStore
from benchmarks.http_vs_engine import free_port, start_server
from tests.appliance.ops.otlp_receiver import Receiver
from tests.conftest import CACHE_DIR, build_tiny_model

BODY = {"messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 8, "stream": True,
        "ignore_eos": True, "temperature": 0}


def start_traced_or_not(model: Path, state: Path, port: int, traces: str | None) -> subprocess.Popen:
    config = state / "config.toml"
    config.write_text(f'otlp_traces_endpoint = "{traces}"\n' if traces else "")
    return start_server(str(model), state, port, "--config", str(config), "--no-tls")


async def one_round(base_url: str, key: str, model: str, requests: int, concurrency: int) -> tuple[float, float]:
    """(requests per second, p99 latency in seconds) of `requests` streamed chats from `concurrency` clients."""
    latencies: list[float] = []
    queue: asyncio.Queue = asyncio.Queue()
    for _ in range(requests):
        queue.put_nowait(None)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            async with http.stream("POST", "/v1/chat/completions", json={**BODY, "model": model}) as response:
                async for line in response.aiter_lines():
                    if line == "data: [DONE]":
                        break
                if response.status_code != 200:
                    sys.exit(f"a request failed: HTTP {response.status_code}")
            latencies.append(time.perf_counter() - started)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, limits=limits,
                                 timeout=60) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return requests / elapsed, latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="rounds of each (off and on alternate)")
    parser.add_argument("--requests", type=int, default=100, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    tokenizer = CACHE_DIR / "models" / "smollm2-135m-instruct"
    if not tokenizer.exists():
        sys.exit(f"{tokenizer} is missing: run the test suite once (it installs the default model there)")
    with tempfile.TemporaryDirectory() as tmp, Receiver() as receiver:
        model = build_tiny_model(Path(tmp) / "tiny", tokenizer)
        servers, urls = [], {}
        for name, traces in (("off", None), ("on", receiver.endpoint)):
            state = Path(tmp) / name
            state.mkdir()
            store = KeyStore(state / "keys.db")
            _, key = store.create("bench")
            store.close()
            port = free_port()
            servers.append(start_traced_or_not(model, state, port, traces))
            urls[name] = (f"http://127.0.0.1:{port}", key)
        try:
            print(f"{args.requests} streamed chats of 8 tokens per round, {args.concurrency} clients, "
                  f"tiny random model, {os.cpu_count()} cores")
            results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
            cpu: dict[str, list[float]] = {"off": [], "on": []}
            processes = {"off": psutil.Process(servers[0].pid), "on": psutil.Process(servers[1].pid)}
            asyncio.run(one_round(*urls["off"], "tiny", 16, 4))  # warm both (first requests compile, connect)
            asyncio.run(one_round(*urls["on"], "tiny", 16, 4))
            for i in range(args.rounds):
                for name in ("off", "on"):
                    before = sum(processes[name].cpu_times()[:2])
                    rps, p99 = asyncio.run(one_round(*urls[name], "tiny", args.requests, args.concurrency))
                    cpu[name].append((sum(processes[name].cpu_times()[:2]) - before) / args.requests)
                    results[name].append((rps, p99))
                    print(f"round {i + 1} tracing {name:>3}: {rps:6.1f} req/s, p99 {p99 * 1000:6.1f} ms, "
                          f"server CPU {cpu[name][-1] * 1000:5.1f} ms/request")
            spans = len(receiver.spans)
        finally:
            for server in servers:
                server.send_signal(signal.SIGTERM)
            for server in servers:
                server.wait(60)
    median = {name: (statistics.median(r for r, _ in rows), statistics.median(p for _, p in rows))
              for name, rows in results.items()}
    (off_rps, off_p99), (on_rps, on_p99) = median["off"], median["on"]
    print(f"\nmedian: off {off_rps:.1f} req/s p99 {off_p99 * 1000:.1f} ms; on {on_rps:.1f} req/s p99 {on_p99 * 1000:.1f} ms")
    pairs = [(on[0] / off[0], on[1] / off[1]) for off, on in zip(results["off"], results["on"])]
    print(f"traced / untraced: throughput {on_rps / off_rps:.3f}, p99 {on_p99 / off_p99:.3f} (medians); "
          f"per pair of rounds: throughput {statistics.median(r for r, _ in pairs):.3f}, "
          f"p99 {statistics.median(p for _, p in pairs):.3f}; the receiver decoded {spans} spans")
    off_cpu, on_cpu = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(f"server CPU per request: off {off_cpu * 1000:.1f} ms, on {on_cpu * 1000:.1f} ms "
          f"(untraced / traced = {off_cpu / on_cpu:.3f}: the throughput ratio on a machine it has to itself)")


if __name__ == "__main__":
    main()
