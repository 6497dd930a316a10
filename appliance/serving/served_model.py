"""One loaded model with its own engine thread and KV cache; the pool holds several.

A request is admitted to one ServedModel and stays with it to the end (chat template, engine,
token texts), so a swap never mixes models inside one request. Its hold on the model is a lease,
taken at admission and released explicitly when the request ends, however it ends; a drain waits
for the leases, and idle eviction passes a leased model by. What is true of the model itself (its
output format, its tokens' texts) is computed once, here.
"""

import asyncio
import time
from functools import cached_property
from pathlib import Path

from appliance.ops.request_window import RequestWindow
from appliance.serving.formats import OutputFormat, output_format


class InFlight:
    """One engine request being consumed; the drain may end it early."""

    __slots__ = ("task", "ended_by_drain", "drain_reason")

    def __init__(self, task):
        self.task = task
        self.ended_by_drain = False
        self.drain_reason = ""


class ModelLease:
    """A request's hold on the model it was admitted to. `release` is idempotent: the request's end calls it
    once whatever happened, and an early refusal may have called it already."""

    __slots__ = ("served", "released")

    def __init__(self, served: "ServedModel"):
        self.served = served
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.served.end_lease(self)


class ServedModel:
    def __init__(self, name: str, path: Path, aliases: set[str], engine, async_engine):
        self.name = name  # the store or folder name
        self.path = path
        self.aliases = aliases | {name}  # what a request's `model` may say for it
        self.engine = engine
        self.async_engine = async_engine
        self.max_model_len: int = engine.max_model_len
        self.loaded_at = time.time()
        self.last_used = time.monotonic()  # the last request admitted: idle models are evicted first
        self.window = RequestWindow()  # this model's latencies, for its engine panel
        self.inflight: dict[str, InFlight] = {}  # engine requests being consumed
        self._leases: set[ModelLease] = set()  # requests admitted to it that have not ended
        self.retired = False  # swapped out: no new engine requests
        self._token_text: dict[int, str] = {}

    @classmethod
    def load(cls, name: str, path: Path, engine_config, aliases: set[str] = frozenset()) -> "ServedModel":
        """Start the engine thread and load the weights on it (blocking: run it off the event loop)."""
        from engine import AsyncEngine, Engine

        engine = Engine(engine_config)
        async_engine = AsyncEngine(engine)
        async_engine.start()
        try:
            async_engine.submit(lambda e: e.load_model(path)).result()
        except BaseException:
            async_engine.shutdown()
            raise
        return cls(name, Path(path), set(aliases), engine, async_engine)

    @property
    def busy(self) -> bool:
        return bool(self.inflight) or bool(self._leases)

    @property
    def leases(self) -> int:
        """How many admitted requests hold the model now."""
        return len(self._leases)

    def lease(self) -> ModelLease:
        """A request admitted to the model: it is in use from now until the lease is released."""
        lease = ModelLease(self)
        self._leases.add(lease)
        self.last_used = time.monotonic()
        return lease

    def end_lease(self, lease: ModelLease) -> None:
        self._leases.discard(lease)

    def track(self, request_id: str, handle: InFlight) -> None:
        """An engine request being consumed (a drain may end it)."""
        self.inflight[request_id] = handle

    def untrack(self, request_id: str) -> None:
        self.inflight.pop(request_id, None)

    @cached_property
    def output_format(self) -> OutputFormat:
        """How the model is shown tools and how its output is read (appliance.serving.formats)."""
        return output_format(self.engine.tokenizer)

    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            tokenizer = self.engine.tokenizer
            text = tokenizer.decode([token_id]) if tokenizer else str(token_id)
            if len(self._token_text) < 100_000:
                self._token_text[token_id] = text
        return text

    def retire(self) -> None:
        """No new engine requests from now on (a swap replaced this model)."""
        self.retired = True

    def stop(self) -> None:
        """Stop the engine thread and drop the weights (blocking)."""
        self.async_engine.shutdown()
        for request_id in list(self.engine.sequences):  # ended by a drain; the thread is gone now
            self.engine.abort(request_id)
        self.engine.unload_model()


async def drain_requests(served: ServedModel, timeout_s: float, reason: str, admitted: bool = False) -> int:
    """Let a model's in-flight requests finish within timeout_s, then end the rest with `reason`.

    With `admitted`, also wait for requests admitted to the model that have not reached the engine
    yet (a hot swap; at shutdown those are refused anyway). Returns how many were ended early.
    """
    deadline = time.monotonic() + timeout_s
    while (served.busy if admitted else served.inflight) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    leftovers = list(served.inflight.values())
    for handle in leftovers:
        handle.ended_by_drain, handle.drain_reason = True, reason
        if handle.task is not None:
            handle.task.cancel()
    unwind = time.monotonic() + 5.0
    while served.inflight and time.monotonic() < unwind:
        await asyncio.sleep(0.02)
    return len(leftovers)
