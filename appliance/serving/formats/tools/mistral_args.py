"""Mistral's newer tool calls: `[TOOL_CALLS]name[ARGS]{...}`, one block per call, several in a row.

The format of Mistral's tekken v11+ tokenizers (Mistral Small 3.2, Magistral, Devstral, Ministral
3): the function's name in plain text, then `[ARGS]` and the arguments object itself. The history
writes `[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}`; a `[CALL_ID]` the model writes is skipped. A call is
announced when `[ARGS]` ends its name, its arguments stream as written, and it ends when the object
closes and parses. A name that is no function name (or a block that never reaches `[ARGS]`) was no
call: its text is content.
"""

import json
import re

from appliance.serving.formats.events import ToolCallArguments, ToolCallEnd, ToolCallStart
from appliance.serving.formats.tools.scanning import JsonExtent
from appliance.serving.formats.tools.stream import StreamParser

START = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_NAME_CHARS = 64 + len(CALL_ID) + 64  # a name and an id: longer is no call


class MistralArgsParser(StreamParser):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._extent = JsonExtent()  # where the call's arguments object ends
        self._arguments_text = ""

    def _step(self) -> bool:
        if self._state == "text":
            return self._text_until((START,)) is not None and self._to("name")
        if self._state == "name":
            return self._name()
        if self._state == "open":
            return self._open_arguments()
        return self._arguments()

    def _name(self) -> bool:
        """The function's name (and an id to skip) up to `[ARGS]`."""
        end = self._buffer.find(ARGS)
        if end < 0:
            if len(self._buffer) > MAX_NAME_CHARS:
                self._fail()
                return self._to("text")
            return False  # cut off here, the block is dropped (close)
        name = self._consume(end + len(ARGS))[:end].split(CALL_ID)[0].strip()
        if not _NAME.fullmatch(name):
            self._fail()
            return self._to("text")
        self._ws, self._held = "", ""  # from here on none of it is content
        self._events.append(ToolCallStart(self._index, self._new_id(), name))
        self._arguments_text = ""
        return self._to("open")

    def _open_arguments(self) -> bool:
        char = self._next_char()
        self._held = ""
        if char is None:
            return False
        if char != "{":  # announced, then no object: incomplete
            return self._end_call(complete=False)
        self._extent = JsonExtent()
        return self._to("arguments")

    def _arguments(self) -> bool:
        end = self._extent.feed(self._buffer)
        piece = self._buffer if end is None else self._buffer[:end]
        self._buffer = self._buffer[len(piece):]
        if piece:
            self._arguments_text += piece
            self._events.append(ToolCallArguments(self._index, piece))
        if end is None:
            return False
        try:
            complete = isinstance(json.loads(self._arguments_text), dict)
        except ValueError:
            complete = False
        return self._end_call(complete)

    def _end_call(self, complete: bool) -> bool:
        if complete:
            self._events.append(ToolCallEnd(self._index))
        self._index += 1
        self._after_call = True
        return self._to("text")
