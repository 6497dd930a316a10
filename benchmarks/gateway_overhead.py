"""What the fleet's gateway (smg) costs per request, against the same box reached directly, in one run.

One appliance (`appliance serve`, the model given) and one smg in front of it, as
`appliance fleet gateway` runs it. The same non-streamed 1-token chat requests, N at a time, go
straight to the box and then through the gateway; printed: requests/s and median latency of each,
the gateway's added latency, and the gateway's CPU time per request (from /proc), which bounds how
many requests per second one gateway core passes on: divide by what one box serves to estimate
how many boxes one gateway can front.

    python -m benchmarks.gateway_overhead --model ~/.cache/appliance-tests/models/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait(url: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 in {timeout_s} s")


def run_requests(base_url: str, api_key: str, total: int, concurrency: int) -> tuple[float, list[float]]:
    """(requests per second, latencies) of `total` requests, `concurrency` at a time."""
    body = {"model": "bench", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 1}

    def one(_):
        started = time.perf_counter()
        response = client.post(f"{base_url}/v1/chat/completions", json=body)
        response.raise_for_status()
        return time.perf_counter() - started

    with httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=120,
                      limits=httpx.Limits(max_connections=concurrency)) as client, \
            ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        latencies = list(pool.map(one, range(total)))
        return total / (time.perf_counter() - started), latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    from appliance.fleet.gateway_api import GatewayAPI
    from appliance.fleet.gateway_unit import GatewaySettings, smg_command
    from appliance.keys import KeyStore

    folder = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    port = free_port()
    with KeyStore(folder / "keys.db") as keys:
        _, api_key = keys.create("bench")
        _, probe_key = keys.create("probe", purpose="fleet-probe")
    box = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--no-tls", "--host", "127.0.0.1",
                            "--port", str(port), "--metrics-port", "0", "--state-dir", str(folder),
                            "--control-socket", str(folder / "control.sock"), "--model", str(args.model),
                            "--served-model-name", "bench", "--log-level", "warning"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = GatewaySettings(host="127.0.0.1", port=free_port(), metrics_port=free_port(), health_interval_s=2,
                               smg=str(Path(sys.executable).with_name("smg")))
    admin_key = secrets.token_urlsafe(24)
    gateway = subprocess.Popen(smg_command(settings, admin_key), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        direct_url = f"http://127.0.0.1:{port}"
        wait(f"{direct_url}/ready")
        wait(f"{settings.url}/health")
        with GatewayAPI(settings.url, admin_key) as api:
            api.add_worker(direct_url, probe_key, {})
            api.wait_registered(direct_url, 60)
        run_requests(direct_url, api_key, 20, args.concurrency)  # warm-up, both paths
        run_requests(settings.url, api_key, 20, args.concurrency)
        direct_rps, direct_lat = run_requests(direct_url, api_key, args.requests, args.concurrency)
        cpu_before = cpu_seconds(gateway.pid)
        gateway_rps, gateway_lat = run_requests(settings.url, api_key, args.requests, args.concurrency)
        gateway_cpu = cpu_seconds(gateway.pid) - cpu_before
    finally:
        for process in (gateway, box):
            process.send_signal(signal.SIGTERM)
        for process in (gateway, box):
            process.wait(60)
    direct_p50, gateway_p50 = statistics.median(direct_lat), statistics.median(gateway_lat)
    per_request_ms = gateway_cpu / args.requests * 1000
    print(f"{args.requests} non-streamed 1-token chat requests, {args.concurrency} at a time, model {args.model.name}")
    print(f"{'path':<10} {'req/s':>8} {'p50 ms':>8}")
    print(f"{'direct':<10} {direct_rps:>8.1f} {direct_p50 * 1000:>8.1f}")
    print(f"{'gateway':<10} {gateway_rps:>8.1f} {gateway_p50 * 1000:>8.1f}")
    print(f"gateway / direct throughput: {gateway_rps / direct_rps:.2f}x; added median latency "
          f"{(gateway_p50 - direct_p50) * 1000:.1f} ms")
    print(f"gateway CPU: {per_request_ms:.2f} ms per request -> about {1000 / per_request_ms:,.0f} requests/s per "
          "gateway core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
