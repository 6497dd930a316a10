"""Reasoning models (Qwen3, QwQ, DeepSeek-R1 and its distills): `<think>…</think>`, then the answer.

A served model has this reasoning format when `<think>` and `</think>` are single tokens of its
vocabulary and its chat template writes `</think>` (Qwen3's renders the history's reasoning in it,
DeepSeek-R1's strips it from the history); a model with the tokens and a template that never
mentions them is an ordinary model, and nothing about its answers changes.

Whether the answer starts inside the reasoning is read from the rendered prompt, as vLLM's
deepseek_r1 parser allows for: DeepSeek-R1's and QwQ's templates end the generation prompt with
an open `<think>`, so the model's text is reasoning up to `</think>`; Qwen3's (thinking on) leaves
it to the model, whose text is reasoning only if it begins with `<think>`; a template that closed
it (Qwen3 with thinking off: `<think>\\n\\n</think>`) leaves nothing to reason. Reasoning never
closed is all reasoning (the answer was cut off), as vLLM's parser reads it.

A grammar (tool calls, response_format) holds the answer only: where the prompt opened the
reasoning, it starts after `</think>` (the engine's StructuredOutput.after_token_id); where it did
not, it holds from the first token, and the model answers without reasoning.
"""

from dataclasses import dataclass

from appliance.serving.formats.events import ContentDelta, ReasoningDelta
from appliance.serving.formats.tools.scanning import held_back

START = "<think>"
END = "</think>"


@dataclass(frozen=True)
class ThinkFormat:
    """A reasoning model's markers as token ids."""

    start_id: int
    end_id: int

    @classmethod
    def detect(cls, template: str | None, vocab: dict[str, int]) -> "ThinkFormat | None":
        """The format where both markers are single tokens and the chat template writes `</think>`."""
        if START in vocab and END in vocab and isinstance(template, str) and END in template:
            return cls(vocab[START], vocab[END])
        return None

    @staticmethod
    def opened(prompt: str) -> bool:
        """Whether the rendered prompt leaves the reasoning open (the model's text is reasoning up to `</think>`)."""
        return prompt.rfind(START) > prompt.rfind(END)

    @property
    def marker_token_ids(self) -> frozenset[int]:
        """Kept by the detokenizer where they are special tokens, or the parser would never see them."""
        return frozenset((self.start_id, self.end_id))


class ThinkParser:
    """feed(delta) -> [ReasoningDelta | ContentDelta]; close() -> the rest. The split does not depend on how
    the text was cut into deltas: a marker's possible beginning at the end of a delta waits for the next.

    States: start (`<think>` may come first), reasoning, after (the whitespace after `</think>` is dropped),
    content."""

    def __init__(self, opened: bool):
        self.state = "reasoning" if opened else "start"
        self._buffer = ""

    @property
    def in_reasoning(self) -> bool:
        """Inside the reasoning or its closing whitespace: the tokens that come now are reasoning tokens."""
        return self.state in ("reasoning", "after")

    def feed(self, delta: str, final: bool = False) -> list:
        self._buffer += delta
        events = []
        if self.state == "start":
            body = self._buffer.lstrip()
            if body.startswith(START):
                self._buffer, self.state = body[len(START):], "reasoning"
            elif final or not START.startswith(body):
                self.state = "content"
            else:
                return events  # whitespace, or the start of <think>
        if self.state == "reasoning":
            end = self._buffer.find(END)
            if end < 0:
                keep = 0 if final else held_back(self._buffer, (END,))
                text, self._buffer = self._buffer[: len(self._buffer) - keep], self._buffer[len(self._buffer) - keep:]
                return [ReasoningDelta(text)] if text else []
            if end:
                events.append(ReasoningDelta(self._buffer[:end]))
            self._buffer, self.state = self._buffer[end + len(END):], "after"
        if self.state == "after":
            self._buffer = self._buffer.lstrip()
            if not self._buffer:
                return events
            self.state = "content"
        if self._buffer:
            events.append(ContentDelta(self._buffer))
            self._buffer = ""
        return events

    def close(self) -> list:
        return self.feed("", final=True)
