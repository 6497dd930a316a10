"""Turn engine outputs into OpenAI response objects (schemas.py): choices, chunks, logprobs, usage."""

import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.api.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    TokenLogprob,
    ToolCallDeltaOut,
    ToolCallOut,
    TopLogprob,
    Usage,
)
from appliance.api.tools.events import ContentDelta, ReasoningDelta, ToolCallDelta, collect, reasoning


class ChoiceState:
    """What one engine request (one choice) has produced so far.

    With a reasoning parser or a tool-call parser, the text also becomes events: reasoning deltas
    first (the reasoning parser splits them off), then content and tool-call deltas (`new_events`
    those of the latest output, `events` all of them).
    """

    __slots__ = ("index", "prompt_index", "text", "tokens", "prompt_tokens", "finish_reason", "stop_reason",
                 "num_prompt_tokens", "num_output_tokens", "num_cached_tokens", "started", "text_offset", "parser",
                 "reasoning", "reasoning_tokens", "events", "new_events", "stream")

    def __init__(self, index: int, prompt_index: int, parser=None, reasoning=None):
        self.index = index
        self.prompt_index = prompt_index
        self.parser = parser
        self.reasoning = reasoning  # appliance.api.reasoning.ReasoningParser, for a reasoning model's chat
        self.reasoning_tokens = 0
        self.events: list = []
        self.new_events: list = []
        self.text: list[str] = []
        self.tokens: list = []  # SampledToken with logprobs, when asked for
        self.prompt_tokens: list = []  # the prompt's SampledTokens (the first without a logprob), for echo
        self.finish_reason = None
        self.stop_reason = None
        self.num_prompt_tokens = 0
        self.num_output_tokens = 0
        self.num_cached_tokens = 0
        self.started = False  # the choice's first stream chunk is out
        self.stream = None  # the Responses API's event state (response_events.ResponseStream)
        self.text_offset = 0

    def add(self, out) -> None:
        if out.new_text:
            self.text.append(out.new_text)
        if out.logprobs:
            self.tokens.extend(out.logprobs)
        if out.prompt_logprobs:
            self.prompt_tokens = out.prompt_logprobs
        self.num_prompt_tokens = out.num_prompt_tokens
        self.num_output_tokens = out.num_output_tokens
        self.num_cached_tokens = out.num_cached_tokens
        if self.parsed:
            self.new_events = self._events(out)
            self.events += self.new_events
        if out.finished:
            self.finish_reason = out.finish_reason
            self.stop_reason = out.stop_reason if out.finish_reason in ("stop", "length") else None
            if self.finish_reason == "stop" and any(isinstance(e, ToolCallDelta) for e in self.events):
                self.finish_reason = "tool_calls"  # as OpenAI: the model stopped to have functions called


    @property
    def parsed(self) -> bool:
        """Whether the text goes through parsers (else all of it is content)."""
        return self.parser is not None or self.reasoning is not None

    def _events(self, out) -> list:
        events = [ContentDelta(out.new_text)] if out.new_text else []
        if self.reasoning is not None:
            was_reasoning = self.reasoning.state == "reasoning"  # the token that closes it counts too
            events = self.reasoning.feed(out.new_text) if out.new_text else []
            if out.finished:
                events += self.reasoning.close()
            if was_reasoning or self.reasoning.in_reasoning:
                self.reasoning_tokens += len(out.new_token_ids)
        if self.parser is None:
            return events
        content = "".join(e.text for e in events if isinstance(e, ContentDelta))
        calls = self.parser.feed(content) if content else []
        if out.finished:
            calls += self.parser.close()
        return [e for e in events if isinstance(e, ReasoningDelta)] + calls


def usage(states: list[ChoiceState]) -> Usage:
    """Prompt tokens counted once per prompt (n copies share it), completions summed."""
    per_prompt: dict[int, tuple[int, int]] = {}
    for s in states:
        per_prompt.setdefault(s.prompt_index, (s.num_prompt_tokens, s.num_cached_tokens))
    prompt = sum(p for p, _ in per_prompt.values())
    cached = sum(c for _, c in per_prompt.values())
    completion = sum(s.num_output_tokens for s in states)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 prompt_tokens_details={"cached_tokens": cached})


# -- chat ---------------------------------------------------------------------------------------
def chat_logprobs(token_text, sampled: list, top: int) -> ChatLogprobs:
    content = []
    for t in sampled:
        text = token_text(t.token_id)
        alternatives = [
            TopLogprob(token=token_text(i), logprob=lp, bytes=list(token_text(i).encode()))
            for i, lp in (t.top_logprobs or [])[:top]
        ]
        content.append(TokenLogprob(token=text, logprob=t.logprob if t.logprob is not None else 0.0,
                                    bytes=list(text.encode()), top_logprobs=alternatives))
    return ChatLogprobs(content=content)


def chat_message(state: ChoiceState) -> ChatMessage:
    if not state.parsed:
        return ChatMessage(content="".join(state.text))
    content, calls = collect(state.events)
    tool_calls = [ToolCallOut(**call.to_openai()) for call in calls] or None
    thought = reasoning(state.events)
    return ChatMessage(content=content, reasoning=thought, reasoning_content=thought, tool_calls=tool_calls)


def chat_completion(request_id: str, model: str, states: list[ChoiceState], token_text, top: int | None) -> ChatCompletion:
    choices = [
        ChatChoice(
            index=s.index,
            message=chat_message(s),
            logprobs=chat_logprobs(token_text, s.tokens, top or 0) if top is not None else None,
            finish_reason=s.finish_reason,
            stop_reason=s.stop_reason,
        )
        for s in states
    ]
    return ChatCompletion(id=request_id, model=model, choices=choices, usage=usage(states))


def chat_chunks(request_id: str, model: str, created: int, state: ChoiceState, out, token_text,
                top: int | None) -> list[ChatCompletionChunk]:
    """The chunks for one engine output: its text (none when a parser holds it back), then, when it is the
    last, a chunk with an empty delta and the finish reason, as OpenAI ends a choice."""
    def chunk(delta: ChatDelta, logprobs=None, finish_reason=None, stop_reason=None) -> ChatCompletionChunk:
        choice = ChatChunkChoice(index=state.index, delta=delta, logprobs=logprobs, finish_reason=finish_reason,
                                 stop_reason=stop_reason)
        return ChatCompletionChunk(id=request_id, created=created, model=model, choices=[choice])

    if not state.parsed:
        delta = ChatDelta(content=out.new_text or None)
    else:
        content = "".join(e.text for e in state.new_events if isinstance(e, ContentDelta))
        thought = reasoning(state.new_events)
        calls = [ToolCallDeltaOut(**e.to_openai()) for e in state.new_events if isinstance(e, ToolCallDelta)]
        delta = ChatDelta(content=content or None, reasoning=thought, reasoning_content=thought,
                          tool_calls=calls or None)
    chunks = []
    if delta.content is not None or delta.reasoning is not None or delta.tool_calls or out.logprobs \
            or not state.started:
        if not state.started:
            delta.role = "assistant"
            state.started = True
            delta.content = delta.content or ("" if not delta.tool_calls and delta.reasoning is None else None)
        logprobs = chat_logprobs(token_text, out.logprobs, top or 0) if top is not None else None
        chunks.append(chunk(delta, logprobs))
    if out.finished:
        chunks.append(chunk(ChatDelta(), finish_reason=state.finish_reason, stop_reason=state.stop_reason))
    return chunks


def chat_usage_chunk(request_id: str, model: str, created: int, states: list[ChoiceState]) -> ChatCompletionChunk:
    return ChatCompletionChunk(id=request_id, created=created, model=model, choices=[], usage=usage(states))


# -- completions --------------------------------------------------------------------------------
def completion_logprobs(token_text, sampled: list, top: int, offset: int) -> tuple[CompletionLogprobs, int]:
    lp = CompletionLogprobs()
    for t in sampled:
        text = token_text(t.token_id)
        lp.tokens.append(text)
        lp.token_logprobs.append(t.logprob)
        lp.text_offset.append(offset)
        offset += len(text)
        if t.logprob is None:  # the prompt's first token: nothing before it to predict it, as OpenAI
            lp.top_logprobs.append(None)
            continue
        alternatives = {text: t.logprob}  # the sampled token first, then the best `top`: up to top + 1, as OpenAI
        for i, value in (t.top_logprobs or [])[:top]:
            alternatives.setdefault(token_text(i), value)
        lp.top_logprobs.append(alternatives)
    return lp, offset


def echoed_logprobs(token_text, state: ChoiceState, top: int, prompt: str) -> CompletionLogprobs:
    """The prompt's tokens' logprobs, then the output's, whose offsets count from the end of the prompt's text."""
    lp = completion_logprobs(token_text, state.prompt_tokens, top, 0)[0]
    out = completion_logprobs(token_text, state.tokens, top, len(prompt))[0]
    return CompletionLogprobs(text_offset=lp.text_offset + out.text_offset,
                              token_logprobs=lp.token_logprobs + out.token_logprobs,
                              tokens=lp.tokens + out.tokens, top_logprobs=lp.top_logprobs + out.top_logprobs)


def completion(request_id: str, model: str, states: list[ChoiceState], token_text, top: int | None) -> Completion:
    choices = []
    for s in states:
        logprobs = completion_logprobs(token_text, s.tokens, top, 0)[0] if top is not None else None
        choices.append(CompletionChoice(index=s.index, text="".join(s.text), logprobs=logprobs,
                                        finish_reason=s.finish_reason, stop_reason=s.stop_reason))
    return Completion(id=request_id, model=model, choices=choices, usage=usage(states))


def completion_chunks(request_id: str, model: str, created: int, state: ChoiceState, out, token_text,
                      top: int | None) -> list[Completion]:
    logprobs = None
    if top is not None:
        logprobs, state.text_offset = completion_logprobs(token_text, out.logprobs, top, state.text_offset)
    choice = CompletionChoice(
        index=state.index, text=out.new_text, logprobs=logprobs,
        finish_reason=out.finish_reason if out.finished else None,
        stop_reason=state.stop_reason if out.finished else None,
    )
    return [Completion(id=request_id, created=created, model=model, choices=[choice])]


def echoing(prompts: list[str]) -> "Formats":
    """Completions that begin with their prompt's text (`echo`): in the body, and as each choice's first chunk."""
    def whole(request_id: str, model: str, states: list[ChoiceState], token_text, top: int | None) -> Completion:
        body = completion(request_id, model, states, token_text, top)
        for choice, state in zip(body.choices, states):
            prompt = prompts[state.prompt_index]
            choice.text = prompt + choice.text
            if top is not None:
                choice.logprobs = echoed_logprobs(token_text, state, top, prompt)
        return body

    def chunks(request_id: str, model: str, created: int, state: ChoiceState, out, token_text,
               top: int | None) -> list[Completion]:
        first = []
        if not state.started:
            state.started = True
            prompt = prompts[state.prompt_index]
            logprobs = None
            if top is not None:
                logprobs, _ = completion_logprobs(token_text, state.prompt_tokens, top, 0)
                state.text_offset = len(prompt)
            echo = CompletionChoice(index=state.index, text=prompt, logprobs=logprobs)
            first.append(Completion(id=request_id, created=created, model=model, choices=[echo]))
        return first + completion_chunks(request_id, model, created, state, out, token_text, top)

    return Formats(whole, chunks, completion_usage_chunk)


def completion_usage_chunk(request_id: str, model: str, created: int, states: list[ChoiceState]) -> Completion:
    return Completion(id=request_id, created=created, model=model, choices=[], usage=usage(states))


def now_s() -> int:
    return int(time.time())


@dataclass(frozen=True)
class Formats:
    """How one endpoint writes its answer: the whole body, an output's stream chunks, the final usage chunk."""

    whole: Callable
    chunks: Callable
    usage_chunk: Callable


CHAT = Formats(chat_completion, chat_chunks, chat_usage_chunk)
COMPLETION = Formats(completion, completion_chunks, completion_usage_chunk)
