"""Anthropic's Messages API with the real anthropic SDK as the client: plain, streamed (Anthropic's event
sequence), thinking blocks of a reasoning model, a tool-use round trip, count_tokens, its error shapes, and the
key's limits like any other request's.

tools_server's tiny-reasoning writes `<think> I think</think> Paris`; its tiny-hermes calls tools
under the grammar (and never stops calling, so max_tokens cuts it).
"""

import json

import anthropic
import httpx
import jsonschema
import pytest

from tests.appliance.api.test_tools import SCHEMAS, WEATHER

REASONING = "tiny-reasoning"
QUESTION = [{"role": "user", "content": "Where?"}]
TOOLS = [{"name": "get_weather", "description": "The weather in a city now", "input_schema": WEATHER}]


@pytest.fixture(scope="module")
def client(tools_server):
    return anthropic.Anthropic(base_url=tools_server.base_url, api_key=tools_server.key, max_retries=0, timeout=120)


def test_plain_message_with_thinking(client):
    m = client.messages.create(model=REASONING, max_tokens=20, system="Be brief.", messages=QUESTION)
    assert [(b.type, b.thinking if b.type == "thinking" else b.text) for b in m.content] == [
        ("thinking", " I think"), ("text", "Paris")]
    assert m.stop_reason == "end_turn" and m.role == "assistant" and m.model == REASONING
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0


def wire_events(server, body: dict) -> list[dict]:
    """The raw stream, with the key in x-api-key as Anthropic's clients send it: each event framed by its type."""
    events = []
    with httpx.stream("POST", server.base_url + "/v1/messages", json={**body, "stream": True}, timeout=60,
                      headers={"x-api-key": server.key, "anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for frame in r.read().decode().split("\n\n"):
            if frame:
                name, data = frame.split("\n")
                event = json.loads(data.removeprefix("data: "))
                assert name == f"event: {event['type']}"
                events.append(event)
    return events


def test_streamed_events_fold_into_the_same_message(client, tools_server):
    wire = [e["type"] for e in wire_events(tools_server, {"model": REASONING, "max_tokens": 20, "messages": QUESTION})]
    assert wire == ["message_start", "ping"] + ["content_block_start", "content_block_delta", "content_block_delta",
                                                "content_block_stop", "content_block_start", "content_block_delta",
                                                "content_block_stop", "message_delta", "message_stop"]
    with client.messages.stream(model=REASONING, max_tokens=20, messages=QUESTION) as stream:
        thinking = [event.thinking for event in stream if event.type == "thinking"]
        final = stream.get_final_message()
    assert thinking == [" I", " think"]  # the reasoning streams token by token
    assert [(b.type, b.thinking if b.type == "thinking" else b.text) for b in final.content] == [
        ("thinking", " I think"), ("text", "Paris")] and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6  # <think> I think</think> Paris and the end
    cut = client.messages.create(model=REASONING, max_tokens=2, messages=QUESTION)
    assert cut.stop_reason == "max_tokens"
    stopped = client.messages.create(model=REASONING, max_tokens=20, messages=QUESTION, stop_sequences=[" Par"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == " Par"


def test_tool_use_round_trip(client, tools_server):
    request = dict(model=tools_server.model, max_tokens=120, tools=TOOLS, extra_body={"temperature": 0},
                   tool_choice={"type": "any", "disable_parallel_tool_use": True})
    first = client.messages.create(messages=[{"role": "user", "content": "Weather in Paris?"}], **request)
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and call.name == "get_weather"
    jsonschema.validate(call.input, SCHEMAS["get_weather"])
    with client.messages.stream(messages=[{"role": "user", "content": "Weather in Paris?"}], **request) as stream:
        partial = [event.partial_json for event in stream if event.type == "content_block_delta"
                   and event.delta.type == "input_json_delta" for event in [event.delta]]
        streamed = stream.get_final_message()
    assert len(partial) > 3 and json.loads("".join(partial)) == streamed.content[0].input  # streamed as written
    history = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": first.content},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 C"},
                                            {"type": "text", "text": "And so?"}]}]
    answer = client.messages.create(model=tools_server.model, max_tokens=5, tools=TOOLS,
                                    tool_choice={"type": "none"}, messages=history)
    assert [b.type for b in answer.content] == ["text"]
    counted = client.messages.count_tokens(model=tools_server.model, tools=TOOLS, tool_choice={"type": "none"},
                                           messages=history)
    assert counted.input_tokens == answer.usage.input_tokens


def test_a_cut_call_is_left_out(client, tools_server):
    m = client.messages.create(model=tools_server.model, max_tokens=150, tools=TOOLS, tool_choice={"type": "any"},
                               extra_body={"temperature": 0}, messages=[{"role": "user", "content": "Weather?"}])
    assert m.stop_reason == "max_tokens" and {b.type for b in m.content} == {"tool_use"}  # no text of the cut call
    for block in m.content:
        jsonschema.validate(block.input, SCHEMAS["get_weather"])


def test_count_tokens_is_the_prompt_a_message_request_gets(client):
    counted = client.messages.count_tokens(model=REASONING, system="Be brief.", messages=QUESTION)
    sent = client.messages.create(model=REASONING, max_tokens=1, system="Be brief.", messages=QUESTION)
    assert counted.input_tokens == sent.usage.input_tokens > 0


def test_errors_take_anthropics_shape(client, tools_server):
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=tools_server.base_url, api_key="sk-app-nope-nope", max_retries=0).messages.create(
            model=REASONING, max_tokens=5, messages=QUESTION)
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=REASONING, max_tokens=5, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}])
    error = e.value.body["error"]
    assert error["type"] == "invalid_request_error" and "messages.0.content.0.source" in error["message"]
    assert "takes no images" in error["message"]
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="no-such-model", max_tokens=5, messages=QUESTION)
    assert e.value.body["error"]["type"] == "not_found_error"


def test_a_message_counts_against_the_keys_limits(tools_server):
    limited = anthropic.Anthropic(base_url=tools_server.base_url, api_key=tools_server.keys["rpm1"], max_retries=0)
    limited.messages.create(model=REASONING, max_tokens=2, messages=QUESTION)
    with pytest.raises(anthropic.RateLimitError) as e:
        limited.messages.create(model=REASONING, max_tokens=2, messages=QUESTION)
    assert e.value.body["error"]["type"] == "rate_limit_error" and e.value.response.headers["retry-after"]
