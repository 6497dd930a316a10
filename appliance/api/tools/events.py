"""What a tool-call parser produces: content deltas and tool-call deltas, shaped as OpenAI streams them.

A call is announced by one delta carrying its index, id and function name (arguments ""), then
its arguments JSON text follows in fragments under the same index; the fragments of one call
concatenated are a JSON object. `collect` folds a list of events back into the message a
non-streaming response carries, so one parser serves both kinds of response.
"""

import secrets
from dataclasses import dataclass


def new_call_id() -> str:
    """An id in OpenAI's shape, made once per call."""
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ContentDelta:
    """Text the model wrote outside any call."""

    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """Reasoning a model wrote before its answer (appliance.api.reasoning splits it off, before any tool parser)."""

    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one call: the first for a call has its id and name, the rest argument fragments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_openai(self) -> dict:
        """The `choices[].delta.tool_calls[]` item of a chat.completion.chunk."""
        item: dict = {"index": self.index}
        function: dict = {"arguments": self.arguments}
        if self.id is not None:
            item["id"] = self.id
            item["type"] = "function"
        if self.name is not None:
            function = {"name": self.name, **function}
        item["function"] = function
        return item


Event = ContentDelta | ReasoningDelta | ToolCallDelta


@dataclass(frozen=True)
class ToolCall:
    """One complete call; `arguments` is the JSON object text, as OpenAI returns it."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict:
        """The `choices[].message.tool_calls[]` item of a chat.completion."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def collect(events: list[Event]) -> tuple[str | None, list[ToolCall]]:
    """Fold streamed events into (content, calls), as a client that accumulates deltas would.

    Content is None when the model wrote no text outside its calls (OpenAI's `content: null`).
    """
    text: list[str] = []
    calls: dict[int, list] = {}
    for event in events:
        if isinstance(event, ContentDelta):
            text.append(event.text)
        elif isinstance(event, ReasoningDelta):
            continue  # reasoning(events) has it
        elif event.index not in calls:
            calls[event.index] = [event.id, event.name, event.arguments]
        else:
            calls[event.index][2] += event.arguments
    content = "".join(text)
    return (content or None), [ToolCall(id, name, arguments) for id, name, arguments in calls.values()]


def reasoning(events: list[Event]) -> str | None:
    """The reasoning among the events, or None when the model wrote none."""
    parts = [e.text for e in events if isinstance(e, ReasoningDelta)]
    return "".join(parts) if parts else None
