"""Generation on an engine: one engine request's outputs, timed for the metrics, the cost and the trace, ended
cleanly by a drain."""

import asyncio
import time
from collections.abc import AsyncIterator

from appliance.config import Config
from appliance.errors import APIError, engine_errors
from appliance.ops.cost import BusyClock
from appliance.ops.metrics import Metrics
from appliance.ops.request_window import RequestWindow
from appliance.ops.tracing import EngineTimes, Tracing
from appliance.serving.context import RequestContext
from appliance.serving.pool import ModelPool
from appliance.serving.readiness import Readiness
from appliance.serving.served_model import InFlight, ServedModel


class EngineStream:
    def __init__(self, config: Config, pool: ModelPool, readiness: Readiness, metrics: Metrics, window: RequestWindow,
                 busy: BusyClock, tracing: Tracing | None = None):
        self.config = config
        self.pool = pool
        self.readiness = readiness
        self.metrics = metrics
        self.window = window
        self.busy = busy  # the request's share of the box's busy time, for its cost
        self.tracing = tracing

    async def generate(self, served: ServedModel, prompt, params, request_id: str, ctx: RequestContext,
                       param_names: dict[str, str] | None = None, images: tuple = ()) -> AsyncIterator:
        """Stream one engine request's outputs on the model the request was admitted to (with the prompt's images,
        PIL images, for a model that takes them); errors come out as APIError.

        Ends with a 503 APIError when a drain (shutdown, or a hot swap's) cut the request short.
        `param_names` maps the engine's parameter names to the request's fields for its 400s.
        """
        self.readiness.check_draining()
        if self.readiness.fault.failing(served.name):
            raise APIError(500, f"fault injection: {served.name} fails before its first token "
                                f"(remove {self.readiness.fault.fail_file(served.name)})", code="engine_error")
        if served.retired:
            raise APIError(503, f"the model {served.name} was swapped out before this request started; retry",
                           code="model_swapped", retry_after_s=1)
        handle = InFlight(asyncio.current_task())
        served.track(request_id, handle)
        start = time.monotonic()
        last = None
        gaps: list[float] = []
        ttft = queue = None
        finish = None
        first = out = None
        busy = self.busy.start()
        try:
            with engine_errors(self.config.retry_after_s, param_names):
                async for out in served.async_engine.generate(prompt, params, request_id=request_id, images=images):
                    now = time.monotonic()
                    if last is None:
                        first, ttft = out, now - start
                        if out.first_scheduled_time is not None:
                            queue = max(0.0, out.first_scheduled_time - out.arrival_time)
                    else:
                        gaps.append(now - last)
                    last = now
                    self.readiness.generated(now)
                    if out.finished:
                        finish = out.finish_reason
                    yield out
                    handle.task = asyncio.current_task()
                    if handle.ended_by_drain:  # the drain's cancel may have hit another task
                        raise asyncio.CancelledError
        except asyncio.CancelledError:
            if not handle.ended_by_drain:
                raise
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()
            finish = "abort"
            raise APIError(503, handle.drain_reason, code="draining", retry_after_s=self.config.retry_after_s) from None
        finally:
            served.untrack(request_id)
            ctx.add_busy(self.busy.end(busy))
            if ctx.span is not None and self.tracing is not None:
                self.tracing.engine_request(ctx.span, request_id, params, EngineTimes(
                    first.arrival_time if first else None, first.first_scheduled_time if first else None,
                    start + ttft if ttft is not None else None, last, out.num_output_tokens if out else 0))
            if last is not None:
                elapsed = time.monotonic() - start
                self.metrics.observe_request(self.pool.served_name(served), finish or "abort", queue, ttft, elapsed, gaps,
                                             params.priority)
                self.window.observe(ttft, gaps)
                served.window.observe(ttft, gaps)
                ctx.first_token(ttft, queue)
