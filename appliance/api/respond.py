"""The answer to a started generation, JSON or SSE, and the request's end: exactly once, however it ends
(finished, failed, the client gone, a stream never started), its engine requests are closed, it is
accounted, and its lease on the model is released.

A client that leaves cancels the work, which aborts its engine requests and frees their blocks.
"""

import asyncio
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from appliance.api.formatters.base import Formatter
from appliance.api.generation import Generation
from appliance.api.response_counter import mark_stream_failed
from appliance.errors import APIError
from appliance.serving.context import RequestContext
from appliance.serving.service import Service

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class RequestEnd:
    """The last stage of a generating request, run once: close, count, account, release."""

    def __init__(self, service: Service, ctx: RequestContext, generation: Generation):
        self.service = service
        self.ctx = ctx
        self.generation = generation
        self.ended = False

    async def __call__(self, status: str | None = None) -> None:
        """`status`: how it ended when not well ("error 503", "disconnected"), unless said already."""
        if self.ended:
            return
        self.ended = True
        ctx, generation = self.ctx, self.generation
        if status is not None and ctx.status == "ok":
            ctx.ended(status)
        try:
            await generation.close()
        finally:
            counts = generation.counts()
            ctx.counted(counts.prompt, counts.completion, generation.finish_reason())
            self.service.accounting.finish(ctx)
            generation.plan.lease.release()


async def until_disconnect(request: Request, work):
    """Run `work`; if the client goes away first, cancel it (which aborts its engine requests)."""
    task = asyncio.ensure_future(work)

    async def disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise ClientGone()
    return task.result()


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


class GenerationStream(StreamingResponse):
    """The SSE of one generation. Its end runs when the response is over, whatever happened to it: a generator
    that was never started, or was abandoned when the client left, runs no `finally` of its own."""

    def __init__(self, content, end: RequestEnd):
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self.end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            await self.end("disconnected")  # a no-op when the stream ended it


async def respond(request: Request, service: Service, ctx: RequestContext, generation: Generation,
                  formatter: Formatter, keep: Callable[[], Awaitable[None]] | None = None) -> Response:
    """Run a started generation to a JSON body or an SSE stream, and end the request either way. `keep`: what the
    API keeps of an answer that finished (a stored response), run after its end."""
    end = RequestEnd(service, ctx, generation)
    if not generation.plan.ask.stream:
        try:
            await until_disconnect(request, generation.collect())
        except APIError as e:
            await end(f"error {e.status}")
            raise
        except ClientGone:
            await end("disconnected")
            return Response(status_code=499)  # nobody reads it; as nginx logs a client that left
        except BaseException:
            await end("disconnected")
            raise
        await end()
        if keep is not None:
            await keep()
        return Response(formatter.body().model_dump_json(), media_type="application/json")

    async def events():
        try:
            async for choice, update in generation.updates():
                for event in formatter.chunks(choice, update):
                    yield formatter.frame(event)
            for event in formatter.closing():
                yield formatter.frame(event)
        except APIError as e:
            mark_stream_failed(request, e.status)
            await end(f"error {e.status}")
            for event in formatter.failure(e):
                yield formatter.frame(event)
        except BaseException:
            await end("disconnected")
            raise
        else:
            await end()
            if keep is not None:
                await keep()
        if formatter.done is not None:
            yield formatter.done

    return GenerationStream(events(), end)
