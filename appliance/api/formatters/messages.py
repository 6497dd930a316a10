"""The Messages API's answer: a Message (thinking, text and tool_use blocks), or Anthropic's event stream.

The stream: message_start (the message, its content empty) and a ping; then for each block a
content_block_start, its deltas (thinking_delta, text_delta, input_json_delta: a call's arguments
as they are generated) and a content_block_stop; then message_delta with the stop reason and the
output tokens, and message_stop. Each event is framed `event: <type>` and `data: <json>`; there is
no [DONE]. stop_reason: tool_use when the model stopped after complete calls, max_tokens when cut
(a call cut off is left out of the Message; in the stream its block just stops), stop_sequence
with the stop sequence, else end_turn.
"""

import json

from appliance.api.formatters.base import Formatter
from appliance.api.generation import Choice, Update
from appliance.api.schemas.messages import Message, MessageUsage, TextOut, ThinkingOut, ToolUseOut
from appliance.errors import APIError
from appliance.serving.formats.events import (
    ContentDelta,
    ReasoningDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
    collect,
    reasoning,
)


class MessagesFormatter(Formatter):
    done = None

    def __init__(self, generation, request_id: str, model: str):
        super().__init__(generation, request_id, model)
        self.started = False  # message_start is out
        self.blocks = 0  # blocks started so far
        self.open: str | None = None  # the type of the block being written

    def body(self) -> Message:
        choice = self.generation.choices[0]
        content, calls = collect(choice.events)
        thought = reasoning(choice.events)
        blocks = [ThinkingOut(thinking=thought)] if thought else []
        if content:
            blocks.append(TextOut(text=content))
        blocks += [ToolUseOut(id=c.id, name=c.name, input=json.loads(c.arguments)) for c in calls]
        counts = self.generation.counts()
        return Message(id=self.request_id, model=self.model, content=blocks, stop_reason=stop_reason(choice),
                       stop_sequence=stop_sequence(choice),
                       usage=MessageUsage(input_tokens=counts.prompt, output_tokens=counts.completion,
                                          cache_read_input_tokens=counts.cached))

    def chunks(self, choice: Choice, update: Update) -> list[dict]:
        events = []
        if not self.started:
            self.started = True
            start = self.body().model_dump()
            start.update(content=[], stop_reason=None, stop_sequence=None)
            start["usage"]["output_tokens"] = 0
            events += [{"type": "message_start", "message": start}, {"type": "ping"}]
        for e in update.events:
            if isinstance(e, ReasoningDelta):
                events += self._write("thinking", {"type": "thinking", "thinking": "", "signature": ""},
                                      {"type": "thinking_delta", "thinking": e.text})
            elif isinstance(e, ContentDelta) and e.text:
                events += self._write("text", {"type": "text", "text": ""}, {"type": "text_delta", "text": e.text})
            elif isinstance(e, ToolCallStart):
                events += self._close() + self._start("tool_use", {"type": "tool_use", "id": e.id, "name": e.name,
                                                                   "input": {}})
            elif isinstance(e, ToolCallArguments):
                events.append(self._delta({"type": "input_json_delta", "partial_json": e.text}))
            elif isinstance(e, ToolCallEnd):
                events += self._close()
        if update.finished:
            events += self._close()
            events.append({"type": "message_delta",
                           "delta": {"stop_reason": stop_reason(choice), "stop_sequence": stop_sequence(choice)},
                           "usage": {"output_tokens": choice.num_output_tokens}})
            events.append({"type": "message_stop"})
        return events

    def failure(self, error: APIError) -> list[dict]:
        return [error.anthropic_body()]

    def frame(self, event: dict) -> str:
        return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"

    def _write(self, kind: str, block: dict, delta: dict) -> list[dict]:
        """A delta of a thinking or text block, opening the block first if another one is being written."""
        events = [] if self.open == kind else self._close() + self._start(kind, block)
        return events + [self._delta(delta)]

    def _start(self, kind: str, block: dict) -> list[dict]:
        self.open = kind
        self.blocks += 1
        return [{"type": "content_block_start", "index": self.blocks - 1, "content_block": block}]

    def _delta(self, delta: dict) -> dict:
        return {"type": "content_block_delta", "index": self.blocks - 1, "delta": delta}

    def _close(self) -> list[dict]:
        if self.open is None:
            return []
        self.open = None
        return [{"type": "content_block_stop", "index": self.blocks - 1}]


def stop_reason(choice: Choice) -> str:
    if choice.finish_reason == "length":
        return "max_tokens"
    if choice.called:
        return "tool_use"
    return "stop_sequence" if isinstance(choice.stop_reason, str) else "end_turn"


def stop_sequence(choice: Choice) -> str | None:
    return choice.stop_reason if choice.finish_reason == "stop" and isinstance(choice.stop_reason, str) else None
