"""Mistral tool calls: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`.

The format of Mistral's v3 tokenizer models (Mistral 7B v0.3, Mixtral 8x22B, Mistral Nemo,
Mistral Small up to 3.1). Each call of the list is announced when its name is read. The v11+ form
`[TOOL_CALLS]name[ARGS]{...}` is mistral_args.py.
"""

from appliance.serving.formats.tools.stream import StreamParser

START = "[TOOL_CALLS]"


class MistralParser(StreamParser):
    def _step(self) -> bool:
        if self._state == "text":
            if self._text_until((START,)) is None:
                return False
            self._first_item = True
            return self._to("list")
        if self._state == "object":
            return self._object("next")
        char = self._next_char()
        if char is None:
            return False
        if self._state == "list" and char == "[":  # `[` opens the list
            self._consume(1)
            return self._to("item")
        if self._state == "item" and char == "]" and self._first_item:  # an empty list
            self._consume(1)
            self._held = ""
            return self._to("text")
        if self._state == "item" and char == "{":  # a call object
            self._first_item = False
            self._start_object()
            return self._to("object")
        if self._state == "next" and char in ",]":  # another call, or the end of the list
            self._consume(1)
            if char == ",":
                return self._to("item")
            self._held = ""
            return self._to("text")
        self._fail()
        return self._to("text")

    _first_item = True
