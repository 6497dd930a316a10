"""Mistral tool calls: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.

The format of Mistral's v3 tokenizer models (Mistral 7B v0.3, Mixtral 8x22B, Mistral Nemo,
Mistral Small). Each call of the list is announced when its object closes. The v11+ form
`[TOOL_CALLS]name[ARGS]{...}` is not this format; such text stays content.
"""

from appliance.api.tools.stream import StreamParser

START = "[TOOL_CALLS]"


class MistralParser(StreamParser):
    def _step(self) -> bool:
        if self._state == "text":
            if self._text_until((START,)) is None:
                return False
            return self._to("list")
        if self._state == "object":
            call = self._scan_call()
            if call is None:
                return False
            if call is False:
                return self._broken()
            self._call(*call)
            self._object_seen = True
            return self._to("next")
        char = self._next_char()
        if char is None:
            return False
        if self._state == "list":  # `[` opens the list
            if char != "[":
                return self._broken()
            self._consume(1)
            return self._to("item")
        if self._state == "item":  # a call object, or `]` for an empty list
            if char == "]" and not self._object_seen:
                self._consume(1)
                self._held = ""
                return self._to("text")
            if char != "{":
                return self._broken()
            self._start_object()
            return self._to("object")
        # "next": `,` and another call, or `]` to end the list.
        if char == ",":
            self._consume(1)
            return self._to("item")
        if char == "]":
            self._consume(1)
            self._held = ""
            self._object_seen = False
            return self._to("text")
        return self._broken()

    _object_seen = False

    def _broken(self) -> bool:
        self._fail()
        self._object_seen = False
        return self._to("text")

    def _to(self, state: str) -> bool:
        self._state = state
        return True
