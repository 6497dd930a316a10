"""The Responses API (stored responses too) through the openai SDK's own responses.create and responses.stream."""

import json

import openai
import pytest

from tests.appliance.api.test_tools import TOOLS, WEATHER
from tests.appliance.conftest import openai_clients

FUNCTIONS = [{"type": "function", **tool["function"]} for tool in TOOLS]


def test_create_text_and_usage(client, live_server):
    chat = client.chat.completions.create(model=live_server.model, max_tokens=6, temperature=0,
                                          messages=[{"role": "system", "content": "Be brief"},
                                                    {"role": "user", "content": "Hi there"}])
    r = client.responses.create(model=live_server.model, instructions="Be brief", input="Hi there",
                                max_output_tokens=6, temperature=0)
    assert r.object == "response" and r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == chat.choices[0].message.content
    assert r.usage.input_tokens == chat.usage.prompt_tokens and r.usage.output_tokens == 6


def test_stream_folds_into_the_same_response(client, live_server):
    whole = client.responses.create(model=live_server.model, input="Tell me a story", max_output_tokens=5,
                                    temperature=0)
    with client.responses.stream(model=live_server.model, input="Tell me a story", max_output_tokens=5,
                                 temperature=0) as stream:
        events = list(stream)
    types = [event.type for event in events]
    assert types[0] == "response.created" and types[-1] == "response.incomplete"  # as OpenAI ends a cut one
    assert "response.output_item.added" in types and types.count("response.output_text.delta") >= 1
    final = events[-1].response
    assert final.output_text == whole.output_text and final.usage.output_tokens == 5


def test_previous_response_id_continues_the_keys_stored_response(client, live_server):
    first = client.responses.create(model=live_server.model, instructions="Be brief", input="My name is Bob",
                                    max_output_tokens=3, temperature=0)
    assert first.store is True
    follow = client.responses.create(model=live_server.model, previous_response_id=first.id, input="Who am I?",
                                     max_output_tokens=3, temperature=0, include=[])
    whole = client.responses.create(model=live_server.model, max_output_tokens=3, temperature=0, store=False,
                                    input=[{"role": "user", "content": "My name is Bob"}, *first.output,
                                           {"role": "user", "content": "Who am I?"}])
    assert follow.previous_response_id == first.id
    assert follow.usage.input_tokens == whole.usage.input_tokens  # the same conversation, instructions not carried
    assert follow.output_text == whole.output_text
    third = client.responses.create(model=live_server.model, previous_response_id=follow.id, input="Sure?",
                                    max_output_tokens=1)
    assert third.usage.input_tokens > follow.usage.input_tokens  # the chain goes on
    with pytest.raises(openai.NotFoundError) as e:  # store: false kept nothing
        client.responses.create(model=live_server.model, previous_response_id=whole.id, input="Hi")
    assert e.value.body["param"] == "previous_response_id"
    _, secret = live_server.service.keys.create("responses-other-key")
    other = openai.OpenAI(base_url=live_server.base_url + "/v1", api_key=secret, max_retries=0)
    with pytest.raises(openai.NotFoundError):  # a key sees only its own
        other.responses.create(model=live_server.model, previous_response_id=first.id, input="Hi")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=live_server.model, input="Hi", include=["reasoning.encrypted_content"])
    assert e.value.body["param"] == "include" and "reasoning.encrypted_content" in e.value.body["message"]


def test_function_tool_round_trip(tools_server):
    client, _ = openai_clients(tools_server)
    r = client.responses.create(model=tools_server.model, input="Weather in Paris?", tools=FUNCTIONS,
                                tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=80,
                                temperature=0)
    [call] = [item for item in r.output if item.type == "function_call"]
    assert call.name == "get_weather" and set(json.loads(call.arguments)) == set(WEATHER["required"])
    follow = client.responses.create(model=tools_server.model, tools=FUNCTIONS, max_output_tokens=5,
                                     input=[{"role": "user", "content": "Weather in Paris?"}, *r.output,
                                            {"type": "function_call_output", "call_id": call.call_id,
                                             "output": "18 C"}])
    assert follow.status in ("completed", "incomplete") and follow.usage.input_tokens > r.usage.input_tokens
    with client.responses.stream(model=tools_server.model, input="Weather?", tools=FUNCTIONS, parallel_tool_calls=False,
                                 tool_choice="required", max_output_tokens=80, temperature=0) as stream:
        final = stream.get_final_response()
    streamed = [item for item in final.output if item.type == "function_call"]
    assert streamed and json.loads(streamed[0].arguments)


def test_json_schema_text_format(client, live_server):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"],
              "additionalProperties": False}
    r = client.responses.create(model=live_server.model, input="A number", max_output_tokens=40, temperature=0,
                                text={"format": {"type": "json_schema", "name": "num", "schema": schema}})
    assert r.status == "completed" and isinstance(json.loads(r.output_text)["n"], int)


def test_refusals_name_the_responses_fields_not_the_chat_ones_it_is_served_as(client, live_server):
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=live_server.model, input="hi", max_output_tokens=4, tools=[tool],
                                text={"format": {"type": "json_object"}})
    assert refused.value.body["param"] == "text.format"
    assert refused.value.body["message"].startswith("text.format cannot be combined with tools")


def test_a_cut_leaves_only_complete_calls(tools_server):
    """max_output_tokens cuts the random model's endless parallel calls: the complete ones are the output."""
    client, _ = openai_clients(tools_server)
    request = dict(model=tools_server.model, input="Weather?", tools=FUNCTIONS, tool_choice="required",
                   max_output_tokens=150, temperature=0)
    r = client.responses.create(**request)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert {item.type for item in r.output} == {"function_call"}  # no message: nothing of the cut call is text
    complete = [json.loads(item.arguments) for item in r.output]
    with client.responses.stream(**request) as stream:
        events = list(stream)
    done = [e.item for e in events if e.type == "response.output_item.done"]
    final = events[-1].response
    assert events[-1].type == "response.incomplete"
    assert [json.loads(item.arguments) for item in final.output] == complete
    statuses = [item.status for item in done]
    assert statuses in (["completed"] * len(complete), ["completed"] * len(complete) + ["incomplete"])  # a cut call
