"""One call object, `{"name": ..., "arguments": {...}}`, read as it streams in.

The parsers of the JSON-based formats (Hermes, Llama 3, Mistral, generic) all write a call as such
an object. The reader follows the object's keys a character at a time and gives out the
arguments' text as it arrives, so a client sees the arguments being written; the name is known
when its string closes. Other keys are skipped; arguments written as a string holding a JSON
object (some models do) are decoded and given out whole when the string closes.

The object is a call once it has a name and its arguments have begun (a JSON reply that merely
has a "name" key is not one); it is complete when it closes with arguments that parse as an
object. Without a grammar a model may break off or write malformed JSON: `failed` says so. A call
that breaks after it was announced is read to its closing brace, so none of it becomes content.
"""

import json

from appliance.serving.formats.tools.scanning import JsonExtent, JsonStringDecoder

WHITESPACE = " \t\r\n"


class CallObject:
    """feed(text) -> how many characters were consumed (it stops after the object's closing brace).

    Then: `name` (None until its string closed), `is_call`, `fragments()` (the arguments' text read
    since it was last asked), `done` (closed: a complete call) and `failed` (not a call, or broken).
    """

    def __init__(self, argument_keys: tuple[str, ...]):
        self.argument_keys = argument_keys
        self.name: str | None = None
        self.arguments_begun = False
        self.done = False
        self.failed = False
        self._state = "open"
        self._key = ""
        self._string = ""  # the string being decoded: a key, the name, or arguments written as a string
        self._decoder = JsonStringDecoder()
        self._extent = JsonExtent()
        self._arguments = ""
        self._fragments: list[str] = []
        self._object = JsonExtent()  # the whole object's extent: where a broken call ends

    @property
    def is_call(self) -> bool:
        """A name, and arguments begun: from here on the object is announced as a call."""
        return self.name is not None and self.arguments_begun

    @property
    def ended(self) -> bool:
        return self.done or self.failed

    def fragments(self) -> str:
        text, self._fragments = "".join(self._fragments), []
        return text

    def feed(self, text: str) -> int:
        i = 0
        while i < len(text) and not self.ended:
            if self._state == "broken":  # skip to the object's end
                end = self._object.feed(text[i:])
                self.failed = end is not None
                return len(text) if end is None else i + end
            n = self._step(text[i:])
            closed = self._object.feed(text[i:i + n]) is not None
            i += n
            if closed and not self.done:
                self.failed = True
        return i

    def _step(self, text: str) -> int:
        """Consume at least one character of `text`; how many."""
        state = self._state
        if state in ("key_text", "name_text", "arguments_text", "skip_text"):
            return self._read_string(text)
        if state in ("arguments", "skip_nested"):
            end = self._extent.feed(text)
            piece = text if end is None else text[:end]
            if state == "arguments":
                self._arguments += piece
                self._fragments.append(piece)
            if end is not None and state == "arguments":
                self._after_arguments()
            elif end is not None:
                self._to("after")
            return len(piece)
        char = text[0]
        if state == "scalar" and char not in ",}":
            return 1
        if char in WHITESPACE:
            return 1
        if state == "open":
            return self._to("key") if char == "{" else self._fail()
        if state == "key":
            if char != '"':
                return self._fail()
            self._begin_string("key_text")
        elif state == "colon":
            return self._to("value") if char == ":" else self._fail()
        elif state == "value":
            self._begin_value(char)
        elif char == ",":  # after a value (or a scalar)
            self._to("key")
        elif char == "}":
            self.done = self.is_call
            self.failed = not self.done
        else:
            return self._fail()
        return 1

    def _begin_value(self, char: str) -> None:
        key = self._key
        if key == "name":
            self._begin_string("name_text") if char == '"' else self._fail()
        elif key in self.argument_keys:
            if char == "{":
                self.arguments_begun = True
                self._extent = JsonExtent()
                self._extent.feed(char)
                self._arguments = char
                self._fragments.append(char)
                self._to("arguments")
            elif char == '"':
                self.arguments_begun = True
                self._begin_string("arguments_text")
            else:
                self._fail()
        elif char in "{[":
            self._extent = JsonExtent()
            self._extent.feed(char)
            self._to("skip_nested")
        elif char == '"':
            self._begin_string("skip_text")
        else:
            self._to("scalar")

    def _begin_string(self, state: str) -> None:
        self._string, self._decoder = "", JsonStringDecoder()
        self._to(state)

    def _read_string(self, text: str) -> int:
        decoded, end = self._decoder.feed(text)
        self._string += decoded
        if end is None:
            return len(text)
        state, value = self._state, self._string
        if state == "key_text":
            self._key = value
            self._to("colon")
        elif state == "name_text":
            self.name = value or None
            self._to("after") if value else self._fail()
        elif state == "arguments_text":
            self._arguments = value
            self._after_arguments(decoded_string=True)
        else:
            self._to("after")
        return end

    def _after_arguments(self, decoded_string: bool = False) -> None:
        try:
            value = json.loads(self._arguments)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            self._fail()
            return
        if decoded_string:  # a string holding the object: given out as the object's text
            self._fragments.append(json.dumps(value, ensure_ascii=False))
        self._to("after")

    def _to(self, state: str) -> int:
        self._state = state
        return 1

    def _fail(self) -> int:
        if self.is_call:
            self._state = "broken"
        else:
            self.failed = True
        return 1
