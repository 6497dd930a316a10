"""Incremental scanning shared by the parsers: where a JSON value ends, JSON string decoding, markers.

Text arrives a token or so at a time, so each scanner keeps its own state and looks at every
character once: a parser feeds it only the text it has not seen. Nothing here validates JSON
fully; a parser hands the extent found here to `json.loads` and decides what a failure means.
"""


class JsonExtent:
    """Finds the end of one JSON object or array whose first character is the first one fed."""

    def __init__(self):
        self._depth = 0
        self._in_string = False
        self._escape = False

    def feed(self, text: str) -> int | None:
        """Scan more text; the offset in `text` just past the value's closing bracket, or None."""
        for i, char in enumerate(text):
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif char == "\\":
                    self._escape = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth <= 0:
                    return i + 1
        return None


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class JsonStringDecoder:
    """Decodes the inside of a JSON string (after its opening quote) as it arrives.

    An escape split across two feeds is held until it is whole, and a UTF-16 surrogate pair
    (`\\ud83d\\ude00`) until both halves are in, so the decoded pieces concatenate to what
    `json.loads` gives for the whole string. A lone surrogate becomes U+FFFD (it could not be
    sent as UTF-8); an escape JSON does not know is kept as written.
    """

    def __init__(self):
        self._pending = ""  # an unfinished escape, starting with a backslash

    def feed(self, text: str) -> tuple[str, int | None]:
        """(decoded text, offset just past the closing quote or None while the string goes on)."""
        out: list[str] = []
        i = 0
        while i < len(text):
            char = text[i]
            if self._pending:
                if not self._escape_char(char, out):
                    continue  # the character ended a broken escape; read it again on its own
            elif char == "\\":
                self._pending = char
            elif char == '"':
                return "".join(out), i + 1
            else:
                out.append(char)
            i += 1
        return "".join(out), None

    def _escape_char(self, char: str, out: list[str]) -> bool:
        """Add one character to the pending escape; False when it is not part of it."""
        pending = self._pending
        n = len(pending)  # characters so far: "\\", "\\u", ... "\\uXXXX", "\\uXXXX\\", ...
        if n == 1:
            if char != "u":
                out.append(_ESCAPES.get(char, pending + char))
                self._pending = ""
            else:
                self._pending += char
            return True
        if n == 6:  # a complete high surrogate: a second \\u must follow
            if char != "\\":
                out.append("\ufffd")
                self._pending = ""
                return False
            self._pending += char
            return True
        if n == 7 and char != "u":
            out.append("\ufffd")
            self._pending = "\\"
            return False
        if n in (2, 3, 4, 5, 8, 9, 10, 11) and char not in "0123456789abcdefABCDEF":
            out.append("\ufffd" + pending[6:] if n > 7 else pending)
            self._pending = ""
            return False
        self._pending = pending = pending + char
        if len(pending) == 6:
            code = int(pending[2:6], 16)
            if not 0xD800 <= code < 0xDC00:
                out.append("\ufffd" if 0xDC00 <= code < 0xE000 else chr(code))
                self._pending = ""
        elif len(pending) == 12:
            high, low = int(pending[2:6], 16), int(pending[8:12], 16)
            if 0xDC00 <= low < 0xE000:
                out.append(chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)))
            else:
                out.append("\ufffd" + ("\ufffd" if 0xD800 <= low < 0xE000 else chr(low)))
            self._pending = ""
        return True

    def close(self) -> str:
        """What is left of an escape that never finished, as written."""
        pending, self._pending = self._pending, ""
        return pending


def held_back(text: str, markers: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could begin one of `markers` (to hold them back)."""
    longest = 0
    for marker in markers:
        for length in range(min(len(marker) - 1, len(text)), longest, -1):
            if marker.startswith(text[-length:]):
                longest = length
                break
    return longest
