"""Hermes / Qwen tool calls: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, several in a row.

The format of NousResearch's Hermes models, adopted by Qwen2.5, Qwen3 and SmolLM3. Text
before, between and after the calls is content. The closing tag is optional (some models stop
right after the JSON), so a call ends as soon as its object closes.
"""

from appliance.serving.formats.tools.stream import StreamParser

START = "<tool_call>"
END = "</tool_call>"


class HermesParser(StreamParser):
    def _step(self) -> bool:
        """One move of the state machine; False when it needs more text."""
        if self._state == "text":
            return self._text_until((START,)) is not None and self._to("open")
        if self._state == "open":
            return self._open()
        if self._state == "object":
            return self._object("close")
        # "close": the optional closing tag, after optional whitespace.
        rest = self._buffer.lstrip()
        if rest.startswith(END):
            self._buffer = rest[len(END):]
        elif END.startswith(rest) and not self._final:
            return False  # all whitespace, or the start of the closing tag
        elif END.startswith(rest):
            self._buffer = ""  # cut off inside the closing tag
        self._state = "text"
        return True
