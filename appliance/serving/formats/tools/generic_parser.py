"""Reads the generic format's answer (see `generic`): `{"content": "..."}` or `{"tool_calls": [...]}`.

The reply string is decoded as it streams, JSON escapes included, and given out as content
deltas; each call is announced when its name is read, and its arguments stream. Output that is not such an object (a
model that ignored the format, or an unknown key) is content as written.
"""

from appliance.serving.formats.tools.scanning import JsonStringDecoder
from appliance.serving.formats.tools.stream import StreamParser


class GenericParser(StreamParser):
    initial_state = "start"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._decoder: JsonStringDecoder | None = None
        self._key = ""
        self._calls = 0

    def close(self):
        self._final = True
        self._advance()
        if self._state == "string":
            self._content(self._decoder.close())
        elif self._state in ("end", "done"):
            self._held = ""
        return super().close()

    def _step(self) -> bool:
        state = self._state
        if state == "raw":
            self._content(self._buffer)
            self._buffer = ""
            return False
        if state in ("key", "string"):
            return self._read_string()
        if state == "object":
            called = self._read_call()
            if called is None:
                return False
            if not called:
                return self._to_raw()
            self._calls += 1
            return self._to("next")
        if state == "done":
            self._buffer = self._buffer.lstrip()
            return bool(self._buffer) and self._to("raw")
        char = self._next_char()
        if char is None:
            return False
        expected = {
            "start": "{", "open_key": '"', "colon": ":", "content": '"', "calls": "[", "end": "}",
        }.get(state)
        if expected is not None:
            if char != expected:
                return self._to_raw()
            self._consume(1)
            if state == "start":
                return self._to("open_key")
            if state in ("open_key", "content"):
                if state == "content":
                    self._held = ""  # the reply streams from here on: no going back to raw text
                self._decoder = JsonStringDecoder()
                return self._to("key" if state == "open_key" else "string")
            if state == "colon":
                if self._key == "tool_calls":
                    self._commit()
                return self._to("content" if self._key == "content" else "calls")
            if state == "calls":
                return self._to("item")
            self._held = ""
            return self._to("done")
        if state == "item":
            if char == "]" and not self._calls:
                self._consume(1)
                return self._to("end")
            if char != "{":
                return self._to_raw()
            self._start_object()
            return self._to("object")
        # "next": another call or the end of the list
        if char not in ",]":
            return self._to_raw()
        self._consume(1)
        return self._to("item" if char == "," else "end")

    def _read_string(self) -> bool:
        decoded, end = self._decoder.feed(self._buffer)
        length = len(self._buffer) if end is None else end
        if self._state == "key":
            self._consume(length)
            self._key += decoded
        else:
            self._buffer = self._buffer[length:]
            self._content(decoded)
        if end is None:
            return False
        if self._state == "key":
            if self._key not in ("content", "tool_calls"):
                return self._to_raw()
            return self._to("colon")
        return self._to("end")

    def _to_raw(self) -> bool:
        self._fail()
        return self._to("raw")
