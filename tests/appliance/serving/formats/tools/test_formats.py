"""detect_format reads the format from the template, and our Hermes template renders a tool history."""

import json

import pytest

from appliance.serving.formats.tools.formats import ToolFormat, detect_format, marker_token_ids
from appliance.serving.formats.tools.history import native_history
from appliance.serving.formats.tools.parsers import parse
from tests.appliance.serving.formats.tools.templates import (
    HERMES_TEMPLATE,
    LLAMA3_SNIPPET,
    MISTRAL_SNIPPET,
    PLAIN_TEMPLATE,
    VARIABLE_MARKER_SNIPPET,
)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize(
    "template, vocab, expected",
    [
        (HERMES_TEMPLATE, None, ToolFormat.HERMES),
        (LLAMA3_SNIPPET, None, ToolFormat.LLAMA3),
        (MISTRAL_SNIPPET, None, ToolFormat.MISTRAL),
        (PLAIN_TEMPLATE, {"<tool_call>": 5}, ToolFormat.GENERIC),  # a vocabulary cannot make a template render tools
        (None, None, ToolFormat.GENERIC),
        ("", None, ToolFormat.GENERIC),
        # markers that the template never mentions tools beside are not a tool format
        ("{{ '<tool_call>' }}{% for m in messages %}{{ m.content }}{% endfor %}", None, ToolFormat.GENERIC),
        (VARIABLE_MARKER_SNIPPET, {"<tool_call>", "</tool_call>"}, ToolFormat.HERMES),
        (VARIABLE_MARKER_SNIPPET, {"[TOOL_CALLS]": 9}, ToolFormat.MISTRAL),
        (VARIABLE_MARKER_SNIPPET, set(), ToolFormat.GENERIC),
    ],
)
def test_detect_format(template, vocab, expected):
    assert detect_format(template, vocab) is expected


def test_smollm2_template_has_no_tools(default_model_path, tokenizer):
    template = (default_model_path / "chat_template.jinja").read_text()
    assert detect_format(template, set()) is ToolFormat.GENERIC
    assert marker_token_ids(ToolFormat.HERMES, tokenizer) == frozenset()  # its markers are spelled out in pieces


def test_hermes_template_renders_tools_calls_and_results(tokenizer):
    assert detect_format(tokenizer.chat_template, tokenizer.get_vocab()) is ToolFormat.HERMES
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 21}'},
        {"role": "tool", "tool_call_id": "call_2", "content": '{"celsius": 25}'},
    ]
    text = tokenizer.apply_chat_template(
        native_history(messages), tools=[WEATHER], add_generation_prompt=True, tokenize=False
    )
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Functions")
    assert json.dumps(WEATHER, ensure_ascii=False) in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
    ) in text
    assert (
        '<|im_start|>user\n<tool_response>\n{"celsius": 21}\n</tool_response>\n'
        '<tool_response>\n{"celsius": 25}\n</tool_response><|im_end|>\n<|im_start|>assistant\n'
    ) in text
    assert text.endswith("<|im_start|>assistant\n")
    # What the template writes for a call is what the Hermes parser reads back.
    assistant_turn = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    content, calls = parse(ToolFormat.HERMES, assistant_turn)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"}),
    ]


def test_native_history_turns_argument_text_into_objects():
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": [1, 2]}'}}
    broken = {"id": "d", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call, broken]}]
    out = native_history(messages)
    assert out[1]["tool_calls"][0]["function"]["arguments"] == {"a": [1, 2]}
    assert out[1]["tool_calls"][1] == broken  # left as it came: the template shows what the client sent
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"a": [1, 2]}'  # the request is not changed


def test_mistral_history_gets_nine_character_ids():
    call = {"id": "call_0123456789abcdef01234567", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    kept = {"id": "a1B2c3D4e", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "assistant", "tool_calls": [call, kept]},
        {"role": "tool", "tool_call_id": call["id"], "content": "1"},
        {"role": "tool", "tool_call_id": kept["id"], "content": "2"},
    ]
    out = native_history(messages, ToolFormat.MISTRAL)
    new_id = out[0]["tool_calls"][0]["id"]
    assert len(new_id) == 9 and new_id.isalnum() and out[1]["tool_call_id"] == new_id
    assert out[0]["tool_calls"][1]["id"] == out[2]["tool_call_id"] == "a1B2c3D4e"
    assert native_history(messages, ToolFormat.HERMES)[1]["tool_call_id"] == call["id"]


def test_markers_that_are_special_tokens_vanish_when_special_tokens_are_skipped(marker_tokenizer):
    """Why the detokenizer must keep the markers: skip_special_tokens drops them, and the call with them."""
    text = '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    ids = marker_tokenizer.encode(text, add_special_tokens=False)
    assert ids[0] == marker_tokenizer.convert_tokens_to_ids("[TOOL_CALLS]")
    assert marker_token_ids(ToolFormat.MISTRAL, marker_tokenizer) == {ids[0]}
    assert len(marker_token_ids(ToolFormat.HERMES, marker_tokenizer)) == 2
    kept = marker_tokenizer.decode(ids, skip_special_tokens=False)
    skipped = marker_tokenizer.decode(ids, skip_special_tokens=True)
    assert [c.name for c in parse(ToolFormat.MISTRAL, kept)[1]] == ["get_weather"]
    assert parse(ToolFormat.MISTRAL, skipped)[1] == []
