"""How one chat request uses tools on the admitted model: its prompt, its constraint, its output parser.

A model whose chat template renders `tools` gets them through the template, in its own call
format (Hermes, Llama 3, Mistral); any other model gets the generic format (the tools described
in a system message, the answer a JSON object). Either way, `required`, a named function and the
call once started are held to the functions' schemas by the grammar.
"""

import weakref
from dataclasses import dataclass

from appliance.api.structured import OutputConstraint
from appliance.api.tools.formats import ToolFormat, detect_format, marker_token_ids
from appliance.api.tools.functions import Function, ToolChoice, check_tools
from appliance.api.tools.generic import messages_with_tools
from appliance.api.tools.history import native_history
from appliance.api.tools.parsers import parser_for
from appliance.api.tools.stream import StreamParser
from appliance.errors import invalid

_formats: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # served model -> its ToolFormat


def model_format(served) -> ToolFormat:
    """The served model's tool-call format, detected once from its chat template."""
    fmt = _formats.get(served)
    if fmt is None:
        tokenizer = served.engine.tokenizer
        template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        fmt = _formats[served] = detect_format(template if isinstance(template, str) else None,
                                               tokenizer.get_vocab() if tokenizer is not None else None)
    return fmt


@dataclass(frozen=True)
class ToolPlan:
    fmt: ToolFormat
    functions: list[Function]
    choice: ToolChoice
    parallel: bool
    tools: list[dict]  # the request's definitions, as templates take them

    @property
    def active(self) -> bool:
        """Whether the model may call a function (tool_choice is not "none")."""
        return self.choice.mode != "none" and bool(self.functions)

    def messages(self, messages: list[dict]) -> list[dict]:
        """The history as the model's template takes it (calls and results included)."""
        if not self.tools and not any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
            return messages
        if self.fmt.native:
            return native_history(messages, self.fmt)
        return messages_with_tools(messages, self.tools or None, self.choice_field(), self.parallel)

    def template_args(self) -> dict:
        return {"tools": self.tools} if self.fmt.native and self.active else {}

    def constraint(self) -> OutputConstraint | None:
        from appliance.api.tools.grammar import constraint_for  # imports xgrammar

        found = constraint_for(self.fmt, self.functions, self.choice, self.parallel) if self.active else None
        return OutputConstraint("tools", found.kind, found.value) if found is not None else None

    def marker_token_ids(self, tokenizer) -> frozenset[int]:
        """The call markers that are special tokens (Llama 3's <|python_tag|>, Mistral's [TOOL_CALLS]):
        the detokenizer keeps them, or the parser would never see a call begin."""
        return marker_token_ids(self.fmt, tokenizer) if self.active and tokenizer is not None else frozenset()

    def parser(self) -> StreamParser | None:
        """A parser for one choice's text, or None when all of it is content."""
        return parser_for(self.fmt) if self.active else None

    def label(self) -> str | None:
        """For the request log: which constraint held the answer."""
        return f"tools:{self.choice.mode}" if self.active else None

    def choice_field(self):
        if self.choice.mode == "function":
            return {"type": "function", "function": {"name": self.choice.name}}
        return self.choice.mode


def plan_tools(served, req, constraint: OutputConstraint | None) -> ToolPlan:
    """The request's tools checked (400s name `tools` or `tool_choice`) against the admitted model."""
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools is not None else None
    choice = req.tool_choice.model_dump() if hasattr(req.tool_choice, "model_dump") else req.tool_choice
    functions, checked = check_tools(tools, choice)
    plan = ToolPlan(model_format(served), functions, checked, req.parallel_tool_calls, tools or [])
    if plan.active and constraint is not None:
        raise invalid(constraint.param, f"{constraint.param} cannot be combined with tools unless tool_choice is "
                                        "\"none\"; drop one of them")
    return plan
