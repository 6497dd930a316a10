"""The tool-call parsers: streaming equals parsing the whole text, however the text is cut; a call's
arguments stream as they are written; a call cut off is dropped, never content."""

import itertools
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.serving.formats.events import (
    ContentDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
    collect,
)
from appliance.serving.formats.tools.formats import ToolFormat
from appliance.serving.formats.tools.parsers import parse, parser_for

W = '{"name": "get_weather", "arguments": {"city": "New York", "note": "a } and a \\" inside"}}'
A = '{"name": "add", "arguments": {"a": 1, "b": [2.5, {"c": null}]}}'
W_ARGS = {"city": "New York", "note": 'a } and a " inside'}
A_ARGS = {"a": 1, "b": [2.5, {"c": None}]}
CUT = '<tool_call>\n{"name": "add", "arguments": {"a": 1'
NAME_3 = '<tool_call>{"name": 3, "arguments": {}}</tool_call>'
BAD_JSON = 'x <tool_call>{"name": "f", "arguments": {,}}</tool_call>'
LATE_BRACE = 'The {"name": "a", "parameters": {}} format'

# (format, text, expected content, expected [(name, arguments)])
CASES = [
    (ToolFormat.HERMES, "Just text, no calls.\n", "Just text, no calls.\n", []),
    (ToolFormat.HERMES, f"<tool_call>\n{W}\n</tool_call>", None, [("get_weather", W_ARGS)]),
    (ToolFormat.HERMES, f"Let me look.\n<tool_call>\n{W}\n</tool_call>\n<tool_call>\n{A}\n</tool_call>\n",
     "Let me look.", [("get_weather", W_ARGS), ("add", A_ARGS)]),
    (ToolFormat.HERMES, f"<tool_call>{A}</tool_call>Done <b>.", "Done <b>.", [("add", A_ARGS)]),
    (ToolFormat.HERMES, f"<tool_call>\n{A}", None, [("add", A_ARGS)]),  # no closing tag: still a call
    (ToolFormat.HERMES, f"<tool_call>\n{A}\n</tool", None, [("add", A_ARGS)]),  # cut inside the closing tag
    (ToolFormat.HERMES, CUT, None, []),  # broke off inside the call: dropped, not content
    (ToolFormat.HERMES, 'Hi <tool_call>\n{"na', "Hi", []),  # broke off before the name: dropped too
    (ToolFormat.HERMES, f"<tool_call>\n{A}\n</tool_call>\n{CUT}", None, [("add", A_ARGS)]),
    (ToolFormat.HERMES, "a <tool_call> not json </tool_call> b", "a <tool_call> not json </tool_call> b", []),
    (ToolFormat.HERMES, NAME_3, NAME_3, []),
    (ToolFormat.HERMES, BAD_JSON, "x", []),  # announced, then broken: incomplete, read to its closing tag
    (ToolFormat.HERMES, '<tool_call>{"arguments": {"a": 1}, "name": "f"}</tool_call>', None, [("f", {"a": 1})]),
    (ToolFormat.HERMES, '<tool_call>{"name": "f", "id": 3, "x": [1, {"y": "}"}], "arguments": {}}', None,
     [("f", {})]),  # other keys are skipped
    (ToolFormat.HERMES, '<tool_call>{"name": "f"}</tool_call> ok', '<tool_call>{"name": "f"}</tool_call> ok', []),
    (ToolFormat.HERMES, '<tool_call>{"name": "f", "arguments": "{\\"k\\": true}"}</tool_call>', None,
     [("f", {"k": True})]),
    (ToolFormat.LLAMA3, '{"name": "get_weather", "parameters": {"city": "Oslo"}}', None,
     [("get_weather", {"city": "Oslo"})]),
    (ToolFormat.LLAMA3, ' <|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1}}',
     None, [("a", {}), ("b", {"x": 1})]),
    (ToolFormat.LLAMA3, 'Sure. <|python_tag|>{"name": "a", "arguments": {}}', "Sure.", [("a", {})]),
    (ToolFormat.LLAMA3, '{"name": "a", "parameters": {}} and then text', "and then text", [("a", {})]),
    (ToolFormat.LLAMA3, '{"answer": 42}', '{"answer": 42}', []),  # a JSON reply that is not a call
    (ToolFormat.LLAMA3, LATE_BRACE, LATE_BRACE, []),
    (ToolFormat.LLAMA3, '{"name": "a", "parameters": {}}; nope', "; nope", [("a", {})]),
    (ToolFormat.LLAMA3, '{"name": "a", "parameters": {"x": [1, 2', None, []),  # a call cut off
    (ToolFormat.LLAMA3, '{"answer": 4', '{"answer": 4', []),  # a JSON reply cut off: no call in it
    (ToolFormat.LLAMA3, "<|python", "<|python", []),
    (ToolFormat.MISTRAL, f"[TOOL_CALLS][{W}, {A}]", None, [("get_weather", W_ARGS), ("add", A_ARGS)]),
    (ToolFormat.MISTRAL, f"Checking. [TOOL_CALLS] [ {A} ]", "Checking.", [("add", A_ARGS)]),
    (ToolFormat.MISTRAL, "[TOOL_CALLS] oops", "[TOOL_CALLS] oops", []),
    (ToolFormat.MISTRAL, f"[TOOL_CALLS][{A}, {{\"bad\": 1}}]", ', {"bad": 1}]', [("add", A_ARGS)]),
    (ToolFormat.MISTRAL, f"[TOOL_CALLS][{A}, {{\"name\": \"f\", \"argu", None, [("add", A_ARGS)]),
    (ToolFormat.MISTRAL, f"[TOOL_CALLS][{A}, ", None, [("add", A_ARGS)]),
    (ToolFormat.MISTRAL, "[TOOL_CALLS", "[TOOL_CALLS", []),
    (ToolFormat.MISTRAL_ARGS, '[TOOL_CALLS]get_weather[ARGS]{"city": "New York", "note": "a } and a \\" inside"}'
                              '[TOOL_CALLS]add[ARGS]{"a": 1, "b": [2.5, {"c": null}]}', None,
     [("get_weather", W_ARGS), ("add", A_ARGS)]),
    (ToolFormat.MISTRAL_ARGS, 'Checking. [TOOL_CALLS] add[CALL_ID]a1b2c3d4e[ARGS] {"a": 1, "b": [2.5, {"c": null}]} Done.',
     "Checking.Done.", [("add", A_ARGS)]),
    (ToolFormat.MISTRAL_ARGS, '[TOOL_CALLS]add[ARGS]{"a": 1', None, []),  # cut inside the arguments: dropped
    (ToolFormat.MISTRAL_ARGS, "Hi [TOOL_CALLS]ad", "Hi", []),  # cut inside the name: dropped
    (ToolFormat.MISTRAL_ARGS, "[TOOL_CALLS]not a name[ARGS]{}", "[TOOL_CALLS]not a name[ARGS]{}", []),
    (ToolFormat.GENERIC, '{"content": "Hi \\"you\\"\\n\\u00e9\\ud83d\\ude00 \\\\ end"}',
     'Hi "you"\n\u00e9\U0001f600 \\ end', []),
    (ToolFormat.GENERIC, ' { "content" : "plain" }\n', "plain", []),
    (ToolFormat.GENERIC, f'{{"tool_calls": [{W}, {A}]}}', None, [("get_weather", W_ARGS), ("add", A_ARGS)]),
    (ToolFormat.GENERIC, "I will not answer in JSON.", "I will not answer in JSON.", []),
    (ToolFormat.GENERIC, '{"answer": "x"}', '{"answer": "x"}', []),
    (ToolFormat.GENERIC, '{"content": "cut off here', "cut off here", []),
    (ToolFormat.GENERIC, '{"content": "cut \\u00', "cut \\u00", []),
    (ToolFormat.GENERIC, '{"tool_calls": [{"name": "f", "arg', None, []),
    (ToolFormat.GENERIC, f'{{"tool_calls": [{A}, {{"name": "lookup_flight", "arguments": {{"', None, [("add", A_ARGS)]),
    (ToolFormat.GENERIC, '{"content": "a", "tool_calls": []}', 'a, "tool_calls": []}', []),
    (ToolFormat.GENERIC, '{"tool_calls": []}', None, []),
]


def counter_ids():
    numbers = itertools.count()
    return lambda: f"call_{next(numbers)}"


def stream(fmt, pieces):
    parser = parser_for(fmt, new_id=counter_ids())
    events = []
    for piece in pieces:
        events += parser.feed(piece)
    return events + parser.close()


def simple(message):
    content, calls = message
    return content, [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("fmt, text, content, calls", CASES)
def test_whole_parse(fmt, text, content, calls):
    assert simple(parse(fmt, text)) == (content, calls)


@pytest.mark.parametrize("fmt, text, content, calls", CASES)
def test_one_character_at_a_time(fmt, text, content, calls):
    assert collect(stream(fmt, list(text))) == parse(fmt, text, new_id=counter_ids())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_chunking_of_any_prefix_equals_the_whole_parse(data):
    """Cut each text at random places, and cut it off anywhere (a model that broke off)."""
    fmt, text, _, _ = data.draw(st.sampled_from(CASES))
    text = text[: data.draw(st.integers(0, len(text)))] if data.draw(st.booleans()) else text
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    assert collect(stream(fmt, pieces)) == parse(fmt, text, new_id=counter_ids())


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet=st.sampled_from(list("ab <>{}[]\":,;\n\\_|/TOLCAStoolcalpyhngm")), max_size=12),
            st.sampled_from(["<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>", W, A, "{", "\"", "}"]),
        ),
        max_size=10,
    ),
    st.sampled_from(list(ToolFormat)),
    st.integers(1, 7),
)
def test_arbitrary_text_never_raises_and_streams_as_it_parses(parts, fmt, step):
    text = "".join(parts)
    pieces = [text[i : i + step] for i in range(0, len(text), step)]
    events = stream(fmt, pieces)
    assert collect(events) == parse(fmt, text, new_id=counter_ids())
    started, ended = [], []
    for event in events:
        if isinstance(event, ToolCallStart):
            assert event.index == len(started) and not (set(started) - set(ended))  # one call at a time, in order
            started.append(event.index)
        elif isinstance(event, ToolCallArguments):
            assert started and event.index == started[-1] not in ended
        elif isinstance(event, ToolCallEnd):
            assert started and event.index == started[-1]
            ended.append(event.index)
    for call in collect(events)[1]:
        assert isinstance(json.loads(call.arguments), dict)


def test_partial_marker_is_held_back_until_it_is_not_one():
    parser = parser_for(ToolFormat.HERMES)
    assert parser.feed("Hello <tool") == [ContentDelta("Hello")]
    assert parser.feed("s are") == [ContentDelta(" <tools are")]
    assert parser.feed(" fun <") == [ContentDelta(" fun")]
    assert parser.feed("tool_call>\n{\"name\": \"f\", ") == []  # a name, but no arguments yet
    [start, arguments] = parser.feed('"arguments": {"city": "Par')
    assert isinstance(start, ToolCallStart) and start.name == "f" and arguments == ToolCallArguments(0, '{"city": "Par')
    assert parser.feed('is"') == [ToolCallArguments(0, 'is"')]  # the arguments stream as they are written
    assert parser.feed('}}\n</tool_call>') == [ToolCallArguments(0, "}"), ToolCallEnd(0)]
    assert parser.close() == []


def test_each_call_has_one_id_given_when_it_starts():
    text = f"<tool_call>\n{W}\n</tool_call>\n<tool_call>\n{A}\n</tool_call>"
    parser = parser_for(ToolFormat.HERMES)  # the default ids
    events = [e for piece in re.findall(".{1,3}", text, re.S) for e in parser.feed(piece)] + parser.close()
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [s.index for s in starts] == [0, 1] and all(re.fullmatch(r"call_[0-9a-f]{24}", s.id) for s in starts)
    assert len({s.id for s in starts}) == 2
    assert [e.index for e in events if isinstance(e, ToolCallEnd)] == [0, 1]
    _, calls = collect(events)
    assert [c.id for c in calls] == [s.id for s in starts]


def test_generic_reply_streams_as_it_is_decoded():
    parser = parser_for(ToolFormat.GENERIC)
    assert parser.feed('{"content": "Hel') == [ContentDelta("Hel")]
    assert parser.feed("lo\\") == [ContentDelta("lo")]
    assert parser.feed('n wor') == [ContentDelta("\n wor")]
    assert parser.feed('ld\\ud83d') == [ContentDelta("ld")]
    assert parser.feed('\\ude00"}') == [ContentDelta("\U0001f600")]
    assert parser.close() == []
