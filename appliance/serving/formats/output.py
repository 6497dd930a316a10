"""The shape every output format has: one object per served model, a reading per request, a parser per choice.

A format (template.py; gpt-oss's harmony/) says how
a model is shown tools and its history (`conversation`), and how one request's output is read back
(`reading`): the grammar its tool calls are held to, the special tokens the detokenizer must keep
for the parser to see them, and a parser per choice that turns the generated text into events
(events.py). The API's formatters consume only those events, so a new format changes none of them.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from appliance.serving.constraint import OutputConstraint
from appliance.serving.formats.events import Event
from appliance.serving.formats.tools.functions import ToolRequest


class ChoiceParser(Protocol):
    """One choice's text into events, fed as the engine detokenizes it."""

    reasoning_tokens: int  # how many of the tokens fed were reasoning

    def feed(self, text: str, num_tokens: int) -> list[Event]: ...

    def close(self) -> list[Event]: ...


@dataclass(frozen=True)
class OutputReading:
    """How one request's output is read on its model."""

    tool_constraint: OutputConstraint | None = None  # the grammar the tool calls are held to
    grammar_after: int | None = None  # a grammar holds only after this token (the end of the reasoning)
    kept_token_ids: frozenset[int] = frozenset()  # special tokens the parser must see
    parser: Callable[[], ChoiceParser] | None = None  # None: all of the text is content
    # How the format holds the request's own constraint, where it cannot simply start after one token (harmony:
    # from where its final channel opens); None: as it is, after grammar_after
    answer: Callable[[OutputConstraint], OutputConstraint] | None = None

    def constraint(self, requested: OutputConstraint | None) -> OutputConstraint | None:
        """The request's own constraint or the tools' grammar, held after the reasoning where the prompt opened it."""
        if requested is not None and self.answer is not None:
            return self.answer(requested)
        chosen = requested or self.tool_constraint
        return chosen.after(self.grammar_after) if chosen is not None and self.grammar_after is not None else chosen

    def new_parser(self) -> ChoiceParser | None:
        return self.parser() if self.parser is not None else None


PLAIN = OutputReading()  # text in, content out (completions)
EFFORTS = ("low", "medium", "high")  # the reasoning efforts a chat template that takes `reasoning_effort` knows


class OutputFormat(Protocol):
    """What a served model writes and how to read it (ServedModel.output_format, computed once per model)."""

    @property
    def name(self) -> str: ...

    @property
    def reasoning_efforts(self) -> tuple[str, ...]:
        """The reasoning efforts the model's chat template takes (its `reasoning_effort`); empty: it takes none."""
        ...

    def conversation(self, messages: list[dict], tools: ToolRequest,
                     reasoning_effort: str | None = None) -> tuple[list[dict], dict]:
        """The messages as the model's chat template takes them, and the template's extra arguments."""
        ...

    def reading(self, prompt: str, tools: ToolRequest) -> OutputReading:
        """How one request's output is read, given its rendered prompt and its tools."""
        ...
