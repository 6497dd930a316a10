"""Turns a request's output token ids into text as they come, UTF-8 safe, with stop strings.

Decoding uses vLLM's prefix/read offset technique: each step converts only a small window of
tokens to text, from the last point where the text was complete (the prefix) to the newest
token, and emits what lies beyond the already read part. Byte-level tokenizers split multi-byte
characters across tokens; a window whose text ends in "\ufffd" waits for the next token.
"""

from collections.abc import Sequence
from dataclasses import dataclass

# Prompt tokens kept as the window's first context, so that the first output token decodes as a
# continuation (its leading space kept). vLLM uses 5, reading 2 more in case some are skipped.
CONTEXT_TOKENS = 5


@dataclass
class DetokenizerDelta:
    text: str  # new text safe to emit now (may be "")
    stop_string: str | None = None  # set when a stop string matched; text then ends right before it


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer,
        prompt_token_ids: list[int],
        stop: Sequence[str] = (),
        skip_special_tokens: bool = True,
        kept_special_ids: frozenset[int] = frozenset(),
    ):
        self._tokenizer = tokenizer
        # Computed once: the tokenizer's own list of special ids is rebuilt on every access.
        self._skipped_ids = _special_ids(tokenizer) - kept_special_ids if skip_special_tokens else frozenset()
        context = [t for t in prompt_token_ids[-CONTEXT_TOKENS - 2 :] if t not in self._skipped_ids]
        # The window: tokens from the prefix offset on; those before _read_offset are already read.
        self._tokens = tokenizer.convert_ids_to_tokens(context[-CONTEXT_TOKENS:])
        self._read_offset = len(self._tokens)
        self._stops = list(stop)
        self._held = ""  # decoded text not emitted yet because it may begin a stop string
        self._pieces: list[str] = []
        self._finished_by: str | None = None  # why append may no longer be called

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self._pieces)

    def append(self, token_id: int) -> DetokenizerDelta:
        if self._finished_by is not None:
            raise RuntimeError(
                f"append() called after the detokenizer finished ({self._finished_by}); "
                "the request's output is complete, stop feeding it tokens"
            )
        if token_id not in self._skipped_ids:
            self._tokens.append(self._tokenizer.convert_ids_to_tokens(token_id))
        new_text, complete = self._read_new_text()
        return self._emit(self._held + new_text, complete)

    def flush(self) -> str:
        """At the end of generation: the held-back text, and any incomplete character as decoded."""
        if self._finished_by is not None:
            return ""
        self._finished_by = "flushed"
        new_text, _ = self._read_new_text(final=True)
        return self._emit(self._held + new_text, complete=True, final=True).text

    def _read_new_text(self, final: bool = False) -> tuple[str, bool]:
        """Text of the unread tokens, and whether it is complete: not ending inside a character.

        Complete text is read: its tokens become the next window's prefix.
        """
        to_string = self._tokenizer.convert_tokens_to_string
        read_text = to_string(self._tokens[: self._read_offset])
        new_text = to_string(self._tokens)[len(read_text) :]
        if not final and (not new_text or new_text.endswith("\ufffd")):
            return new_text, False
        del self._tokens[: self._read_offset]
        self._read_offset = len(self._tokens)
        return new_text, True

    def _emit(self, text: str, complete: bool, final: bool = False) -> DetokenizerDelta:
        # Characters before an incomplete one are final already: a stop string there ends the
        # output now rather than one token later.
        stop_match = self._find_stop(text if complete else text.rstrip("\ufffd"))
        if stop_match is not None:
            index, stop = stop_match
            self._finished_by = f"stop string {stop!r} matched"
            self._held = ""
            return self._output(text[:index], stop)
        if not complete:
            return self._output("", None)  # the same text comes back, completed, with a later token
        held_chars = 0 if final or not self._stops else self._stop_prefix_length(text)
        self._held = text[len(text) - held_chars :]
        return self._output(text[: len(text) - held_chars], None)

    def _output(self, text: str, stop: str | None) -> DetokenizerDelta:
        if text:
            self._pieces.append(text)
        return DetokenizerDelta(text, stop)

    def _find_stop(self, text: str) -> tuple[int, str] | None:
        """The earliest stop string in the text, as (index, stop string)."""
        matches = [(index, s) for s in self._stops if (index := text.find(s)) != -1]
        return min(matches, key=lambda match: match[0], default=None)

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest end of the text that could still grow into a stop string."""
        longest = max(map(len, self._stops), default=1) - 1
        for length in range(min(longest, len(text)), 0, -1):
            tail = text[-length:]
            if any(s.startswith(tail) for s in self._stops):
                return length
        return 0


def _special_ids(tokenizer) -> frozenset[int]:
    """The ids `decode(..., skip_special_tokens=True)` leaves out."""
    flagged = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return frozenset(tokenizer.all_special_ids) | flagged
