"""The base of the per-format tool-call parsers: one state machine over the text as it streams in.

A parser consumes the text only as far as it can decide what it is, so the events do not depend
on how the text was cut into deltas, and `parse(text)` (all of it in one feed) gives the same
message as the stream. What it cannot decide yet stays in the buffer: the start of a possible call
marker (`<tool` at the end of a delta), or a call object whose name is not known yet.

A call is announced once its object has a name and its arguments have begun (call_object.py);
then its arguments stream as the model writes them, and it ends when the object closes. Text
that turns out not to be a call (no marker after all, an object without a name) is content. A
call block cut off by the end of the output (max_tokens) is dropped: none of it is content, and a
call announced but never ended is incomplete (events.collect leaves it out). Whitespace between
content and a call is not content.
"""

from collections.abc import Callable

from appliance.serving.formats.events import (
    ContentDelta,
    Event,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
    new_call_id,
)
from appliance.serving.formats.tools.call_object import CallObject
from appliance.serving.formats.tools.scanning import held_back


class StreamParser:
    """feed(delta) -> events; close() -> the last events.

    Subclasses are state machines: `_step` makes one move from `_state` (which starts as
    `initial_state`) and says False when it needs more text.
    """

    initial_state = "text"
    # The keys a call object may carry its arguments under ({"name": ..., "arguments": {...}}).
    argument_keys: tuple[str, ...] = ("arguments",)

    def __init__(self, new_id: Callable[[], str] = new_call_id):
        self._new_id = new_id
        self._state = self.initial_state
        self._buffer = ""  # received, not yet consumed
        self._held = ""  # consumed raw text of a call block not yet announced: content if it is not one
        self._committed = False  # the block began with a call marker: cut off, it is dropped, not content
        self._call: CallObject | None = None
        self._announced = False
        self._ws = ""  # whitespace at the end of the content so far: dropped if a call follows
        self._after_call = False  # strip the whitespace that follows a call
        self._final = False
        self._events: list[Event] = []
        self._index = 0

    def feed(self, delta: str) -> list[Event]:
        self._buffer += delta
        self._advance()
        return self._take()

    def close(self) -> list[Event]:
        """The end of the text: a call block cut off is dropped; a block that was no call is content."""
        self._final = True
        self._advance()
        cut_call = self._committed or (self._call is not None and self._call.name is not None)
        if cut_call:
            self._ws = ""  # the whitespace before a call is not content
        else:
            self._content(self._held + self._buffer)
        self._held = self._buffer = ""
        self._call = None
        if self._ws:
            self._events.append(ContentDelta(self._ws))
            self._ws = ""
        return self._take()

    def _advance(self) -> None:
        while self._step():
            pass

    def _step(self) -> bool:
        raise NotImplementedError

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # Content and calls.

    def _content(self, text: str) -> None:
        if self._after_call:
            text = text.lstrip()
            if not text:
                return
            self._after_call = False
        text = self._ws + text
        body = text.rstrip()
        self._ws = text[len(body):]
        if body:
            self._events.append(ContentDelta(body))
            self._committed = False  # past the call block: content again

    def _fail(self) -> None:
        """The block being read is not a call: its text so far is content."""
        self._content(self._held)
        self._held = ""
        self._committed = False
        self._call = None

    def _commit(self) -> None:
        """A call marker was read: until content follows, what is cut off is a call's, not content."""
        self._committed = True

    # Reading the buffer.

    def _consume(self, length: int) -> str:
        """Move `length` characters of the buffer into the held text of the current block."""
        text, self._buffer = self._buffer[:length], self._buffer[length:]
        self._held += text
        return text

    def _text_until(self, markers: tuple[str, ...]) -> str | None:
        """Content up to the first marker, which is consumed (committing the block) and returned;
        None: none yet. Without a marker the content is given out except for an ending that could begin one."""
        found = [(i, m) for m in markers if (i := self._buffer.find(m)) >= 0]
        if found:
            i, marker = min(found)
            self._content(self._buffer[:i])
            self._buffer = self._buffer[i:]
            self._consume(len(marker))
            self._commit()
            return marker
        keep = 0 if self._final else held_back(self._buffer, markers)
        self._content(self._buffer[: len(self._buffer) - keep])
        self._buffer = self._buffer[len(self._buffer) - keep:]
        return None

    def _next_char(self) -> str | None:
        """Consume leading whitespace into the held text; the next other character, or None."""
        body = self._buffer.lstrip()
        self._consume(len(self._buffer) - len(body))
        return body[:1] or None

    def _start_object(self) -> None:
        """A call object begins at the next character (its `{`)."""
        self._call = CallObject(self.argument_keys)

    def _to(self, state: str) -> bool:
        self._state = state
        return True

    def _open(self) -> bool:
        """State "open": a call object must come next (after whitespace); anything else was no call."""
        char = self._next_char()
        if char is None:
            return False
        if char != "{":
            self._fail()
            return self._to("text")
        self._start_object()
        return self._to("object")

    def _object(self, after: str) -> bool:
        """State "object": read the call object; then state `after`, or "text" when it was no call."""
        called = self._read_call()
        if called is None:
            return False
        if not called:
            self._fail()
        return self._to(after if called else "text")

    def _read_call(self) -> bool | None:
        """Read the call object begun by `_start_object`: True when it ended as a call (complete, or broken
        after it was announced: then it has no end event), False when it is not a call (the caller makes
        its text content), None while it goes on."""
        call = self._call
        self._consume(call.feed(self._buffer))
        if call.is_call and not self._announced:
            self._ws = ""
            self._events.append(ToolCallStart(self._index, self._new_id(), call.name))
            self._announced = True
        if self._announced:
            self._held = ""  # the call's text is never content now
            fragment = call.fragments()
            if fragment:
                self._events.append(ToolCallArguments(self._index, fragment))
        if not call.ended:
            return None
        self._call = None
        if not self._announced:
            return False
        if call.done:
            self._events.append(ToolCallEnd(self._index))
        self._index += 1
        self._announced = False
        self._after_call = True
        return True
