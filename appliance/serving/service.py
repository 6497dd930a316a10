"""The service object behind the public API: owns the engine, admission, readiness and drain.

Route handlers call it; it never formats HTTP answers (errors leave it as APIError). Anything
that blocks (model loading, key-store SQLite, template rendering) runs off the event loop.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from appliance.serving.canary import FaultInjection, canary_generation
from appliance.config import Config
from appliance.errors import APIError, from_engine_error
from appliance.ops.metrics import Metrics
from appliance.control.monitor import RequestWindow
from appliance.ops.requestlog import log_request
from appliance.serving.served_model import InFlight, ServedModel, drain_requests

log = logging.getLogger("appliance.service")



@dataclass(eq=False)  # identity semantics: contexts live in a WeakSet
class RequestContext:
    """One API request (possibly several engine requests: n > 1, several prompts)."""

    request_id: str
    endpoint: str
    model: str
    key_id: str | None = None
    prompt_text: str | None = None  # logged only when config.log_prompts
    started: float = field(default_factory=time.monotonic)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    queue_time_s: float | None = None
    ttft_s: float | None = None
    status: str = "ok"
    served: ServedModel | None = None  # the model the request was admitted to
    accounted: bool = False  # finish() ran: usage recorded, the request log line written



class Service:
    def __init__(self, config: Config, keystore=None):
        self.config = config
        self.keys = keystore
        self.active: ServedModel | None = None
        self.retiring: list[ServedModel] = []  # swapped out, finishing their requests
        self.replaced_names: set[str] = set()  # names of swapped-out models: their replacement answers them
        self.swap = None  # the hot swap in progress (appliance.hot_swap.Swap)
        self.metrics = Metrics(self.engine_stats, lambda: self.model_name)
        self.window = RequestWindow()
        self.state = "starting"  # starting, loading, ready, failed
        self.load_error: str | None = None
        self.draining = False
        self.created = int(time.time())
        self.last_canary_ok: float | None = None  # monotonic time of the last proof of generation
        self.last_canary_error: str | None = None
        self.fault = FaultInjection(config.fault_stall_file)

    # -- the active model -----------------------------------------------------------------------
    @property
    def async_engine(self):
        return self.active.async_engine if self.active is not None else None

    @property
    def engine(self):
        return self.active.engine if self.active is not None else None

    @property
    def max_model_len(self) -> int | None:
        return self.active.max_model_len if self.active is not None else None

    @property
    def model_name(self) -> str:
        """The id clients send and responses carry."""
        return self.served_name(self.active)

    def served_name(self, served: ServedModel | None) -> str:
        if self.config.served_model_name:
            return self.config.served_model_name
        return served.name if served is not None else self.config.model_name

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the configured model (off the loop), start its engine thread, pass a first canary."""
        self.state = "loading"
        name = self.config.model_path.name if self.config.model_is_path else self.config.model
        aliases = {self.config.model, self.config.model_name}
        swapped_in = self.remembered_model()
        try:
            if swapped_in is not None:  # the configured model's names still reach its replacement
                self.replaced_names = aliases - {swapped_in}
                name, aliases, path = swapped_in, set(), self.config.models_dir / swapped_in
            else:
                path = await asyncio.to_thread(self._resolve_model_path)  # may install the default model
            self.active = await asyncio.to_thread(
                ServedModel.load, name, path, self.config.engine.to_engine_config(), aliases)
        except Exception as e:
            self.state = "failed"
            self.load_error = f"{type(e).__name__}: {e}"
            raise
        self.state = "ready"
        await self.run_canary()

    @property
    def _loaded_model_file(self):
        return self.config.state_dir / "loaded-model"

    def remember_loaded(self, name: str) -> None:
        """A hot-swapped model stays loaded across restarts (until the next swap)."""
        self._loaded_model_file.write_text(name + "\n")

    def remembered_model(self) -> str | None:
        try:
            name = self._loaded_model_file.read_text().strip()
        except OSError:
            return None
        if name and (self.config.models_dir / name / "manifest.json").exists():
            return name
        log.warning("the last hot-swapped model %r is no longer in the store; loading %s", name, self.config.model)
        return None

    def _resolve_model_path(self):
        path = self.config.model_path
        if not self.config.model_is_path and not path.exists():
            from appliance.models.default_model import MODEL_NAME, install_default_model

            if self.config.model == MODEL_NAME:
                log.info("installing the default model into %s", self.config.models_dir)
                return install_default_model(self.config.models_dir, self.config.downloads_dir)
        return path

    async def stop(self) -> None:
        for served in [self.active, *self.retiring]:
            if served is not None:
                await asyncio.to_thread(served.async_engine.shutdown)

    async def drain(self) -> int:
        """Refuse new work, let in-flight requests finish within drain_timeout_s, end the rest.

        Returns how many requests had to be ended early.
        """
        self.draining = True
        models = [m for m in (self.active, *self.retiring) if m is not None]
        return sum(await asyncio.gather(*(
            drain_requests(m, self.config.drain_timeout_s, "the service is shutting down and the drain timeout "
                                                           "ended this request") for m in models)))

    # -- health ---------------------------------------------------------------------------------
    def engine_progressing(self) -> bool:
        """True while the engine loop advances (or the model is still loading)."""
        if self.async_engine is None:
            return self.state in ("starting", "loading")
        age = time.monotonic() - self.async_engine.loop_heartbeat
        return self.async_engine.is_alive and age < self.config.engine_stall_timeout_s

    def health(self) -> tuple[bool, dict]:
        if self.async_engine is None:
            ok = self.state != "failed"
            return ok, {"status": "ok" if ok else "failed", "state": self.state, "error": self.load_error}
        age = time.monotonic() - self.async_engine.loop_heartbeat
        ok = self.engine_progressing()
        body = {"status": "ok" if ok else "unhealthy", "state": self.state, "engine_loop_age_s": round(age, 3)}
        if not self.async_engine.is_alive:
            body["reason"] = "the engine loop thread has died"
        elif not ok:
            body["reason"] = f"the engine loop has made no progress for {age:.1f} s"
        return ok, body

    def readiness(self) -> tuple[bool, dict]:
        reasons = []
        if self.draining:
            reasons.append("draining: the service is shutting down")
        if self.state in ("starting", "loading"):
            reasons.append("the model is loading")
        elif self.state == "failed":
            reasons.append(f"the model failed to load: {self.load_error}")
        elif not self.engine_progressing():
            reasons.append("the engine loop is not making progress")
        if self.state == "ready":
            age = None if self.last_canary_ok is None else time.monotonic() - self.last_canary_ok
            if self.last_canary_error is not None:
                reasons.append(f"the canary generation failed: {self.last_canary_error}")
            elif age is None or age > self.config.canary_max_age_s:
                reasons.append("no canary generation has succeeded in the last minute")
        body = {"status": "ready" if not reasons else "not ready", "model": self.model_name, "reasons": reasons}
        return not reasons, body

    async def canary(self, served: ServedModel) -> str | None:
        """A 1-token greedy generation on `served`: None when it worked, else why not."""
        return await canary_generation(served.async_engine, self.config.canary_timeout_s)

    async def run_canary(self) -> bool:
        """The canary on the active model; its result drives /ready."""
        error = await self.canary(self.active)
        if error is not None:
            self.last_canary_error = error
            log.warning("canary failed: %s", error)
            return False
        self.last_canary_ok = time.monotonic()
        self.last_canary_error = None
        return True

    async def canary_loop(self) -> None:
        """Run the canary when idle and due; watch the fault-injection switch."""
        while True:
            await asyncio.sleep(1.0)
            self.fault.check(self.async_engine)
            if self.async_engine is None or self.draining or self.fault.stalling:
                continue
            stats = self.async_engine.stats()
            idle = not self.active.inflight and stats.num_running == 0 and stats.num_waiting == 0
            due = self.last_canary_ok is None or time.monotonic() - self.last_canary_ok >= self.config.canary_interval_s
            if (idle and due) or self.last_canary_error is not None:
                await self.run_canary()

    # -- admission ------------------------------------------------------------------------------
    def check_accepting(self) -> None:
        retry = self.config.retry_after_s
        if self.draining:
            raise APIError(503, "the service is draining for shutdown; retry on another replica or later",
                           code="draining", retry_after_s=retry)
        if self.state != "ready" or self.active is None:
            message = f"no model is loaded ({self.state}); retry later"
            raise APIError(503, message, code="no_model_loaded", retry_after_s=retry)

    async def admit(self, model: str | None) -> ServedModel:
        """The model that serves a request naming `model`; waits while a hot swap must finish first.

        A request for the incoming model, or any request while a swap that cannot overlap has
        taken the old model down, queues until the swap ends instead of failing.
        """
        while True:
            swap = self.swap
            if swap is None or not swap.holds(model, self):
                break
            await swap.finished.wait()
        self.check_accepting()
        active = self.active
        if model is not None and model not in self.accepted_names(active):
            raise APIError(404, f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")
        return active

    def accepted_names(self, served: ServedModel) -> set[str]:
        """What a request's `model` may say: the model, the served name, and the models it replaced."""
        names = served.aliases | self.replaced_names
        return names | {self.config.served_model_name} if self.config.served_model_name else names

    async def authorize(self, api_key: str | None, model: str | None, ctx: RequestContext | None = None):
        """Key check (401/403), model check (404/403), limits (429). Returns the key record."""
        from appliance.keys import AuthError, RateLimited

        if self.swap is None:  # during a swap, admission waits for it instead of refusing
            self.check_accepting()
        if self.keys is None:
            raise APIError(503, "the key store is not available", retry_after_s=self.config.retry_after_s)
        try:
            record = await asyncio.to_thread(self.keys.authenticate, api_key)
        except AuthError as e:
            raise APIError(e.status, e.message, code="invalid_api_key" if e.status == 401 else "key_not_active") from None
        if ctx is not None:
            ctx.key_id = record.id  # a refusal below (model, rate limit) is logged with the key's id
        if model is not None:
            served = await self.admit(model)
            try:
                await asyncio.to_thread(self.keys.check_request, record, self.served_name(served))
            except AuthError as e:
                raise APIError(e.status, e.message, param="model", code="model_not_allowed") from None
            except RateLimited as e:
                raise APIError(429, e.message, code="rate_limit_exceeded", retry_after_s=e.retry_after_s) from None
            if ctx is not None:
                ctx.served = served
                served.admitted.add(ctx)
        return record

    # -- generation -----------------------------------------------------------------------------
    async def render_chat(self, ctx: RequestContext, messages: list[dict]) -> str:
        tokenizer = ctx.served.engine.tokenizer
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise APIError(400, "this model has no chat template; use /v1/completions", param="messages")

        def render():
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

        try:
            return await asyncio.to_thread(render)
        except Exception as e:  # jinja raise_exception (role order...), template errors
            raise APIError(400, f"the messages do not fit the model's chat template: {e}", param="messages") from None

    async def generate(self, prompt, params, request_id: str, ctx: RequestContext,
                       prompt_param: str = "prompt") -> AsyncIterator:
        """Stream one engine request's outputs on the request's model; errors come out as APIError.

        Ends with a 503 APIError when a drain (shutdown, or a hot swap's) cut the request short.
        """
        served = ctx.served
        self.check_accepting()
        if served.retired:
            raise APIError(503, f"the model {served.name} was swapped out before this request started; retry",
                           code="model_swapped", retry_after_s=1)
        handle = InFlight(asyncio.current_task())
        served.inflight[request_id] = handle
        start = time.monotonic()
        last = None
        gaps: list[float] = []
        ttft = queue = None
        finish = None
        try:
            async for out in served.async_engine.generate(prompt, params, request_id=request_id):
                now = time.monotonic()
                if last is None:
                    ttft = now - start
                    if out.first_scheduled_time is not None:
                        queue = max(0.0, out.first_scheduled_time - out.arrival_time)
                else:
                    gaps.append(now - last)
                last = now
                self.last_canary_ok = now  # tokens flowing prove the engine generates
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
        except APIError:
            raise
        except Exception as e:
            from engine.errors import EngineError

            if isinstance(e, EngineError):
                raise from_engine_error(e, self.config.retry_after_s, prompt_param) from None
            raise
        finally:
            served.inflight.pop(request_id, None)
            if last is not None:
                elapsed = time.monotonic() - start
                self.metrics.observe_request(self.served_name(served), finish or "abort", queue, ttft, elapsed, gaps)
                self.window.observe(ttft, gaps)
                if ctx.ttft_s is None:
                    ctx.ttft_s, ctx.queue_time_s = ttft, queue

    def finish(self, ctx: RequestContext) -> None:
        """Account one API request: key usage (memory), per-key metrics, the request log line."""
        ctx.accounted = True
        if ctx.key_id is not None:
            if self.keys is not None:
                self.keys.record_usage(ctx.key_id, ctx.prompt_tokens, ctx.completion_tokens)
            self.metrics.observe_key(ctx.key_id, ctx.prompt_tokens, ctx.completion_tokens)
        log_request(
            request_id=ctx.request_id, key_id=ctx.key_id, model=ctx.model, endpoint=ctx.endpoint,
            status=ctx.status, prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens,
            queue_time_s=ctx.queue_time_s, ttft_s=ctx.ttft_s, total_time_s=time.monotonic() - ctx.started,
            finish_reason=ctx.finish_reason, prompt=ctx.prompt_text if self.config.log_prompts else None,
        )

    async def embed(self, ctx: RequestContext, inputs: list) -> tuple[list[list[float]], int]:
        """Mean-pooled embeddings of strings or token-id lists; returns (vectors, prompt tokens)."""
        limit = ctx.served.max_model_len

        def run(engine):
            batch = [engine.tokenizer.encode(x, add_special_tokens=False) if isinstance(x, str) else list(x) for x in inputs]
            vocab = engine.session.loaded.config.vocab_size
            for ids in batch:
                if not ids:
                    raise APIError(400, "an input is empty", param="input")
                if len(ids) > limit:
                    raise APIError(400, f"an input has {len(ids)} tokens but the model's context is {limit} tokens",
                                   param="input", code="context_length_exceeded")
                if any(not 0 <= t < vocab for t in ids):
                    raise APIError(400, f"token ids must be integers in [0, {vocab})", param="input")
            return engine.embed(batch), sum(len(ids) for ids in batch)

        try:
            return await ctx.served.async_engine.call(run)
        except (APIError, asyncio.CancelledError):
            raise
        except Exception as e:
            from engine.errors import InvalidParameter, PromptTooLong

            if isinstance(e, (InvalidParameter, PromptTooLong)):
                raise from_engine_error(e, self.config.retry_after_s, "input") from None
            raise APIError(400, f"this model cannot compute embeddings: {type(e).__name__}: {e}",
                           param="model", code="embeddings_unsupported") from None

    def new_request_id(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex}"

    def engine_stats(self):
        return self.async_engine.stats() if self.async_engine is not None else None

