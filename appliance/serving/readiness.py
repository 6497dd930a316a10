"""Liveness, readiness and drain: the one place that decides whether the service can take requests.

/health, /ready, systemd's watchdog and STATUS line, the control socket's status and admission all
ask this object. Readiness needs a loaded model, no drain, an engine loop that advances and a
1-token canary generation (or real tokens) at most `canary_max_age_s` old.
"""

import asyncio
import logging
import time

from appliance.config import Config
from appliance.errors import APIError
from appliance.serving.canary import FaultInjection, canary_generation
from appliance.serving.pool import ModelPool
from appliance.serving.served_model import ServedModel

log = logging.getLogger("appliance.service")


class Readiness:
    def __init__(self, config: Config, pool: ModelPool):
        self.config = config
        self.pool = pool
        self.draining = False
        self.leaving = False  # `fleet leave`: out of the gateway's rotation, still answering what arrives
        self.last_canary_ok: float | None = None  # monotonic time of the last proof of generation
        self.last_canary_error: str | None = None
        self.fault = FaultInjection(config.fault_stall_file)

    # -- liveness -------------------------------------------------------------------------------
    def engine_progressing(self, max_age_s: float | None = None) -> bool:
        """True while the serving engine's loop advanced within max_age_s (or a model is still loading).

        /health allows engine_stall_timeout_s; systemd's watchdog asks with its own period.
        """
        active = self.pool.active
        if active is None:
            return self.pool.state in ("starting", "loading")
        age = time.monotonic() - active.async_engine.loop_heartbeat
        return active.async_engine.is_alive and age < (max_age_s or self.config.engine_stall_timeout_s)

    def health(self) -> tuple[bool, dict]:
        active = self.pool.active
        if active is None:
            ok = self.pool.state != "failed"
            return ok, {"status": "ok" if ok else "failed", "state": self.pool.state, "error": self.pool.load_error}
        age = time.monotonic() - active.async_engine.loop_heartbeat
        ok = self.engine_progressing()
        body = {"status": "ok" if ok else "unhealthy", "state": self.pool.state, "engine_loop_age_s": round(age, 3)}
        if not active.async_engine.is_alive:
            body["reason"] = "the engine loop thread has died"
        elif not ok:
            body["reason"] = f"the engine loop has made no progress for {age:.1f} s"
        return ok, body

    # -- readiness ------------------------------------------------------------------------------
    def ready(self) -> tuple[bool, dict]:
        reasons = []
        state = self.pool.state
        if self.draining:
            reasons.append("draining: the service is shutting down")
        if self.leaving:
            reasons.append("leaving the fleet: the gateway sends no new requests here")
        if state in ("starting", "loading"):
            reasons.append("the model is loading")
        elif state == "failed":
            reasons.append(f"the model failed to load: {self.pool.load_error}")
        elif not self.engine_progressing():
            reasons.append("the engine loop is not making progress")
        if state == "ready":
            age = None if self.last_canary_ok is None else time.monotonic() - self.last_canary_ok
            if self.last_canary_error is not None:
                reasons.append(f"the canary generation failed: {self.last_canary_error}")
            elif age is None or age > self.config.canary_max_age_s:
                reasons.append("no canary generation has succeeded in the last minute")
        body = {"status": "ready" if not reasons else "not ready", "model": self.pool.model_name, "reasons": reasons}
        return not reasons, body

    def start_leaving(self) -> None:
        """`fleet leave`: /ready says 503 (so no balancer sends new work), requests that still come are served."""
        self.leaving = True

    def stop_leaving(self) -> None:
        self.leaving = False

    def start_drain(self) -> None:
        """From now on /ready is 503 and new requests are refused."""
        self.draining = True

    def check_draining(self) -> None:
        """Raise the 503 a new request gets while the service drains for shutdown."""
        if self.draining:
            raise APIError(503, "the service is draining for shutdown; retry on another replica or later",
                           code="draining", retry_after_s=self.config.retry_after_s)

    # -- proof of generation --------------------------------------------------------------------
    def generated(self, now: float) -> None:
        """Tokens came out of an engine: as good as a canary."""
        self.last_canary_ok = now

    def passed(self) -> None:
        """A model just passed a canary outside the loop (a hot swap's check)."""
        self.last_canary_ok, self.last_canary_error = time.monotonic(), None

    async def canary(self, served: ServedModel) -> str | None:
        """A 1-token greedy generation on `served`: None when it worked, else why not."""
        return await canary_generation(served.async_engine, self.config.canary_timeout_s)

    async def run_canary(self) -> bool:
        """The canary on the active model; its result drives /ready."""
        error = await self.canary(self.pool.active)
        if error is not None:
            self.last_canary_error = error
            log.warning("canary failed: %s", error)
            return False
        self.passed()
        return True

    async def canary_loop(self) -> None:
        """Run the canary when idle and due; watch the fault-injection switch."""
        while True:
            await asyncio.sleep(1.0)
            active = self.pool.active
            self.fault.check(active.async_engine if active is not None else None)
            if active is None or self.draining or self.fault.stalling:
                continue
            stats = active.async_engine.stats()
            idle = not active.inflight and stats.num_running == 0 and stats.num_waiting == 0
            due = self.last_canary_ok is None or time.monotonic() - self.last_canary_ok >= self.config.canary_interval_s
            if (idle and due) or self.last_canary_error is not None:
                await self.run_canary()
