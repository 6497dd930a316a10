"""The base of the per-format parsers: one state machine over the text as it streams in.

A parser consumes the text only as far as it can decide what it is, so the events do not
depend on how the text was cut into deltas, and `parse(text)` (all of it in one feed) gives the
same message as the stream. What it cannot decide yet stays in the buffer: the start of a
possible call marker (`<tool` at the end of a delta), or a call whose JSON is not closed yet.

A call is announced only once its JSON object is complete and valid, never retracted: a model
that broke off or wrote malformed JSON gets that text back as content. The arguments of a call
therefore come in one fragment; a client cannot run a call before its arguments are whole, so
nothing is lost. Whitespace between content and a call is not content.
"""

from collections.abc import Callable

from appliance.api.tools.events import ContentDelta, Event, ToolCallDelta, new_call_id
from appliance.api.tools.scanning import JsonExtent, call_from_json, held_back


class StreamParser:
    """feed(delta) -> events; close() -> the last events.

    Subclasses are state machines: `_step` makes one move from `_state` (which starts as
    `initial_state`) and says False when it needs more text; or they write `_advance` whole.
    """

    initial_state = "text"
    # The keys a call object may carry its arguments under ({"name": ..., "arguments": {...}}).
    argument_keys: tuple[str, ...] = ("arguments",)

    def __init__(self, new_id: Callable[[], str] = new_call_id):
        self._new_id = new_id
        self._state = self.initial_state
        self._buffer = ""  # received, not yet consumed
        self._held = ""  # consumed raw text of a call block not yet announced: content if it fails
        self._object = ""  # the call object being scanned
        self._extent: JsonExtent | None = None
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
        """The end of the text: a call block still open stays content."""
        self._final = True
        self._advance()
        self._content(self._held + self._buffer)
        self._held = self._buffer = ""
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

    def _fail(self) -> None:
        """The call block being read is not a call: its text so far is content."""
        self._content(self._held)
        self._held = self._object = ""
        self._extent = None

    def _call(self, name: str, arguments: str) -> None:
        self._ws = ""
        self._after_call = True
        self._held = self._object = ""
        self._extent = None
        self._events.append(ToolCallDelta(self._index, id=self._new_id(), name=name))
        self._events.append(ToolCallDelta(self._index, arguments=arguments))
        self._index += 1

    # Reading the buffer.

    def _consume(self, length: int) -> str:
        """Move `length` characters of the buffer into the held text of the current block."""
        text, self._buffer = self._buffer[:length], self._buffer[length:]
        self._held += text
        return text

    def _text_until(self, markers: tuple[str, ...]) -> str | None:
        """Content up to the first marker, which is consumed and returned; None: none yet.

        Without a marker the content is given out except for an ending that could begin one.
        """
        found = [(i, m) for m in markers if (i := self._buffer.find(m)) >= 0]
        if found:
            i, marker = min(found)
            self._content(self._buffer[:i])
            self._buffer = self._buffer[i:]
            self._consume(len(marker))
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
        self._object = ""
        self._extent = JsonExtent()

    def _scan_call(self) -> tuple[str, str] | None | bool:
        """Read the call object begun by `_start_object`: (name, arguments), False if invalid,
        None while it is not closed."""
        end = self._extent.feed(self._buffer)
        self._object += self._consume(len(self._buffer) if end is None else end)
        if end is None:
            return None
        return call_from_json(self._object, self.argument_keys) or False
