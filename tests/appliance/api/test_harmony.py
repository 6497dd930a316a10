"""gpt-oss's harmony format end to end: a tiny gpt-oss model with gpt-oss's real template (harmony_model.py) through
the real engine, under the grammar of the request's tools, read with the openai SDK.

The model writes its analysis ("I should look up the forecast"), then a call to get_weather with
{"city": "Paris"}. Chat gives the reasoning, then the call, in OpenAI's streaming shapes; the
Responses API gives a reasoning item and a function call; reasoning_effort reaches the template.
"""

import json

import httpx
import pytest

from appliance.config import ModelSettings
from tests.appliance.api.harmony_model import CALL_ARGUMENTS, CALL_NAME, REASONING, WEATHER_TOOL, build_harmony_model
from tests.appliance.conftest import add_keys, make_config, openai_clients, put_in_store, start_server

MODEL = "tiny-gpt-oss"
ASK = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def harmony_server(default_model_path, tiny_model_path, tmp_path_factory):
    """gpt-oss as the default model, next to the tiny Llama (its template takes no reasoning effort)."""
    state, built = tmp_path_factory.mktemp("harmony-state"), tmp_path_factory.mktemp("harmony-model")
    put_in_store(state / "models", build_harmony_model(built / MODEL, default_model_path), MODEL)
    put_in_store(state / "models", tiny_model_path, "tiny-llama")
    server = start_server(make_config(MODEL, state, metrics_port=0, models={"tiny-llama": ModelSettings(pinned=True)}),
                          timeout_s=120)
    add_keys(server, server.app.config.keys_db_path)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(harmony_server):
    return openai_clients(harmony_server)[0]


def test_a_streamed_chat_with_tools_gives_reasoning_then_a_call_in_openai_shapes(client):
    request = dict(model=MODEL, messages=ASK, tools=[WEATHER_TOOL], max_tokens=80, temperature=0)
    chunks = list(client.chat.completions.create(stream=True, **request))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = [i for i, d in enumerate(deltas) if d.model_extra.get("reasoning")]
    calls = [i for i, d in enumerate(deltas) if d.tool_calls]
    assert "".join(deltas[i].model_extra["reasoning"] for i in reasoning) == REASONING
    assert all(d.model_extra.get("reasoning_content") == d.model_extra.get("reasoning") for d in deltas)
    assert reasoning and calls and max(reasoning) < min(calls)
    assert all(len(deltas[i].tool_calls) == 1 and deltas[i].tool_calls[0].index == 0 for i in calls)
    first, *rest = (deltas[i].tool_calls[0] for i in calls)
    assert first.id and first.type == "function" and first.function.name == CALL_NAME
    assert rest and all(r.id is None and r.function.name is None for r in rest)  # then the arguments as generated
    arguments = (first.function.arguments or "") + "".join(r.function.arguments for r in rest)
    assert json.loads(arguments) == CALL_ARGUMENTS
    assert not any(d.content for d in deltas) and chunks[-1].choices[0].finish_reason == "tool_calls"

    with client.chat.completions.stream(**request) as stream:
        growing = [e.arguments for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion().choices[0]
    [call] = final.message.tool_calls
    assert final.finish_reason == "tool_calls" and call.function.name == CALL_NAME
    assert call.function.arguments == growing[-1] and json.loads(growing[-1]) == CALL_ARGUMENTS


def test_the_whole_answer_and_the_history_sent_back(client):
    r = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER_TOOL], tool_choice="required",
                                       max_tokens=80, temperature=0)
    message = r.choices[0].message
    assert message.content is None and message.model_extra["reasoning"] == REASONING
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == \
        [(CALL_NAME, CALL_ARGUMENTS)]
    history = [*ASK, message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "sunny"}]
    again = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER_TOOL], max_tokens=80,
                                           temperature=0)
    assert again.choices[0].message.tool_calls  # the template took the history (this model only ever calls)


def test_responses_give_a_reasoning_item_and_a_function_call(client):
    tool = {"type": "function", "name": CALL_NAME, "parameters": WEATHER_TOOL["function"]["parameters"]}
    r = client.responses.create(model=MODEL, input="Weather in Paris?", instructions="Be brief.", tools=[tool],
                                reasoning={"effort": "low"}, max_output_tokens=80, temperature=0)
    reasoning, call = r.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == REASONING
    assert call.type == "function_call" and call.name == CALL_NAME and json.loads(call.arguments) == CALL_ARGUMENTS
    assert r.usage.output_tokens_details.reasoning_tokens > 0
    with client.responses.stream(model=MODEL, input="Weather in Paris?", tools=[tool], max_output_tokens=80,
                                 temperature=0) as events:
        types = [e.type for e in events]
        final = events.get_final_response()
    assert types.index("response.reasoning_text.delta") < types.index("response.function_call_arguments.delta")
    assert [item.type for item in final.output] == ["reasoning", "function_call"]


def test_reasoning_effort_is_taken_where_the_template_reads_it(harmony_server):
    def post(body):
        return httpx.post(harmony_server.base_url + "/v1/chat/completions", headers=harmony_server.headers(),
                          json={"messages": ASK, "max_tokens": 5, **body}, timeout=60)

    assert post({"model": MODEL, "reasoning_effort": "high"}).status_code == 200
    refused = post({"model": MODEL, "reasoning_effort": "minimal"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "reasoning_effort"
    assert "low, medium, high" in refused.json()["error"]["message"]
    plain = post({"model": "tiny-llama", "reasoning_effort": "low"})
    assert plain.status_code == 400 and plain.json()["error"]["param"] == "reasoning_effort"
    responses = httpx.post(harmony_server.base_url + "/v1/responses", headers=harmony_server.headers(), timeout=60,
                           json={"model": "tiny-llama", "input": "Hi", "reasoning": {"effort": "high"}})
    assert responses.status_code == 400 and responses.json()["error"]["param"] == "reasoning.effort"


def test_the_messages_api_gives_a_thinking_block_and_a_tool_use(harmony_server):
    tool = {"name": CALL_NAME, "input_schema": WEATHER_TOOL["function"]["parameters"]}
    r = httpx.post(harmony_server.base_url + "/v1/messages", timeout=60,
                   headers={"x-api-key": harmony_server.key, "anthropic-version": "2023-06-01"},
                   json={"model": MODEL, "max_tokens": 80, "tools": [tool], "messages": ASK[1:], "system": "Be brief."})
    message = r.json()
    assert r.status_code == 200 and message["stop_reason"] == "tool_use"
    thinking, use = message["content"]
    assert thinking["type"] == "thinking" and thinking["thinking"] == REASONING
    assert use["type"] == "tool_use" and use["name"] == CALL_NAME and use["input"] == CALL_ARGUMENTS
