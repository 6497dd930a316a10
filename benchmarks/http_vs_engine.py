"""Throughput through the HTTP API (streaming) vs the engine driven directly, same workload.

One run: the `appliance bench` workload (seeded prompts, exact output lengths with ignore_eos)
goes (a) over HTTP to `appliance serve` running as its own process, streamed as SSE, then
(b) straight into an Engine in this process. Prints output tokens/s for both and the ratio
(issue target: HTTP >= 90% of engine-direct).

    python benchmarks/http_vs_engine.py [--model PATH] [--num-prompts 32]
"""

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from appliance.cli.bench import BenchConfig, format_report, make_workload, run_benchmark
from appliance.keys import KeyStore
from engine import Engine, EngineConfig, SamplingParams


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, state_dir: Path, port: int, *flags: str) -> subprocess.Popen:
    """`appliance serve` on 127.0.0.1:port (more `flags` after ours), once /ready says so."""
    server = subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--model", model, "--state-dir", str(state_dir),
         "--host", "127.0.0.1", "--port", str(port), "--metrics-port", "0",
         "--control-socket", str(state_dir / "control.sock"), "--log-level", "warning", *flags],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with code {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    sys.exit("the server did not become ready in 300 s")


def run_http(model: str, config: BenchConfig) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        store = KeyStore(state / "keys.db")
        _, key = store.create("bench")
        store.close()
        port = free_port()
        server = start_server(model, state, port)
        try:
            config.base_url, config.api_key = f"http://127.0.0.1:{port}", key
            result = asyncio.run(run_benchmark(config))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    print(format_report(result))
    if result.failed:
        sys.exit(f"{result.failed} requests failed: {result.errors}")
    return result.output_throughput


def run_engine_direct(model: str, config: BenchConfig) -> float:
    engine = Engine(EngineConfig())
    engine.load_model(model)
    start = time.perf_counter()
    for i, prompt in enumerate(make_workload(config)):
        params = SamplingParams(max_tokens=prompt.output_len, temperature=0.0, ignore_eos=True)
        engine.add_request(str(i), prompt.text, params)
    produced = 0
    while engine.has_unfinished():
        produced += sum(len(o.new_token_ids) for o in engine.step())
    return produced / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path.home() / ".cache/appliance-tests/models/smollm2-135m-instruct"))
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = BenchConfig(num_prompts=args.num_prompts, input_len=(32, 256), output_len=(16, 128), seed=args.seed)
    print(f"workload: {args.num_prompts} prompts, input {config.input_len} words, output {config.output_len} tokens; "
          f"{os.cpu_count()} cores")
    http = run_http(args.model, config)
    direct = run_engine_direct(args.model, config)
    print(f"\nHTTP streaming: {http:.1f} output tok/s; engine direct: {direct:.1f} output tok/s; "
          f"HTTP / direct = {http / direct:.2f}")


if __name__ == "__main__":
    main()
