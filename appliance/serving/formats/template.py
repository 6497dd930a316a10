"""The output format of a model whose chat template says how it calls tools, with `<think>` reasoning where the
model has it: the tool format its template speaks (Hermes, Llama 3, Mistral; our generic format when the
template knows no tools, tools/generic.py), and the reasoning markers of its vocabulary (think.py).
A template that reads `reasoning_effort` gets the request's; one without a system role gets the
system messages inside the user turns (system_role.py).

Every model has one: this format recognises any tokenizer, so it is the last in the registry.
"""

import re
from dataclasses import dataclass
from functools import partial

from appliance.serving.constraint import OutputConstraint
from appliance.serving.formats.events import ContentDelta, Event, ReasoningDelta
from appliance.serving.formats.output import EFFORTS, OutputReading
from appliance.serving.formats.system_role import merge_system, refuses_system
from appliance.serving.formats.think import ThinkFormat, ThinkParser
from appliance.serving.formats.tools.formats import ToolFormat, detect_format, marker_token_ids
from appliance.serving.formats.tools.functions import ToolRequest
from appliance.serving.formats.tools.generic import messages_with_tools
from appliance.serving.formats.tools.history import native_history
from appliance.serving.formats.tools.parsers import parser_for
from appliance.serving.formats.tools.stream import StreamParser


def detect(tokenizer) -> "TemplateFormat":
    template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    template = template if isinstance(template, str) else None
    vocab = tokenizer.get_vocab() if tokenizer is not None else {}
    tools = detect_format(template, vocab)
    markers = marker_token_ids(tools, tokenizer) if tokenizer is not None else frozenset()
    efforts = EFFORTS if template is not None and _EFFORT_VARIABLE.search(template) else ()
    return TemplateFormat(tools, ThinkFormat.detect(template, vocab), markers, efforts,
                          template is not None and refuses_system(tokenizer))


_EFFORT_VARIABLE = re.compile(r"\breasoning_effort\b")


@dataclass(frozen=True)
class TemplateFormat:
    tools: ToolFormat
    think: ThinkFormat | None
    tool_marker_ids: frozenset[int]  # the tool format's markers that are single tokens of the vocabulary
    reasoning_efforts: tuple[str, ...] = ()  # EFFORTS where the template reads `reasoning_effort`
    system_merged: bool = False  # the template has no system role: system messages go into the user turn after them

    @property
    def name(self) -> str:
        return self.tools.value + ("+think" if self.think is not None else "")

    def conversation(self, messages: list[dict], tools: ToolRequest,
                     reasoning_effort: str | None = None) -> tuple[list[dict], dict]:
        messages, arguments = self._with_tools(messages, tools)
        if reasoning_effort is not None:
            arguments = {**arguments, "reasoning_effort": reasoning_effort}
        return (merge_system(messages) if self.system_merged else messages), arguments

    def _with_tools(self, messages: list[dict], tools: ToolRequest) -> tuple[list[dict], dict]:
        if not tools.definitions and not any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
            return messages, {}
        if self.tools.native:
            return native_history(messages, self.tools), ({"tools": list(tools.definitions)} if tools.active else {})
        definitions = list(tools.definitions) or None  # a history of calls may come without tools
        choice = tools.choice_field if definitions is not None else None
        return messages_with_tools(messages, definitions, choice, tools.parallel), {}

    def reading(self, prompt: str, tools: ToolRequest) -> OutputReading:
        think = self.think
        opened = think is not None and think.opened(prompt)
        kept = self.tool_marker_ids if tools.active else frozenset()
        if think is not None:
            kept |= think.marker_token_ids
        parser = None
        if tools.active or think is not None:
            parser = partial(TemplateParser, opened if think is not None else None, self.tools if tools.active else None)
        return OutputReading(self._tool_constraint(tools), think.end_id if opened else None, kept, parser)

    def _tool_constraint(self, tools: ToolRequest) -> OutputConstraint | None:
        if not tools.active:
            return None
        from appliance.serving.formats.tools.grammar import constraint_for  # imports xgrammar

        found = constraint_for(self.tools, list(tools.functions), tools.choice, tools.parallel)
        return OutputConstraint("tools", found.kind, found.value) if found is not None else None


class TemplateParser:
    """One choice's text: the reasoning split off first (where the model reasons), then content and tool calls
    (where the request has tools)."""

    def __init__(self, think_opened: bool | None, tools: ToolFormat | None):
        self.think = ThinkParser(think_opened) if think_opened is not None else None
        self.tools: StreamParser | None = parser_for(tools) if tools is not None else None
        self.reasoning_tokens = 0

    def feed(self, text: str, num_tokens: int) -> list[Event]:
        if self.think is None:
            return self._calls([ContentDelta(text)] if text else [])
        was_reasoning = self.think.state == "reasoning"  # the token that closes it counts too
        events = self.think.feed(text) if text else []
        if was_reasoning or self.think.in_reasoning:
            self.reasoning_tokens += num_tokens
        return self._calls(events)

    def close(self) -> list[Event]:
        return self._calls(self.think.close() if self.think is not None else [], final=True)

    def _calls(self, events: list[Event], final: bool = False) -> list[Event]:
        if self.tools is None:
            return events
        content = "".join(e.text for e in events if isinstance(e, ContentDelta))
        calls = self.tools.feed(content) if content else []
        if final:
            calls += self.tools.close()
        return [e for e in events if isinstance(e, ReasoningDelta)] + calls
