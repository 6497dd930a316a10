"""The asyncio face of the engine: one thread owns the engine and runs its step loop.

Callers on the event loop never block on a step: commands (add, abort, load...) go into a queue
the engine thread drains between steps, and each request's outputs come back through its own
asyncio.Queue. Cancelling the consumer (a client disconnect) aborts the request, which frees its
KV blocks before the next step. A request's grammar (structured output) is compiled, and its images
run through the model's processor, on a worker thread before the request reaches the engine thread
(which then finds the grammar in the compile cache).
"""

import asyncio
import concurrent.futures
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from engine.engine import Engine
from engine.outputs import EngineStats, RequestOutput
from engine.sampling_params import SamplingParams, StructuredOutput
from engine.structured_output import CompiledGrammar

IDLE_WAIT_S = 0.5  # how often an idle loop wakes up to report it is alive
PREPARE_WORKERS = 2  # threads that compile grammars and process images off the engine thread


class AsyncEngine:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._commands: deque[Callable[[], None]] = deque()
        self._wakeup = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._ids = itertools.count()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._prepare_pool = concurrent.futures.ThreadPoolExecutor(PREPARE_WORKERS, "engine-prepare")
        self.loop_heartbeat = time.monotonic()  # advanced by every loop iteration, busy or idle
        self.last_error: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stopping = True
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join()
        self._prepare_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- calls from other threads --------------------------------------------------------------
    def submit(self, fn: Callable[[Engine], Any]) -> concurrent.futures.Future:
        """Run fn(engine) on the engine thread between steps; the future holds its result.

        All torch work of an engine belongs on its thread: each thread that runs torch ops on CPU
        gets its own OpenMP team, and with more OpenMP threads than cores libgomp stops spinning
        between parallel regions, which cost a step loop fed over HTTP about 20 % of its speed."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def command():
            if not future.set_running_or_notify_cancel():
                return  # the caller gave up before it ran
            try:
                result = fn(self.engine)
            except BaseException as e:  # handed to the caller, who decides
                future.set_exception(e)
            else:
                future.set_result(result)

        self._commands.append(command)
        self._wakeup.set()
        return future

    async def call(self, fn: Callable[[Engine], Any]) -> Any:
        """submit() for the event loop: await fn(engine)'s result without blocking the loop."""
        return await asyncio.wrap_future(self.submit(fn))

    async def compile_structured_output(self, spec: StructuredOutput) -> CompiledGrammar:
        """Compile spec for the loaded model (or find it cached) on a worker thread, never the engine's.

        Raises InvalidParameter("structured_output", ...) for an invalid schema, regex or grammar."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._prepare_pool, self.engine.compile_structured_output, spec)

    async def generate(
        self, prompt: str | list[int], params: SamplingParams, request_id: str | None = None, images: tuple = ()
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's outputs; raises the engine's error if it is refused. images: PIL images, one per
        image placeholder in the prompt, for a model that takes images (the processor runs on a worker thread)."""
        request_id = request_id or f"req-{next(self._ids)}"
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), queue)
        finished = False
        try:
            if params.structured_output is not None:
                await self.compile_structured_output(params.structured_output)  # add_request finds it cached
            prepared = None
            if images:
                loop = asyncio.get_running_loop()
                prompt, prepared = await loop.run_in_executor(self._prepare_pool, self.engine.prepare_images, prompt,
                                                              list(images))
            await self.call(lambda e: e.add_request(request_id, prompt, params, images=prepared))
            while not finished:
                output = await queue.get()
                finished = output.finished
                yield output
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self._commands.append(lambda: self.engine.abort(request_id))
                self._wakeup.set()

    def stats(self) -> EngineStats:
        # Plain attribute reads; a snapshot that may straddle a step is fine for monitoring.
        return self.engine.stats()

    # -- the engine thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            self.loop_heartbeat = time.monotonic()
            while self._commands:
                self._commands.popleft()()
            if self.engine.session is None or not self.engine.has_unfinished():
                self._wakeup.wait(IDLE_WAIT_S)
                self._wakeup.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as e:  # a failing step must not kill the loop silently
                self.last_error = e
                self._fail_all(e)
                continue
            for output in outputs:
                self._deliver(output)

    def _deliver(self, output: RequestOutput) -> None:
        stream = self._streams.get(output.request_id)
        if stream is not None:
            loop, queue = stream
            loop.call_soon_threadsafe(queue.put_nowait, output)

    def _fail_all(self, error: Exception) -> None:
        """After a failed step, end every request with an abort so no client hangs."""
        for request_id in list(self.engine.sequences):
            seq = self.engine.sequences[request_id]
            self.engine.abort(request_id)
            self._deliver(
                RequestOutput(
                    request_id=request_id,
                    new_token_ids=[],
                    new_text="",
                    finished=True,
                    finish_reason="abort",
                    num_prompt_tokens=seq.num_prompt_tokens,
                    num_output_tokens=len(seq.output_token_ids),
                    num_cached_tokens=seq.num_cached_tokens,
                    stop_reason=f"engine error: {type(error).__name__}: {error}",
                )
            )
