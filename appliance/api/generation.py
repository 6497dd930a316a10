"""The generation every API shares: the engine requests of a plan (n choices for each prompt), their outputs
read into events.

All of a plan's engine requests are submitted together and their first outputs awaited before the
HTTP status is sent (so refusals are proper 4xx/5xx). Each output updates its Choice: the text, the
tokens with their logprobs, the counts, and the events its parser read from the text (reasoning,
content, tool calls: appliance.serving.formats); the API's formatter turns those into its answer.

A slow reader: uvicorn stops the writer while the socket is full, and the outputs the engine
keeps producing wait in that request's queue, so memory per request is bounded by its
max_tokens (at most the model's context), not by how slowly the client reads.
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from appliance.api.plan import RequestPlan
from appliance.api.sampling import Scheduling
from appliance.serving.context import RequestContext
from appliance.serving.formats.events import ContentDelta, Event, ToolCallEnd
from appliance.serving.service import Service


@dataclass(frozen=True)
class Update:
    """What one engine output added to its choice."""

    text: str  # the new text, as the engine detokenized it
    events: list[Event]  # that text read by the choice's parser (all content without one)
    logprobs: list  # SampledTokens of the new tokens, when logprobs were asked for
    finished: bool


class Choice:
    """What one engine request (one choice) has produced so far."""

    def __init__(self, index: int, prompt_index: int, parser):
        self.index = index
        self.prompt_index = prompt_index
        self.parser = parser  # a ChoiceParser, or None: the text is all content
        self.text: list[str] = []
        self.events: list[Event] = []
        self.tokens: list = []  # SampledTokens with logprobs, when asked for
        self.prompt_tokens: list = []  # the prompt's SampledTokens (the first without a logprob), for echo
        self.finish_reason: str | None = None  # the engine's: stop, length, abort
        self.stop_reason: str | int | None = None
        self.num_prompt_tokens = 0
        self.num_output_tokens = 0
        self.num_cached_tokens = 0

    @property
    def reasoning_tokens(self) -> int:
        return self.parser.reasoning_tokens if self.parser is not None else 0

    @property
    def called(self) -> bool:
        """Whether the model wrote a complete tool call."""
        return any(isinstance(e, ToolCallEnd) for e in self.events)

    def add(self, out) -> Update:
        if out.new_text:
            self.text.append(out.new_text)
        if out.logprobs:
            self.tokens.extend(out.logprobs)
        if out.prompt_logprobs:
            self.prompt_tokens = out.prompt_logprobs
        self.num_prompt_tokens = out.num_prompt_tokens
        self.num_output_tokens = out.num_output_tokens
        self.num_cached_tokens = out.num_cached_tokens
        if self.parser is None:
            events = [ContentDelta(out.new_text)] if out.new_text else []
        else:
            events = self.parser.feed(out.new_text, len(out.new_token_ids))
            if out.finished:
                events += self.parser.close()
        self.events += events
        if out.finished:
            self.finish_reason = out.finish_reason
            self.stop_reason = out.stop_reason if out.finish_reason in ("stop", "length") else None
        return Update(out.new_text, events, out.logprobs or [], out.finished)


@dataclass(frozen=True)
class TokenCounts:
    prompt: int
    completion: int
    cached: int
    reasoning: int


class Generation:
    """The engine requests behind one request plan."""

    def __init__(self, service: Service, plan: RequestPlan, ctx: RequestContext):
        self.plan = plan
        jobs = plan.jobs(service.config.retry_after_s, Scheduling(ctx.priority, ctx.key_id, ctx.share_weight))
        self.choices = [Choice(i, job.prompt_index, plan.reading.new_parser()) for i, job in enumerate(jobs)]
        self.streams = [service.engine_stream.generate(plan.served, job.prompt, job.params, f"{ctx.request_id}-{i}",
                                                       ctx, plan.param_names, plan.pictures)
                        for i, job in enumerate(jobs)]
        self._firsts: list = []

    async def start(self) -> None:
        """Submit every request and wait for its first output, so refusals become HTTP statuses."""
        try:
            if len(self.streams) == 1:
                self._firsts = [await anext(self.streams[0])]
            else:
                results = await asyncio.gather(*(anext(s) for s in self.streams), return_exceptions=True)
                errors = [r for r in results if isinstance(r, BaseException)]
                if errors:
                    raise errors[0]
                self._firsts = results
        except BaseException:
            await self.close()
            raise

    async def updates(self) -> AsyncIterator[tuple[Choice, Update]]:
        """(choice, update) pairs as the outputs come; the choice is already updated."""
        if len(self.streams) == 1:
            choice = self.choices[0]
            yield choice, choice.add(self._firsts[0])
            async for out in self.streams[0]:
                yield choice, choice.add(out)
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int):
            try:
                await queue.put((i, self._firsts[i]))
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
                yield self.choices[i], self.choices[i].add(item)
        finally:
            for t in tasks:
                t.cancel()

    async def collect(self) -> list[Choice]:
        async for _ in self.updates():
            pass
        return self.choices

    async def close(self) -> None:
        """End the engine requests (a finished one is already ended; an unfinished one is aborted)."""
        for s in self.streams:
            await s.aclose()

    def counts(self) -> TokenCounts:
        """Prompt tokens counted once per prompt (n choices share it), completions summed."""
        per_prompt: dict[int, tuple[int, int]] = {}
        for c in self.choices:
            per_prompt.setdefault(c.prompt_index, (c.num_prompt_tokens, c.num_cached_tokens))
        return TokenCounts(prompt=sum(p for p, _ in per_prompt.values()),
                           completion=sum(c.num_output_tokens for c in self.choices),
                           cached=sum(c for _, c in per_prompt.values()),
                           reasoning=sum(c.reasoning_tokens for c in self.choices))

    def finish_reason(self) -> str | None:
        """For the request log: the choices' reason, or their reasons joined; a stop to call tools is tool_calls."""
        reasons = {"tool_calls" if c.finish_reason == "stop" and c.called else c.finish_reason for c in self.choices}
        return reasons.pop() if len(reasons) == 1 else ",".join(sorted(map(str, reasons)))
