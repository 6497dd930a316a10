"""Llama 3.x tool calls: `{"name": ..., "parameters": {...}}`, maybe after `<|python_tag|>`, `;` between calls.

Llama 3.1-3.3 answer a custom tool with a bare JSON object as the whole reply, so a call is
recognised only at the start of the output (after whitespace) or after `<|python_tag|>`; a `{`
later in a reply is content. A reply that starts with a JSON object that is not a call stays
content. "arguments" is accepted in place of "parameters" (some fine-tunes write it).
"""

from appliance.serving.formats.tools.stream import StreamParser

PYTHON_TAG = "<|python_tag|>"


class Llama3Parser(StreamParser):
    argument_keys = ("parameters", "arguments")
    initial_state = "start"

    def _step(self) -> bool:
        if self._state == "start":
            rest = self._buffer.lstrip()
            if not rest or (PYTHON_TAG.startswith(rest) and rest != PYTHON_TAG and not self._final):
                return self._final and self._to("text")
            if rest.startswith(PYTHON_TAG) or rest.startswith("{"):
                self._consume(len(self._buffer) - len(rest))
                if rest.startswith(PYTHON_TAG):
                    self._consume(len(PYTHON_TAG))
                    self._commit()
                return self._to("open")
            return self._to("text")
        if self._state == "text":
            return self._text_until((PYTHON_TAG,)) is not None and self._to("open")
        if self._state == "open":
            return self._open()
        if self._state == "object":
            return self._object("next")
        # "next": `;` and another call, `<|python_tag|>` and another call, or the end of the calls.
        rest = self._buffer.lstrip()
        if rest.startswith(";") or rest.startswith(PYTHON_TAG):
            self._consume(len(self._buffer) - len(rest) + (1 if rest.startswith(";") else len(PYTHON_TAG)))
            self._commit()
            return self._to("open")
        if (not rest or PYTHON_TAG.startswith(rest)) and not self._final:
            return False
        return self._to("text")
