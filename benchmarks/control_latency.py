"""Control-socket status round trip while the engine is saturated, against the same idle.

One run: `appliance serve` (its own process) on the default model; `appliance status`-style
calls (ControlClient.status(): JSON over the Unix socket) every 20 ms, first with the service
idle, then while `appliance bench` (another process) keeps the engine full. Prints p50/p99/max
of both and their ratio (issue target: saturated p99 <= 20 ms).

    python benchmarks/control_latency.py [--model PATH] [--calls 500] [--concurrency 32]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appliance.control.client import ControlClient
from appliance.keys import KeyStore
from benchmarks.http_vs_engine import free_port, start_server
from tests.conftest import CACHE_DIR


def measure(client: ControlClient, calls: int, gap_s: float = 0.02) -> dict:
    times, busy = [], 0
    for _ in range(calls):
        start = time.perf_counter()
        snapshot = client.status()
        times.append(time.perf_counter() - start)
        busy += snapshot["engine"]["running"] > 0
        time.sleep(gap_s)
    times.sort()
    return {"p50_ms": 1000 * statistics.median(times), "p99_ms": 1000 * times[int(0.99 * (len(times) - 1))],
            "max_ms": 1000 * times[-1], "calls": calls, "busy_fraction": busy / calls}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(CACHE_DIR / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        with KeyStore(state / "keys.db") as store:
            _, key = store.create("bench")
        port = free_port()
        server = start_server(args.model, state, port)
        try:
            with ControlClient(state / "control.sock") as client:
                client.status()  # connect once
                idle = measure(client, args.calls)
                load = subprocess.Popen(
                    [sys.executable, "-m", "appliance.cli", "bench", "--base-url", f"http://127.0.0.1:{port}",
                     "--api-key", key, "--num-prompts", str(args.concurrency * 20), "--max-concurrency",
                     str(args.concurrency), "--input-len", "64:256", "--output-len", "64:256"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
                deadline = time.monotonic() + 120
                while client.status()["engine"]["running"] < args.concurrency // 2:
                    if time.monotonic() > deadline:
                        sys.exit("the load generator never filled the engine")
                    time.sleep(0.2)
                saturated = measure(client, args.calls)
                load.kill()
        finally:
            server.terminate()
            server.wait(60)
    print(f"control status round trip over {args.calls} calls (cpu count {os.cpu_count()})")
    for name, r in (("idle", idle), ("saturated", saturated)):
        print(f"  {name:9s}  p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  max {r['max_ms']:6.2f} ms  "
              f"engine busy in {r['busy_fraction']:.0%} of calls")
    print(f"  saturated/idle p99: {saturated['p99_ms'] / idle['p99_ms']:.2f}x  (target: saturated p99 <= 20 ms)")


if __name__ == "__main__":
    main()
