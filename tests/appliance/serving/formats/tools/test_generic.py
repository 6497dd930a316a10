"""The generic format: tools described in the system message, history as text, the JSON answer read back."""

import json

from appliance.serving.formats.tools.formats import ToolFormat
from appliance.serving.formats.tools.functions import check_tools
from appliance.serving.formats.tools.generic import answer_schema, messages_with_tools
from appliance.serving.formats.tools.parsers import parse
from tests.appliance.serving.formats.tools.templates import PLAIN_TEMPLATE

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {"type": "function", "function": {"name": "now"}},
]

HISTORY = [
    {"role": "user", "content": "Weather in Paris, and the time?"},
    {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "now", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "12:00"}]},
    {"role": "user", "content": "Thanks"},
]


def test_tools_are_described_in_a_new_system_message():
    messages = messages_with_tools(HISTORY[:1], TOOLS, "auto")
    assert [m["role"] for m in messages] == ["system", "user"]
    system = messages[0]["content"]
    assert "- get_weather: The weather in a city now." in system
    assert json.dumps(TOOLS[0]["function"]["parameters"]) in system
    assert "- now: (no description)" in system
    assert '{"content": "<your reply>"}' in system and '{"tool_calls": [' in system


def test_tools_join_the_callers_system_message():
    messages = messages_with_tools([{"role": "system", "content": "Be brief."}] + HISTORY[:1], TOOLS, "required")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"].startswith("Be brief.\n\nYou can call functions")
    assert "You must call at least one function" in messages[0]["content"]
    assert "your reply" not in messages[0]["content"]


def test_named_choice_and_single_calls_are_said():
    named = messages_with_tools(HISTORY[:1], TOOLS, {"type": "function", "function": {"name": "now"}})[0]["content"]
    assert "You must call the function now" in named and "exactly one call" in named
    single = messages_with_tools(HISTORY[:1], TOOLS, "auto", parallel_tool_calls=False)[0]["content"]
    assert "exactly one call" in single


def test_none_describes_no_tools_but_still_renders_the_history():
    messages = messages_with_tools(HISTORY, TOOLS, "none")
    assert messages[0] == HISTORY[0]
    assert all("You can call functions" not in m["content"] for m in messages)
    assert "tool_calls" not in messages[1]


def test_history_becomes_plain_role_and_content(tokenizer):
    messages = messages_with_tools(HISTORY, TOOLS, "auto")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "user"]
    assert all(set(m) == {"role", "content"} for m in messages)
    assert messages[2]["content"] == (
        'Checking.\n{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "now", "arguments": {}}]}'
    )
    assert messages[3]["content"] == (
        'Result of get_weather (call call_1):\n{"celsius": 21}\n\nResult of now (call call_2):\n12:00'
    )
    text = tokenizer.apply_chat_template(messages, chat_template=PLAIN_TEMPLATE, tokenize=False)
    assert "<|im_start|>assistant\nChecking.\n{\"tool_calls\"" in text


def test_the_rendered_call_is_what_the_parser_reads_back():
    assistant = messages_with_tools(HISTORY, TOOLS, "auto")[2]["content"].split("\n", 1)[1]
    content, calls = parse(ToolFormat.GENERIC, assistant)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"}), ("now", {})]


def test_answer_round_trip():
    reply = json.dumps({"content": 'Line one\nline "two" \u00e9 \U0001f600'})  # ASCII escapes, surrogate pair
    assert parse(ToolFormat.GENERIC, reply)[0] == 'Line one\nline "two" \u00e9 \U0001f600'
    answer = json.dumps({"tool_calls": [{"name": "get_weather", "arguments": {"city": "K\u00f8benhavn"}}]})
    content, calls = parse(ToolFormat.GENERIC, answer)
    assert content is None and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "K\u00f8benhavn"}


def test_answer_schema_shapes():
    functions, _ = check_tools(TOOLS, None)
    _, auto = check_tools(TOOLS, "auto")
    schema = answer_schema(functions, auto)
    reply, calls = schema["anyOf"]
    assert reply == {
        "type": "object", "properties": {"content": {"type": "string"}}, "required": ["content"],
        "additionalProperties": False,
    }
    branches = calls["properties"]["tool_calls"]["items"]["anyOf"]
    assert [b["properties"]["name"] for b in branches] == [{"const": "get_weather"}, {"const": "now"}]
    assert branches[0]["properties"]["arguments"] == TOOLS[0]["function"]["parameters"]
    assert answer_schema(functions, check_tools(TOOLS, "none")[1]) is None
