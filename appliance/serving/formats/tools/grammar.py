"""The constraint on a tool-using answer, for the engine's structured output (xgrammar).

Generic format: a JSON schema (the engine's `json` kind) from `generic.answer_schema`.
Template formats: xgrammar EBNF (the engine's `grammar` kind), built as an xgrammar structural
tag and printed with `str(Grammar)`, which `Grammar.from_ebnf` parses back to the same grammar
(TagDispatch included; the tests hold it to that). For each (format, tool_choice):

    none               no constraint
    required           calls only, 1..n (exactly 1 with parallel_tool_calls false)
    {"function": N}    exactly one call of N
    auto               free text; once the model writes the call marker the call must be valid
                       (Hermes and both Mistral forms: a triggered tag; Llama 3: the reply is either calls
                       from its first character or text that does not start like one)

Each call's arguments are held to that function's parameters schema, and its name to that
function (one tag per function, the name written in the tag's fixed beginning).
"""

import re
from dataclasses import dataclass
from typing import Literal

import xgrammar
from xgrammar.structural_tag import (
    AnyTextFormat,
    ConstStringFormat,
    JSONSchemaFormat,
    OrFormat,
    RegexFormat,
    SequenceFormat,
    StructuralTag,
    TagFormat,
    TagsWithSeparatorFormat,
    TriggeredTagsFormat,
)

from appliance.serving.formats.tools import hermes, llama3, mistral, mistral_args
from appliance.serving.formats.tools.formats import ToolFormat
from appliance.serving.formats.tools.functions import Function, ToolChoice, schema_error
from appliance.serving.formats.tools.generic import answer_schema


@dataclass(frozen=True)
class Constraint:
    """What to put in the engine's StructuredOutput: `json` (a schema dict) or `grammar` (EBNF text)."""

    kind: Literal["json", "grammar"]
    value: dict | str


def constraint_for(
    fmt: ToolFormat, functions: list[Function], choice: ToolChoice, parallel_tool_calls: bool = True
) -> Constraint | None:
    """The constraint for the answer, or None; APIError (param "tools") for a schema xgrammar cannot use."""
    if choice.mode == "none" or not functions:
        return None
    check_schemas(functions)
    if fmt is ToolFormat.GENERIC:
        return Constraint("json", answer_schema(functions, choice, parallel_tool_calls))
    chosen = [f for f in functions if choice.mode != "function" or f.name == choice.name]
    tag = _STRUCTURAL_TAGS[fmt](chosen, choice.mode, parallel_tool_calls)
    return Constraint("grammar", str(xgrammar.Grammar.from_structural_tag(StructuralTag(format=tag))))


def check_schemas(functions: list[Function]) -> None:
    """Refuse (400) a schema xgrammar cannot turn into a grammar, before the engine sees it."""
    for i, function in enumerate(functions):
        try:
            xgrammar.Grammar.from_json_schema(function.parameters)
        except Exception as error:  # RuntimeError or xgrammar's own types; each means "unusable"
            raise schema_error(i, function, _reason(error)) from None


def _reason(error: Exception) -> str:
    # "[09:37:18] /project/cpp/json_schema_converter.cc:5082: Unsupported type "strin"" -> the last part
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", text)


MAX_WHITESPACE = 1  # between JSON tokens: a small model given free whitespace fills max_tokens with it


def _arguments(function: Function) -> JSONSchemaFormat:
    return JSONSchemaFormat(json_schema=function.parameters, max_whitespace_cnt=MAX_WHITESPACE)


def _hermes(functions: list[Function], mode: str, parallel: bool):
    tags = [
        TagFormat(
            begin=f'{hermes.START}\n{{"name": "{f.name}", "arguments": ', content=_arguments(f), end=f"}}\n{hermes.END}"
        )
        for f in functions
    ]
    if mode == "function":
        return tags[0]
    if mode == "required":
        return TagsWithSeparatorFormat(tags=tags, separator="\n", at_least_one=True, stop_after_first=not parallel)
    return TriggeredTagsFormat(triggers=[hermes.START], tags=tags, stop_after_first=not parallel)


def _llama3(functions: list[Function], mode: str, parallel: bool):
    tags = [TagFormat(begin=f'{{"name": "{f.name}", "parameters": ', content=_arguments(f), end="}") for f in functions]
    if mode == "function":
        return tags[0]
    calls = TagsWithSeparatorFormat(tags=tags, separator="; ", at_least_one=True, stop_after_first=not parallel)
    if mode == "required":
        return calls
    # A reply that is text must not start like a call (the parser would read it as one).
    text = SequenceFormat(
        elements=[RegexFormat(pattern=r"[^{< \t\r\n]|<[^|]"), AnyTextFormat(excludes=[llama3.PYTHON_TAG])]
    )
    return OrFormat(elements=[calls, text])


def _mistral(functions: list[Function], mode: str, parallel: bool):
    tags = [TagFormat(begin=f'{{"name": "{f.name}", "arguments": ', content=_arguments(f), end="}") for f in functions]
    opening = mistral.START + "["
    if mode == "function":
        return SequenceFormat(elements=[ConstStringFormat(value=opening), tags[0], ConstStringFormat(value="]")])
    calls = TagsWithSeparatorFormat(tags=tags, separator=", ", at_least_one=True, stop_after_first=not parallel)
    if mode == "required":
        return SequenceFormat(elements=[ConstStringFormat(value=opening), calls, ConstStringFormat(value="]")])
    block = TagFormat(begin=opening, content=calls, end="]")
    return TriggeredTagsFormat(triggers=[mistral.START], tags=[block], stop_after_first=True)


def _mistral_args(functions: list[Function], mode: str, parallel: bool):
    tags = [TagFormat(begin=f"{mistral_args.START}{f.name}{mistral_args.ARGS}", content=_arguments(f), end="")
            for f in functions]
    if mode == "function":
        return tags[0]
    if mode == "required":
        return TagsWithSeparatorFormat(tags=tags, separator="", at_least_one=True, stop_after_first=not parallel)
    return TriggeredTagsFormat(triggers=[mistral_args.START], tags=tags, stop_after_first=not parallel)


_STRUCTURAL_TAGS = {ToolFormat.HERMES: _hermes, ToolFormat.LLAMA3: _llama3, ToolFormat.MISTRAL: _mistral,
                    ToolFormat.MISTRAL_ARGS: _mistral_args}
