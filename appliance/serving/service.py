"""The serving core assembled: the model pool and the stages a request passes through.

The API routes use the stages in order (admission → render → engine stream → accounting); the
control socket and `serve` use the pool and readiness. Each piece of state has one owner here:
the pool (models, swap), readiness (drain, canary), the key store (usage).
"""

import asyncio
import time
import uuid

from appliance.config import Config
from appliance.ops.cost import BusyClock, CostCollector, CostLedger
from appliance.ops.metrics import Metrics
from appliance.ops.request_window import RequestWindow
from appliance.ops.restarts import RunMarker
from appliance.ops.tracing import Tracing
from appliance.serving.accounting import Accounting
from appliance.serving.admission import Admission
from appliance.serving.engine_stream import EngineStream
from appliance.serving.lockout import AuthLockout
from appliance.serving.pool import ModelPool
from appliance.serving.readiness import Readiness
from appliance.serving.routing import Router
from appliance.serving.served_model import drain_requests
from appliance.serving.service_metrics import ServiceCollector


class Service:
    def __init__(self, config: Config, keystore=None):
        self.config = config
        self.keys = keystore
        self.created = int(time.time())
        self.pool = ModelPool(config)
        self.metrics = Metrics(self.engines)
        self.window = RequestWindow()
        self.readiness = Readiness(config, self.pool)
        self.lockout = AuthLockout(config.auth_failures_per_minute, config.auth_lockout_s, self.metrics,
                                   shared=keystore.shared_lockouts if keystore is not None else None)
        self.router = Router(self.pool, lambda f: self.metrics.count_fallback(f.from_, f.to, f.reason))
        self.admission = Admission(keystore, self.pool, self.readiness, self.lockout, self.router)
        self.busy = BusyClock()
        self.cost = CostLedger(config.state_dir / "cost.db", config.gpu_cost_per_hour, config.currency,
                               config.reference_price_per_million)
        self.run_marker = RunMarker(config.state_dir)
        for collector in (CostCollector(self.cost), ServiceCollector(self), self.run_marker):
            self.metrics.registry.register(collector)
        self.tracing = self._tracing()
        self.engine_stream = EngineStream(config, self.pool, self.readiness, self.metrics, self.window, self.busy,
                                          self.tracing)
        self.accounting = Accounting(config, keystore, self.metrics, self.cost, self.pool.served_name)

    def _tracing(self) -> Tracing | None:
        if self.config.otlp_traces_endpoint is None:
            return None
        return Tracing(self.config.otlp_traces_endpoint, self.metrics.count_dropped_spans)

    async def start(self) -> None:
        """Load the configured model and pass a first canary."""
        self.run_marker.start()
        self.cost.start_flushing()
        await self.pool.start()
        await self.readiness.run_canary()

    async def stop(self) -> None:
        """After the drain: stop the engines, write the cost figures, send the last spans."""
        await self.pool.stop()
        await asyncio.to_thread(self.cost.close)
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)
        self.run_marker.stop()

    async def drain(self) -> int:
        """Refuse new work, let in-flight requests finish within drain_timeout_s, end the rest.

        Returns how many requests had to be ended early.
        """
        self.readiness.start_drain()
        reason = "the service is shutting down and the drain timeout ended this request"
        ended = await asyncio.gather(*(drain_requests(m, self.config.drain_timeout_s, reason) for m in self.pool.models))
        return sum(ended)

    def requests_in_flight(self) -> int:
        """Requests admitted and not yet ended, over every model (a lease covers a request from admission to
        its end; an engine request a drain is ending may outlive its lease)."""
        return sum(max(m.leases, len(m.inflight)) for m in self.pool.models)

    async def wait_idle(self, timeout_s: float, quiet_s: float = 0.25) -> int:
        """Wait until no request has been in flight for quiet_s (a request a balancer sent just before it stopped
        sending may still be on its way), at most timeout_s; how many were in flight when it began."""
        began = self.requests_in_flight()
        deadline = time.monotonic() + timeout_s
        idle_since = None
        while time.monotonic() < deadline:
            if self.requests_in_flight():
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since >= quiet_s:
                break
            await asyncio.sleep(0.05)
        return began

    def engine_stats(self):
        """The default model's engine stats (None while it is not loaded)."""
        active = self.pool.active
        return active.async_engine.stats() if active is not None else None

    def engines(self) -> list[tuple[str, object]]:
        """(model name, engine stats) of every resident model, the default first."""
        models = sorted(self.pool.resident.values(), key=lambda m: m.name != self.pool.default)
        return [(self.pool.served_name(m), m.async_engine.stats()) for m in models]

    @staticmethod
    def new_request_id(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex}"
