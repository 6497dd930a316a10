"""The chat completions API's answer: a chat.completion, or its chunks as OpenAI streams them.

A choice's first chunk has the role; then each engine output's events become one delta: its
content, its reasoning, and one `tool_calls` entry per call it touched (the first for a call with
its id, type and name, then the arguments as they are generated; parallel calls have rising
indexes). A finished choice ends with an empty delta carrying the finish reason: `tool_calls` when
the model stopped after complete calls. With stream_options.include_usage a chunk without choices
carries the usage last.
"""

from appliance.api.formatters.base import Formatter, openai_usage
from appliance.api.generation import Choice, Generation, Update
from appliance.api.schemas import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    TokenLogprob,
    ToolCallDeltaOut,
    ToolCallOut,
    TopLogprob,
)
from appliance.serving.formats.events import (
    ContentDelta,
    Event,
    ToolCallArguments,
    ToolCallStart,
    collect,
    reasoning,
)


class ChatFormatter(Formatter):
    def __init__(self, generation: Generation, request_id: str, model: str, logprobs: int | None,
                 include_usage: bool):
        super().__init__(generation, request_id, model)
        self.top = logprobs  # None: no logprobs
        self.include_usage = include_usage
        self._started: set[int] = set()  # choices whose first chunk is out

    def body(self) -> ChatCompletion:
        choices = [ChatChoice(index=c.index, message=message(c), logprobs=self._logprobs(c.tokens),
                              finish_reason=finish_reason(c), stop_reason=c.stop_reason)
                   for c in self.generation.choices]
        return ChatCompletion(id=self.request_id, model=self.model, choices=choices,
                              usage=openai_usage(self.generation.counts()))

    def chunks(self, choice: Choice, update: Update) -> list[ChatCompletionChunk]:
        events = update.events
        if all(type(e) is ContentDelta for e in events):  # the common case: text only
            content, thought, calls = "".join(e.text for e in events), None, None
        else:
            content = "".join(e.text for e in events if isinstance(e, ContentDelta))
            thought, calls = reasoning(events), tool_call_deltas(events)
        delta = ChatDelta(content=content or None, reasoning=thought, reasoning_content=thought, tool_calls=calls or None)
        chunks = []
        first = choice.index not in self._started
        if delta.content is not None or delta.reasoning is not None or delta.tool_calls or update.logprobs or first:
            if first:
                self._started.add(choice.index)
                delta.role = "assistant"
                delta.content = delta.content or ("" if not delta.tool_calls and delta.reasoning is None else None)
            chunks.append(self._chunk(choice, delta, logprobs=self._logprobs(update.logprobs)))
        if update.finished:
            chunks.append(self._chunk(choice, ChatDelta(), finish_reason=finish_reason(choice),
                                      stop_reason=choice.stop_reason))
        return chunks

    def closing(self) -> list[ChatCompletionChunk]:
        if not self.include_usage:
            return []
        return [ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model, choices=[],
                                    usage=openai_usage(self.generation.counts()))]

    def _chunk(self, choice: Choice, delta: ChatDelta, logprobs=None, finish_reason=None,
               stop_reason=None) -> ChatCompletionChunk:
        entry = ChatChunkChoice(index=choice.index, delta=delta, logprobs=logprobs, finish_reason=finish_reason,
                                stop_reason=stop_reason)
        return ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model, choices=[entry])

    def _logprobs(self, sampled: list) -> ChatLogprobs | None:
        if self.top is None:
            return None
        content = []
        for t in sampled:
            text = self.token_text(t.token_id)
            alternatives = [TopLogprob(token=self.token_text(i), logprob=lp, bytes=list(self.token_text(i).encode()))
                            for i, lp in (t.top_logprobs or [])[:self.top]]
            content.append(TokenLogprob(token=text, logprob=t.logprob if t.logprob is not None else 0.0,
                                        bytes=list(text.encode()), top_logprobs=alternatives))
        return ChatLogprobs(content=content)


def finish_reason(choice: Choice) -> str | None:
    """As OpenAI: a model that stopped after complete calls stopped to have functions called."""
    return "tool_calls" if choice.finish_reason == "stop" and choice.called else choice.finish_reason


def message(choice: Choice) -> ChatMessage:
    if choice.parser is None:
        return ChatMessage(content="".join(choice.text))
    content, calls = collect(choice.events)
    tool_calls = [ToolCallOut(id=c.id, function={"name": c.name, "arguments": c.arguments}) for c in calls] or None
    thought = reasoning(choice.events)
    return ChatMessage(content=content, reasoning=thought, reasoning_content=thought, tool_calls=tool_calls)


def tool_call_deltas(events: list[Event]) -> list[ToolCallDeltaOut]:
    """One entry per call index among the events, in the order the calls appear."""
    entries: dict[int, dict] = {}
    for e in events:
        if isinstance(e, ToolCallStart):
            entries[e.index] = {"index": e.index, "id": e.id, "type": "function",
                                "function": {"name": e.name, "arguments": ""}}
        elif isinstance(e, ToolCallArguments):
            entry = entries.setdefault(e.index, {"index": e.index, "function": {"arguments": ""}})
            entry["function"]["arguments"] += e.text
    return [ToolCallDeltaOut(**entry) for entry in entries.values()]
