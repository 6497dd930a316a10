"""The serving core assembled: the model pool and the stages a request passes through.

The API routes use the stages in order (admission → render → engine stream → accounting); the
control socket and `serve` use the pool and readiness. Each piece of state has one owner here:
the pool (models, swap), readiness (drain, canary), the key store (usage).
"""

import asyncio
import time
import uuid

from appliance.config import Config
from appliance.ops.metrics import Metrics
from appliance.ops.request_window import RequestWindow
from appliance.serving.accounting import Accounting
from appliance.serving.admission import Admission
from appliance.serving.engine_stream import EngineStream
from appliance.serving.pool import ModelPool
from appliance.serving.readiness import Readiness
from appliance.serving.served_model import drain_requests


class Service:
    def __init__(self, config: Config, keystore=None):
        self.config = config
        self.keys = keystore
        self.created = int(time.time())
        self.pool = ModelPool(config)
        self.metrics = Metrics(self.engine_stats, lambda: self.pool.model_name)
        self.window = RequestWindow()
        self.readiness = Readiness(config, self.pool)
        self.admission = Admission(keystore, self.pool, self.readiness)
        self.engine_stream = EngineStream(config, self.pool, self.readiness, self.metrics, self.window)
        self.accounting = Accounting(config, keystore, self.metrics)

    async def start(self) -> None:
        """Load the configured model and pass a first canary."""
        await self.pool.start()
        await self.readiness.run_canary()

    async def drain(self) -> int:
        """Refuse new work, let in-flight requests finish within drain_timeout_s, end the rest.

        Returns how many requests had to be ended early.
        """
        self.readiness.start_drain()
        reason = "the service is shutting down and the drain timeout ended this request"
        ended = await asyncio.gather(*(drain_requests(m, self.config.drain_timeout_s, reason) for m in self.pool.models))
        return sum(ended)

    def engine_stats(self):
        active = self.pool.active
        return active.async_engine.stats() if active is not None else None

    @staticmethod
    def new_request_id(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex}"
