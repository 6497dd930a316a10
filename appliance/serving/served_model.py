"""One loaded model with its own engine thread and KV cache; the pool holds several.

A request is admitted to one ServedModel and stays with it to the end (chat template, engine,
token texts), so a swap never mixes models inside one request.
"""

import asyncio
import time
import weakref
from pathlib import Path

from appliance.ops.request_window import RequestWindow


class InFlight:
    """One engine request being consumed; the drain may end it early."""

    __slots__ = ("task", "ended_by_drain", "drain_reason")

    def __init__(self, task):
        self.task = task
        self.ended_by_drain = False
        self.drain_reason = ""


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
        self.inflight: dict[str, InFlight] = {}
        self.admitted: weakref.WeakSet = weakref.WeakSet()  # request contexts that may still use it
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
        return bool(self.inflight) or len(self.admitted) > 0

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
