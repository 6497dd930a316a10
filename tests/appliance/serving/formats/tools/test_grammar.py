"""The answer constraints, checked with xgrammar itself over the tiny model's tokenizer.

Each accepted answer is also read back by the format's parser: what the grammar lets through is
what the parser turns into calls.
"""

import json

import pytest
import xgrammar

from appliance.serving.formats.tools.formats import ToolFormat
from appliance.serving.formats.tools.functions import check_tools
from appliance.serving.formats.tools.grammar import constraint_for
from appliance.serving.formats.tools.parsers import parse

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        },
    },
]
PARIS = ("get_weather", {"city": "Paris", "days": 2})
SUM = ("add", {"a": 1.5, "b": -2})
NAMED = {"type": "function", "function": {"name": "add"}}
REPLY = "It is sunny in Paris."


def answer(fmt: ToolFormat, calls) -> str:
    """Calls written as the format writes them."""
    if fmt is ToolFormat.HERMES:
        return "\n".join(f"<tool_call>\n{_call(n, a)}\n</tool_call>" for n, a in calls)
    if fmt is ToolFormat.LLAMA3:
        return "; ".join(_call(n, a, "parameters") for n, a in calls)
    if fmt is ToolFormat.MISTRAL:
        return "[TOOL_CALLS][" + ", ".join(_call(n, a) for n, a in calls) + "]"
    if fmt is ToolFormat.MISTRAL_ARGS:
        return "".join(f"[TOOL_CALLS]{n}[ARGS]{json.dumps(a)}" for n, a in calls)
    return '{"tool_calls": [' + ", ".join(_call(n, a) for n, a in calls) + "]}"


def _call(name, arguments, key="arguments"):
    return f'{{"name": "{name}", "{key}": {json.dumps(arguments)}}}'


def reply(fmt: ToolFormat) -> str:
    return json.dumps({"content": REPLY}) if fmt is ToolFormat.GENERIC else REPLY


def matcher(compiler, fmt, tool_choice, parallel=True):
    functions, choice = check_tools(TOOLS, tool_choice)
    constraint = constraint_for(fmt, functions, choice, parallel)
    if constraint.kind == "json":
        assert fmt is ToolFormat.GENERIC
        compiled = compiler.compile_json_schema(json.dumps(constraint.value))
    else:
        grammar = xgrammar.Grammar.from_ebnf(constraint.value)
        assert str(grammar) == constraint.value  # the EBNF round trip the engine relies on
        compiled = compiler.compile_grammar(grammar)
    return lambda: xgrammar.GrammarMatcher(compiled)


def accepts(new_matcher, text: str) -> bool:
    """The whole text is allowed and may end there (the stop token is accepted after it)."""
    m = new_matcher()
    if not m.accept_string(text) or not m.is_completed():
        return False
    assert m.accept_token(m.stop_token_ids[0]) and m.is_terminated()
    return True


FORMATS = list(ToolFormat)


@pytest.mark.parametrize("fmt", FORMATS)
def test_required(compiler, fmt):
    parallel = matcher(compiler, fmt, "required")
    single = matcher(compiler, fmt, "required", parallel=False)
    for calls in ([PARIS], [SUM], [PARIS, SUM, PARIS]):
        text = answer(fmt, calls)
        assert accepts(parallel, text), text
        assert [(c.name, json.loads(c.arguments)) for c in parse(fmt, text)[1]] == calls
    assert accepts(single, answer(fmt, [SUM]))
    assert not accepts(single, answer(fmt, [SUM, PARIS]))  # a second call when parallel_tool_calls is false
    for new in (parallel, single):
        assert not accepts(new, reply(fmt))  # a call is required
        assert not accepts(new, answer(fmt, [("lookup", {"city": "Paris"})]))  # unknown function
        assert not accepts(new, answer(fmt, [("get_weather", {"city": 3})]))  # wrong type
        assert not accepts(new, answer(fmt, [("get_weather", {"days": 2})]))  # missing required argument
        assert not accepts(new, answer(fmt, [("get_weather", {"a": 1, "b": 2})]))  # the other function's arguments
        assert not accepts(new, answer(fmt, [("add", {"a": 1, "b": "2"})]))
        assert not accepts(new, answer(fmt, []))


@pytest.mark.parametrize("fmt", FORMATS)
def test_named_function(compiler, fmt):
    new = matcher(compiler, fmt, NAMED)
    assert accepts(new, answer(fmt, [SUM]))
    assert not accepts(new, answer(fmt, [PARIS]))  # a valid call, but of the other function
    assert not accepts(new, answer(fmt, [SUM, SUM]))
    assert not accepts(new, answer(fmt, [("add", {"a": 1})]))
    assert not accepts(new, reply(fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_auto_allows_a_reply_or_valid_calls(compiler, fmt):
    new = matcher(compiler, fmt, "auto")
    assert accepts(new, reply(fmt))
    assert parse(fmt, reply(fmt)) == (REPLY, [])
    assert accepts(new, answer(fmt, [PARIS, SUM]))
    assert not accepts(new, answer(fmt, [("lookup", {})]))
    assert not accepts(new, answer(fmt, [("get_weather", {"city": None})]))
    assert not accepts(matcher(compiler, fmt, "auto", parallel=False), answer(fmt, [PARIS, SUM]))


@pytest.mark.parametrize("fmt", [ToolFormat.HERMES, ToolFormat.MISTRAL, ToolFormat.MISTRAL_ARGS])
def test_auto_calls_after_text_must_be_valid(compiler, fmt):
    new = matcher(compiler, fmt, "auto")
    text = "Let me check.\n" + answer(fmt, [PARIS])
    assert accepts(new, text)
    assert [c.name for c in parse(fmt, text)[1]] == ["get_weather"]
    assert not accepts(new, "Let me check.\n" + answer(fmt, [("get_weather", {"city": 3})]))
    marker = fmt.markers[0]
    assert not new().accept_string(f"Let me check. {marker} hello")  # after the marker only a call may follow


def test_llama3_auto_text_may_not_start_like_a_call(compiler):
    new = matcher(compiler, ToolFormat.LLAMA3, "auto")
    assert accepts(new, 'The format is {"name": "x"}.')  # a `{` later in a reply is text, for the parser too
    assert not new().accept_string('{"name": "lookup"')
    assert not new().accept_string("<|python_tag|>")
    assert not accepts(new, 'Sure: <|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}')


def test_no_constraint_for_none(compiler):
    for fmt in FORMATS:
        functions, choice = check_tools(TOOLS, "none")
        assert constraint_for(fmt, functions, choice) is None
    assert constraint_for(ToolFormat.HERMES, *check_tools(None, None)) is None


def test_markers_as_special_tokens_are_accepted_token_by_token(marker_tokenizer):
    """A real tool model emits its marker as one special token; the grammar takes that token."""
    info = xgrammar.TokenizerInfo.from_huggingface(marker_tokenizer, vocab_size=len(marker_tokenizer))
    compiler = xgrammar.GrammarCompiler(info)
    for fmt in (ToolFormat.HERMES, ToolFormat.MISTRAL):
        new = matcher(compiler, fmt, "required")
        ids = marker_tokenizer.encode(answer(fmt, [PARIS]), add_special_tokens=False)
        assert marker_tokenizer.convert_tokens_to_ids(fmt.markers[0]) in ids
        m = new()
        assert all(m.accept_token(i) for i in ids) and m.is_completed()


def test_a_schema_xgrammar_cannot_use_is_a_400():
    from appliance.errors import APIError

    parameters = {"type": "object", "properties": {"a": {"type": "strin"}}}
    bad = [{"type": "function", "function": {"name": "f", "parameters": parameters}}]
    functions, choice = check_tools(bad, "required")
    with pytest.raises(APIError) as error:
        constraint_for(ToolFormat.GENERIC, functions, choice)
    assert error.value.status == 400 and error.value.param == "tools"
    assert error.value.message == 'tools[0].function.parameters (f) cannot be enforced: Unsupported type "strin"'
