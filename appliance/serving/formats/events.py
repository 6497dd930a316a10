"""What reading a model's output produces, whatever its format: the events every API's formatter consumes.

Text outside calls is content; a reasoning model's thinking is reasoning; a tool call is announced
once (its index, id and function name), then its arguments' JSON text follows in fragments as the
model writes it, and its end says the object closed and parsed. A call that never ends (the output
was cut by max_tokens) is incomplete: `collect` leaves it out, and none of its text is content.
"""

import secrets
from dataclasses import dataclass


def new_call_id() -> str:
    """An id in OpenAI's shape, made once per call."""
    return "call_" + secrets.token_hex(12)


@dataclass(frozen=True)
class ContentDelta:
    """Text the model wrote for the user, outside any call."""

    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    """Reasoning a model wrote before (or between) its answers."""

    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """A call begins: its place among the calls of this output, its id and its function."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArguments:
    """A fragment of the arguments' JSON text of call `index`, as generated."""

    index: int
    text: str


@dataclass(frozen=True)
class ToolCallEnd:
    """Call `index` is complete: its arguments are one JSON object."""

    index: int


Event = ContentDelta | ReasoningDelta | ToolCallStart | ToolCallArguments | ToolCallEnd
ToolCallEvent = ToolCallStart | ToolCallArguments | ToolCallEnd


@dataclass(frozen=True)
class ToolCall:
    """One complete call; `arguments` is the JSON object text, as OpenAI returns it."""

    id: str
    name: str
    arguments: str


def collect(events: list[Event]) -> tuple[str | None, list[ToolCall]]:
    """Fold events into (content, complete calls), as a client that accumulates deltas would.

    Content is None when the model wrote no text outside its calls (OpenAI's `content: null`).
    """
    text: list[str] = []
    calls: dict[int, list] = {}
    ended: set[int] = set()
    for event in events:
        if isinstance(event, ContentDelta):
            text.append(event.text)
        elif isinstance(event, ToolCallStart):
            calls[event.index] = [event.id, event.name, ""]
        elif isinstance(event, ToolCallArguments):
            calls[event.index][2] += event.text
        elif isinstance(event, ToolCallEnd):
            ended.add(event.index)
    content = "".join(text)
    return (content or None), [ToolCall(*calls[i]) for i in sorted(ended)]


def reasoning(events: list[Event]) -> str | None:
    """The reasoning among the events, or None when the model wrote none."""
    parts = [e.text for e in events if isinstance(e, ReasoningDelta)]
    return "".join(parts) if parts else None
