"""The live picture of the service: a status snapshot about once a second, and its history.

Each tick reads the engine's counters (cheap attribute reads), turns counter deltas into rates,
adds latency percentiles over the last minute, the latest GPU/host telemetry and the health
summary, keeps the snapshot in a ring buffer and publishes it to event subscribers.
"""

import asyncio
import logging
import time
from collections import deque
from pathlib import Path

from appliance.control.events import EventHub

log = logging.getLogger("appliance.monitor")

WINDOW_S = 60.0  # latency percentiles and request rate cover this much recent time


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class RequestWindow:
    """Recent request latencies and counts, fed by the service as requests finish."""

    def __init__(self, window_s: float = WINDOW_S, max_samples: int = 20_000):
        self.window_s = window_s
        self._ttft: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._itl: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self._finished: deque[float] = deque(maxlen=max_samples)
        self.requests_total = 0
        self.errors_total = 0  # server errors (5xx): what on-call looks at
        self.rejected_total = 0  # refusals (4xx): bad keys, invalid bodies, rate limits

    def observe(self, ttft_s: float | None, gaps_s: list[float]) -> None:
        now = time.monotonic()
        if ttft_s is not None:
            self._ttft.append((now, ttft_s))
        self._itl.extend((now, gap) for gap in gaps_s)

    def count_response(self, status: int) -> None:
        """One API request answered; 499 (its client left) is neither refused nor failed."""
        self.requests_total += 1
        self._finished.append(time.monotonic())
        if status >= 500:
            self.errors_total += 1
        elif 400 <= status < 499:
            self.rejected_total += 1

    def summary(self) -> dict:
        since = time.monotonic() - self.window_s
        ttft = sorted(v for t, v in self._ttft if t >= since)
        itl = sorted(v for t, v in self._itl if t >= since)
        recent = sum(1 for t in self._finished if t >= since)
        return {
            "ttft_s": {"p50": percentile(ttft, 0.50), "p99": percentile(ttft, 0.99)},
            "itl_s": {"p50": percentile(itl, 0.50), "p99": percentile(itl, 0.99)},
            "requests_per_s": recent / self.window_s,
            "requests_total": self.requests_total,
            "errors": self.errors_total,
            "rejected": self.rejected_total,
        }


class Monitor:
    def __init__(self, service, tasks, telemetry, health_summary, hub: EventHub, history_s: int = 900,
                 interval_s: float = 1.0):
        self.service = service
        self.tasks = tasks
        self.telemetry = telemetry
        self.health_summary = health_summary  # () -> {"ok", "checked_at", "problems"}
        self.hub = hub
        self.interval_s = interval_s
        self.history: deque[dict] = deque(maxlen=int(history_s / interval_s))
        self._previous: tuple[float, object, str | None] | None = None  # (time, stats, model) of the last tick
        self.started = time.monotonic()

    async def run(self) -> None:
        while True:
            try:
                snapshot = self.tick()
            except Exception:  # a broken reading must not stop the dashboard for good
                log.exception("could not build a status snapshot")
            else:
                self.hub.publish("snapshot", snapshot)
            await asyncio.sleep(self.interval_s)

    def tick(self) -> dict:
        snapshot = self.snapshot(advance=True)
        self.history.append(snapshot)
        return snapshot

    def snapshots(self, seconds: float | None = None) -> list[dict]:
        if seconds is None:
            return list(self.history)
        since = time.time() - seconds
        return [s for s in self.history if s["time"] >= since]

    def snapshot(self, advance: bool = False) -> dict:
        """The picture now; `advance` makes it the baseline of the next rates (the 1 Hz tick does)."""
        service = self.service
        now = time.monotonic()
        ready, body = service.readiness()
        task = self.tasks.running()
        snapshot = {
            "time": time.time(),
            "service": {
                "state": "draining" if service.draining else service.state,
                "model": service.model_name,
                "loaded_model": service.active.name if service.active is not None else None,
                "uptime_s": round(now - self.started, 1),
                "draining": service.draining,
                "ready": ready,
                "ready_reasons": body["reasons"],
                "task": task.to_dict() if task is not None else None,
            },
            "engine": self._engine(now, advance),
        }
        reading = self.telemetry.latest if self.telemetry is not None else None
        snapshot["gpu_status"] = reading["gpu_status"] if reading else "telemetry is starting"
        snapshot["gpus"] = reading["gpus"] if reading else []
        snapshot["host"] = reading["host"] if reading else None
        snapshot["health"] = self.health_summary()
        return snapshot

    def _engine(self, now: float, advance: bool) -> dict:
        service = self.service
        stats = service.engine_stats()
        model = service.active.name if service.active is not None else None
        rates = {"prompt_tokens_per_s": 0.0, "generation_tokens_per_s": 0.0}
        if stats is not None and self._previous is not None:
            then, before, before_model = self._previous
            elapsed = now - then
            if before_model == model and elapsed > 0:  # a swap restarts the counters
                rates = {
                    "prompt_tokens_per_s": (stats.prompt_tokens_total - before.prompt_tokens_total) / elapsed,
                    "generation_tokens_per_s": (stats.generation_tokens_total - before.generation_tokens_total) / elapsed,
                }
        if stats is not None and advance:
            self._previous = (now, stats, model)
        engine = {
            "model": model,
            "waiting": stats.num_waiting if stats else 0,
            "running": stats.num_running if stats else 0,
            "kv_blocks_used": stats.kv_blocks_used if stats else 0,
            "kv_blocks_total": stats.kv_blocks_total if stats else 0,
            "kv_usage": stats.kv_usage if stats else 0.0,
            "prefix_cache_hit_rate": (stats.prefix_cache_hits / stats.prefix_cache_queries
                                      if stats and stats.prefix_cache_queries else None),
            "preemptions": stats.num_preemptions if stats else 0,
            "prompt_tokens_total": stats.prompt_tokens_total if stats else 0,
            "generation_tokens_total": stats.generation_tokens_total if stats else 0,
            "execution": stats.execution if stats else None,
            **rates,
        }
        engine.update(service.window.summary())
        return engine


class HealthSummary:
    """The last `appliance health` results in short, re-read only when health.json changes."""

    def __init__(self, state_dir: Path, load_report):
        self.path = state_dir / "health.json"
        self.load_report = load_report
        self._seen: tuple[float, dict] | None = None

    def __call__(self) -> dict:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return {"ok": None, "checked_at": None, "problems": []}
        if self._seen is None or self._seen[0] != mtime:
            report = self.load_report(self.path.parent) or {}
            problems = [f"{c['name']}: {c['message']}" for c in report.get("checks", []) if c.get("status") in ("fail", "warn")]
            self._seen = (mtime, {"ok": report.get("ok"), "checked_at": report.get("checked_at"), "problems": problems})
        return self._seen[1]
