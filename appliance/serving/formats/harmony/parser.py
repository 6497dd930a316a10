"""gpt-oss's output read as it streams in: harmony messages into reasoning, content and tool calls.

After the prompt's `<|start|>assistant` the model writes messages, each a header, `<|message|>`, a
body and an end: `<|end|>` (another message follows, `<|start|>assistant…`), `<|call|>` (a tool
call, which ends the turn) or `<|return|>` (the answer is done). The header names the channel and,
for a call, the recipient, on either side of the channel:

    <|channel|>analysis<|message|>The user wants the weather.<|end|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>
    <|start|>assistant<|channel|>final<|message|>It is sunny.<|return|>

What each message becomes:
    analysis                                   reasoning
    any channel to=functions.NAME (tools on)   a tool call: NAME, its body the arguments as generated
    commentary or final, no recipient          content (commentary without a recipient is a preamble, shown
                                               to the user, as the harmony guide says)
    another recipient (a built-in tool)        reasoning (no such tool is offered here)

A call is complete when its body parses as a JSON object; one cut off by max_tokens is not
(events.collect leaves it out). Text written outside the format (no header ever closes) is
content, so nothing the model wrote is lost. The split does not depend on how the text was cut into
deltas: a marker's possible beginning at the end of a delta waits for the next.
"""

import json
import re
from collections.abc import Callable

from appliance.serving.formats.events import (
    ContentDelta,
    Event,
    ReasoningDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
    new_call_id,
)
from appliance.serving.formats.tools.scanning import held_back

START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL = (
    "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>")
MARKERS = (START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL)
BODY_ENDS = (END, CALL, RETURN, START)  # START: a message the model did not end
MAX_HEADER_CHARS = 256  # a header is a role, a channel, a recipient and a content type; longer is no header
_RECIPIENT = re.compile(r"to=([^\s<]+)")
_CHANNEL = re.compile(re.escape(CHANNEL) + r"\s*([A-Za-z_]+)")
FUNCTIONS = "functions."


class HarmonyParser:
    """feed(text, num_tokens) -> events; close() -> the last events. `reasoning_tokens`: the tokens of analysis
    messages (and of messages to tools not offered), headers and ends included."""

    def __init__(self, tools_active: bool, new_id: Callable[[], str] = new_call_id):
        self.tools_active = tools_active
        self.reasoning_tokens = 0
        self._new_id = new_id
        self._buffer = ""  # received, not yet read
        self._header: str | None = ""  # the header being read; None inside a body
        self._kind = ""  # the body's: reasoning, content or call
        self._header_tokens = 0  # tokens of the header being read: the message's, once its kind is known
        self._arguments = ""  # the call's body so far
        self._index = 0  # the next call's index
        self._final = False

    def feed(self, text: str, num_tokens: int) -> list[Event]:
        if self._header is not None:
            self._header_tokens += num_tokens
        elif self._kind == "reasoning":
            self.reasoning_tokens += num_tokens
        self._buffer += text
        return self._advance()

    def close(self) -> list[Event]:
        self._final = True
        events = self._advance()
        if self._header is None:
            events += self._end_message()
        elif self._header and not any(marker in self._header for marker in MARKERS):
            events.append(ContentDelta(self._header))  # text outside the format
        self._header = ""
        return events

    def _advance(self) -> list[Event]:
        events: list[Event] = []
        while self._buffer:
            if self._header is not None:
                if not self._read_header(events):
                    break
            elif not self._read_body(events):
                break
        return events

    def _read_header(self, events: list[Event]) -> bool:
        self._header += self._buffer
        self._buffer = ""
        end = self._header.find(MESSAGE)
        if end < 0:
            if len(self._header) > MAX_HEADER_CHARS:  # not harmony after all: the text is content
                self._buffer, self._header, self._kind = self._header, None, "content"
                return True
            return False
        header, self._buffer = self._header[:end], self._header[end + len(MESSAGE):]
        self._header = None
        events += self._open(header)
        return True

    def _open(self, header: str) -> list[Event]:
        """A message's header read: its kind, and a call's start."""
        recipient = _RECIPIENT.search(header)
        channel = _CHANNEL.search(header)
        channel = channel.group(1) if channel is not None else None
        if recipient is not None and recipient.group(1).startswith(FUNCTIONS) and self.tools_active:
            self._kind, self._arguments = "call", ""
            name = recipient.group(1)[len(FUNCTIONS):]
            events = [ToolCallStart(self._index, self._new_id(), name)]
        else:
            self._kind = "reasoning" if recipient is not None or channel == "analysis" else "content"
            events = []
        if self._kind == "reasoning":
            self.reasoning_tokens += self._header_tokens
        self._header_tokens = 0
        return events

    def _read_body(self, events: list[Event]) -> bool:
        found = [(i, m) for m in BODY_ENDS if (i := self._buffer.find(m)) >= 0]
        if found:
            i, marker = min(found)
            self._body(self._buffer[:i], events)
            self._buffer = self._buffer[i + len(marker):] if marker != START else self._buffer[i:]
            events += self._end_message()
            self._header = ""
            return True
        keep = 0 if self._final else held_back(self._buffer, BODY_ENDS)
        self._body(self._buffer[: len(self._buffer) - keep], events)
        self._buffer = self._buffer[len(self._buffer) - keep:]
        return False

    def _body(self, text: str, events: list[Event]) -> None:
        if not text:
            return
        if self._kind == "call":
            self._arguments += text
            events.append(ToolCallArguments(self._index, text))
        elif self._kind == "reasoning":
            events.append(ReasoningDelta(text))
        else:
            events.append(ContentDelta(text))

    def _end_message(self) -> list[Event]:
        """The message ended (or the output did): a call whose arguments are one JSON object is complete."""
        if self._kind != "call":
            return []
        index, self._index, self._kind = self._index, self._index + 1, ""
        try:
            complete = isinstance(json.loads(self._arguments), dict)
        except ValueError:
            complete = False
        return [ToolCallEnd(index)] if complete else []
