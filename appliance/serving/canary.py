"""Proof that a model generates: a 1-token canary, and the switch that makes the engine hang on purpose.

The canary drives /ready (and checks a hot-swapped model before it takes traffic). The fault switch
(APPLIANCE_FAULT_STALL_ENGINE=1 or <state_dir>/fault-stall-engine) holds the engine thread still so
that tests and on-call drills can watch the systemd watchdog restart a hung service; a file per
model (<state_dir>/fault-fail-model-NAME) makes that model's requests fail before their first token,
so a drill can watch its fallback answer.
"""

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path

log = logging.getLogger("appliance.service")

FAULT_STALL_ENV = "APPLIANCE_FAULT_STALL_ENGINE"
CANARY_PROMPT = "Hello"


async def canary_generation(async_engine, timeout_s: float) -> str | None:
    """A 1-token greedy generation: None when it worked, else why not."""
    from engine import SamplingParams

    async def once():
        async for out in async_engine.generate(
            CANARY_PROMPT, SamplingParams(max_tokens=1, temperature=0.0), request_id=f"canary-{uuid.uuid4().hex[:8]}"
        ):
            if out.finished and out.finish_reason == "abort":
                raise RuntimeError(out.stop_reason or "aborted")

    try:
        await asyncio.wait_for(once(), timeout_s)
    except Exception as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return None


class FaultInjection:
    def __init__(self, switch_file: Path):
        self.switch_file = switch_file
        self._stall: asyncio.Future | None = None

    def fail_file(self, model: str) -> Path:
        """While this file exists, requests on `model` fail before their first token (fallback drills)."""
        return self.switch_file.with_name(f"fault-fail-model-{model}")

    def failing(self, model: str) -> bool:
        return self.fail_file(model).exists()

    @property
    def stalling(self) -> bool:
        return self._stall is not None

    def requested(self) -> bool:
        return os.environ.get(FAULT_STALL_ENV) == "1" or self.switch_file.exists()

    def check(self, async_engine) -> None:
        """Start holding the engine thread when the switch is on (until it is turned off)."""
        if async_engine is None or self._stall is not None or not self.requested():
            return
        log.warning("fault injection: stalling the engine loop")

        def stall(_engine):
            while self.requested():
                time.sleep(0.2)

        self._stall = asyncio.ensure_future(async_engine.call(stall))
        self._stall.add_done_callback(lambda _: setattr(self, "_stall", None))
