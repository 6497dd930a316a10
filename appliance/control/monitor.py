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


class Monitor:
    def __init__(self, service, tasks, telemetry, health_summary, hub: EventHub, history_s: int = 900,
                 interval_s: float = 1.0, listeners=None):
        self.service = service
        self.tasks = tasks
        self.telemetry = telemetry
        self.health_summary = health_summary  # () -> {"ok", "checked_at", "problems"}
        self.listeners = listeners  # () -> {"http", "https", "tls": certificate, "connections", ...}
        self.hub = hub
        self.interval_s = interval_s
        self.history: deque[dict] = deque(maxlen=int(history_s / interval_s))
        self._previous: dict[str, tuple] = {}  # model → (time, stats, served model) of the last tick
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
        ready, body = service.readiness.ready()
        task = self.tasks.running()
        snapshot = {
            "time": time.time(),
            "service": {
                "state": "draining" if service.readiness.draining else service.pool.state,
                "model": service.pool.model_name,
                "loaded_model": service.pool.active.name if service.pool.active is not None else None,
                "uptime_s": round(now - self.started, 1),
                "draining": service.readiness.draining,
                "ready": ready,
                "ready_reasons": body["reasons"],
                "task": task.to_dict() if task is not None else None,
            },
        }
        engines = self._engines(now, advance)
        snapshot["engine"], snapshot["engines"] = self._engine(engines), engines
        reading = self.telemetry.latest if self.telemetry is not None else None
        snapshot["gpu_status"] = reading["gpu_status"] if reading else "telemetry is starting"
        snapshot["gpus"] = reading["gpus"] if reading else []
        snapshot["host"] = reading["host"] if reading else None
        snapshot["health"] = self.health_summary()
        snapshot["cost"] = service.cost.summary()  # overall; per model and per key: /v1/cost
        snapshot["listeners"] = self.listeners() if self.listeners is not None else None
        keys = service.keys
        snapshot["key_store"] = ({"location": keys.location, "shared": keys.shared, **keys.outage.status()}
                                 if keys is not None else None)
        return snapshot

    def _engines(self, now: float, advance: bool) -> list[dict]:
        """One entry per resident model, the default first: its queue, KV cache, rates and latencies."""
        pool = self.service.pool
        models = sorted(pool.resident.values(), key=lambda m: (m.name != pool.default, m.name))
        engines = []
        for served in models:
            stats = served.async_engine.stats()
            rates = {"prompt_tokens_per_s": 0.0, "generation_tokens_per_s": 0.0}
            before = self._previous.get(served.name)
            if before is not None and before[2] is served and now > before[0]:  # a reload restarts the counters
                then, old, _ = before
                rates = {"prompt_tokens_per_s": (stats.prompt_tokens_total - old.prompt_tokens_total) / (now - then),
                         "generation_tokens_per_s":
                             (stats.generation_tokens_total - old.generation_tokens_total) / (now - then)}
            if advance:
                self._previous[served.name] = (now, stats, served)
            engines.append({**engine_fields(served.name, stats), **rates, **served.window.summary(),
                            "default": served.name == pool.default, "pinned": served.name in pool.pinned})
        if advance:
            self._previous = {name: seen for name, seen in self._previous.items() if name in pool.resident}
        return engines

    def _engine(self, engines: list[dict]) -> dict:
        """The default model's engine with the service's own request window (the totals line)."""
        default = next((e for e in engines if e["default"]), None)
        engine = dict(default) if default is not None else {
            **engine_fields(None, None), "prompt_tokens_per_s": 0.0, "generation_tokens_per_s": 0.0}
        engine.update(self.service.window.summary())
        return engine


def engine_fields(model: str | None, stats) -> dict:
    return {
        "model": model,
        "waiting": stats.num_waiting if stats else 0,
        "running": stats.num_running if stats else 0,
        "kv_blocks_used": stats.kv_blocks_used if stats else 0,
        "kv_blocks_total": stats.kv_blocks_total if stats else 0,
        "kv_usage": stats.kv_usage if stats else 0.0,
        "state_slots_used": stats.state_slots_used if stats else 0,
        "state_slots_total": stats.state_slots_total if stats else 0,
        "prefix_cache_hit_rate": (stats.prefix_cache_hits / stats.prefix_cache_queries
                                  if stats and stats.prefix_cache_queries else None),
        "preemptions": stats.num_preemptions if stats else 0,
        "prompt_tokens_total": stats.prompt_tokens_total if stats else 0,
        "generation_tokens_total": stats.generation_tokens_total if stats else 0,
        "execution": stats.execution if stats else None,
    }


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
