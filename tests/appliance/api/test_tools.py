"""Tool calling through the API with the openai SDK.

Two kinds of model: a tiny random model whose chat template (our own, Hermes style) renders tools
(tools_server's default), and the real default model, whose template has no tool support (the
generic format). A random model writes garbage, so every valid call it makes is the grammar's doing.
"""

import asyncio
import json

import jsonschema
import openai
import pytest

from tests.appliance.conftest import chat_choice, openai_clients

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
FLIGHT = {
    "type": "object",
    "properties": {"origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
                   "destination": {"type": "string", "pattern": "^[A-Z]{3}$"},
                   "passengers": {"type": "integer", "minimum": 1, "maximum": 9}},
    "required": ["origin", "destination", "passengers"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER, "book_flight": FLIGHT}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "book_flight", "description": "Book a flight between airports",
                                      "parameters": FLIGHT}},
]
QUESTION = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]


def assert_valid_calls(message, only: str | None = None) -> None:
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert only is None or call.function.name == only
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def fifty_forced_calls(server, temperature: float = 1.0) -> list:
    """25 requests with tool_choice "required" and 25 naming book_flight (half of them one call only)."""
    _, client = openai_clients(server, timeout_s=600)

    async def one(i: int):
        choice = "required" if i % 2 else {"type": "function", "function": {"name": "book_flight"}}
        r = await client.chat.completions.create(
            model=server.model, messages=QUESTION, tools=TOOLS, tool_choice=choice, temperature=temperature,
            seed=i, max_tokens=120, parallel_tool_calls=i % 4 < 2)
        return choice, r.choices[0]

    async def all_of_them():
        return await asyncio.gather(*(one(i) for i in range(50)))

    return asyncio.run(all_of_them())


def check_fifty(answers) -> None:
    assert len(answers) == 50
    for choice, answer in answers:
        assert_valid_calls(answer.message, None if choice == "required" else "book_flight")
        if answer.finish_reason == "tool_calls":
            assert not answer.message.content


def tool_loop(server, stream: bool) -> str:
    """call -> the tool's result -> the final answer, with the SDK (its stream helper when `stream`)."""
    client, _ = openai_clients(server)
    request = dict(model=server.model, tools=TOOLS, max_tokens=120, temperature=0)
    first = chat_choice(client, stream, messages=QUESTION, tool_choice="required", parallel_tool_calls=False, **request)
    assert first.finish_reason == "tool_calls"
    assert_valid_calls(first.message)
    [call] = first.message.tool_calls
    history = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                             "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21, "sky": "clear"})},
    ]
    final = client.chat.completions.create(messages=history, tool_choice="none", **{**request, "max_tokens": 30})
    answer = final.choices[0]
    assert answer.message.tool_calls is None and answer.message.content
    return answer.message.content


# -- a model whose template renders tools ----------------------------------------------------------
def test_template_format_required_and_named_calls_validate_50_of_50(tools_server):
    check_fifty(fifty_forced_calls(tools_server))


@pytest.mark.parametrize("stream", [False, True])
def test_template_format_tool_loop(tools_server, stream):
    tool_loop(tools_server, stream)


def test_streamed_calls_arrive_as_openai_deltas(tools_server):
    client, _ = openai_clients(tools_server)
    chunks = list(client.chat.completions.create(
        model=tools_server.model, messages=QUESTION, tools=TOOLS, tool_choice="required", temperature=0,
        max_tokens=120, parallel_tool_calls=False, stream=True))
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id.startswith("call_") and deltas[0].function.name in SCHEMAS
    arguments = "".join(d.function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(arguments), SCHEMAS[deltas[0].function.name])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_choice_none_and_bad_tools(tools_server):
    client, _ = openai_clients(tools_server)
    r = client.chat.completions.create(model=tools_server.model, messages=QUESTION, tools=TOOLS, tool_choice="none",
                                       max_tokens=8, temperature=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=tools_server.model, messages=QUESTION, tools=TOOLS, max_tokens=8,
                                       tool_choice={"type": "function", "function": {"name": "no_such_function"}})
    assert e.value.body["param"] == "tool_choice" and "no_such_function" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=tools_server.model, max_tokens=8,
                                       messages=QUESTION + [{"role": "tool", "content": "21 C"}])
    assert e.value.body["param"] == "messages.1.tool_call_id"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=tools_server.model, messages=QUESTION, tools=TOOLS, max_tokens=8,
                                       response_format={"type": "json_object"})
    assert e.value.body["param"] == "response_format" and "tool_choice" in e.value.body["message"]


# -- the default model: no tool support in its template, the generic format ------------------------
@pytest.mark.slow
def test_generic_format_required_and_named_calls_validate_50_of_50(default_server):
    check_fifty(fifty_forced_calls(default_server))


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_generic_format_tool_loop(default_server, stream):
    tool_loop(default_server, stream)


@pytest.mark.slow
def test_generic_format_auto_may_answer_in_text(default_server):
    client, _ = openai_clients(default_server)
    r = client.chat.completions.create(model=default_server.model, tools=TOOLS, tool_choice="auto", temperature=0,
                                       max_tokens=60, messages=[{"role": "user", "content": "Say hello to me."}])
    answer = r.choices[0]
    assert answer.message.content or answer.message.tool_calls
    if answer.message.tool_calls:
        assert_valid_calls(answer.message)
