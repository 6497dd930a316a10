"""The engine requests behind one API request, run to a JSON answer or an SSE stream.

n choices for each prompt become engine requests submitted together; their first outputs are
awaited before the HTTP status is sent (so refusals are proper 4xx/5xx), then the outputs are
merged, formatted (formatting.py) and accounted once (usage, per-key metrics, the request log).
A client that leaves cancels the work, which aborts its engine requests and frees their blocks.

A slow reader: uvicorn stops the writer while the socket is full, and the outputs the engine
keeps producing wait in that request's queue, so memory per request is bounded by its
max_tokens (at most the model's context), not by how slowly the client reads.
"""

import asyncio
import json
from collections.abc import AsyncIterator

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from appliance.api import formatting as fmt
from appliance.errors import APIError
from appliance.api.response_counter import mark_stream_failed
from appliance.serving.context import RequestContext
from appliance.serving.service import Service

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Generation:
    """The engine requests behind one API request: n choices for each prompt."""

    def __init__(self, service: Service, ctx: RequestContext, jobs: list[tuple[int, object, object]],
                 param_names: dict[str, str], parser=None, reasoning=None):
        self.service = service
        self.ctx = ctx
        self.states = [fmt.ChoiceState(i, prompt_index, parser() if parser is not None else None,
                                       reasoning() if reasoning is not None else None)
                       for i, (prompt_index, _, _) in enumerate(jobs)]
        self.streams = [
            service.engine_stream.generate(prompt, params, f"{ctx.request_id}-{i}", ctx, param_names)
            for i, (_, prompt, params) in enumerate(jobs)
        ]
        self.firsts: list = []

    async def start(self) -> None:
        """Submit every request and wait for its first output, so refusals become HTTP statuses."""
        try:
            if len(self.streams) == 1:
                self.firsts = [await anext(self.streams[0])]
            else:
                results = await asyncio.gather(*(anext(s) for s in self.streams), return_exceptions=True)
                errors = [r for r in results if isinstance(r, BaseException)]
                if errors:
                    raise errors[0]
                self.firsts = results
        except BaseException:
            await self.close()
            raise

    async def outputs(self) -> AsyncIterator[tuple[fmt.ChoiceState, object]]:
        """(choice, output) pairs as they come; the choice's state is already updated."""
        if len(self.streams) == 1:
            state, stream = self.states[0], self.streams[0]
            out = self.firsts[0]
            state.add(out)
            yield state, out
            async for out in stream:
                state.add(out)
                yield state, out
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int):
            try:
                await queue.put((i, self.firsts[i]))
                async for out in self.streams[i]:
                    await queue.put((i, out))
            except BaseException as e:  # handed to the consumer
                await queue.put((i, e))
                return
            await queue.put((i, None))

        tasks = [asyncio.ensure_future(pump(i)) for i in range(len(self.streams))]
        try:
            remaining = len(tasks)
            while remaining:
                i, item = await queue.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                self.states[i].add(item)
                yield self.states[i], item
        finally:
            for t in tasks:
                t.cancel()

    async def collect(self) -> list[fmt.ChoiceState]:
        async for _ in self.outputs():
            pass
        return self.states

    async def close(self) -> None:
        for s in self.streams:
            await s.aclose()

    def account(self) -> None:
        usage = fmt.usage(self.states)
        self.ctx.prompt_tokens, self.ctx.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        reasons = {s.finish_reason for s in self.states}
        self.ctx.finish_reason = reasons.pop() if len(reasons) == 1 else ",".join(sorted(map(str, reasons)))


def sse(obj: BaseModel | dict) -> str:
    body = obj.model_dump_json() if isinstance(obj, BaseModel) else json.dumps(obj)
    return f"data: {body}\n\n"


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


async def respond(request: Request, gen: Generation, stream: bool, include_usage: bool, whole, chunks,
                  usage_chunk) -> Response:
    """Run a started Generation to a JSON body or an SSE stream; account for it either way."""
    service, ctx = gen.service, gen.ctx
    created = fmt.now_s()
    if not stream:
        try:
            states = await until_disconnect(request, gen.collect())
        except APIError as e:
            ctx.status = f"error {e.status}"
            raise
        except ClientGone:
            ctx.status = "disconnected"
            return Response(status_code=499)  # nobody reads it; as nginx logs a client that left
        finally:
            gen.account()
            service.accounting.finish(ctx)
        return Response(whole(states).model_dump_json(), media_type="application/json")

    async def events():
        try:
            async for state, out in gen.outputs():
                for body in chunks(created, state, out):
                    yield sse(body)
            if include_usage:
                yield sse(usage_chunk(created, gen.states))
        except APIError as e:
            ctx.status = f"error {e.status}"
            mark_stream_failed(request, e.status)
            yield sse(e.body())
        except BaseException:
            ctx.status = "disconnected"
            raise
        finally:
            await gen.close()
            gen.account()
            service.accounting.finish(ctx)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)


async def generate_response(request: Request, ctx: RequestContext, jobs: list, param_names: dict[str, str], req,
                            top: int | None, formats: fmt.Formats, parser=None, reasoning=None) -> Response:
    """The end every generating route shares: submit the jobs, then answer in JSON or SSE.

    `parser`, when given, makes each choice's tool-call parser (the text becomes content and tool_calls);
    `reasoning` each choice's reasoning parser (a reasoning model's text: reasoning, then the answer).
    """
    service: Service = request.app.state.service
    gen = Generation(service, ctx, jobs, param_names, parser, reasoning)
    await gen.start()
    model, rid, text = service.pool.served_name(ctx.served), ctx.request_id, ctx.served.token_text
    return await respond(
        request, gen, req.stream, bool(req.stream_options and req.stream_options.include_usage),
        whole=lambda states: formats.whole(rid, model, states, text, top),
        chunks=lambda created, state, out: formats.chunks(rid, model, created, state, out, text, top),
        usage_chunk=lambda created, states: formats.usage_chunk(rid, model, created, states),
    )
