"""Reasoning models through the API with the openai SDK: `<think>…</think>` becomes `reasoning` and
`reasoning_content`, streamed and not, before the answer, a tool call or a structured answer.

The model (reasoning_model.py) writes `<think> I think</think> Paris`, or the same without its
`<think>` where the template opened the reasoning (the system message `/think`).
"""

import json

import pytest

from appliance.serving.formats.think import ThinkParser
from appliance.serving.formats.events import ContentDelta, ReasoningDelta
from tests.appliance.conftest import chat_choice, openai_clients

MODEL = "tiny-reasoning"  # on tools_server
CITY = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris"]}}, "required": ["city"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": CITY}}]


def ask(system: str | None = None) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "Where?"}]


@pytest.fixture(scope="module")
def client(tools_server):
    return openai_clients(tools_server)[0]


@pytest.mark.parametrize("system", [None, "/think"], ids=["model-opens", "template-opens"])
def test_reasoning_is_split_from_the_answer(client, system):
    r = client.chat.completions.create(model=MODEL, messages=ask(system), max_tokens=20, temperature=0)
    message = r.choices[0].message
    assert message.content == "Paris" and r.choices[0].finish_reason == "stop"
    assert message.model_extra["reasoning"] == message.model_extra["reasoning_content"] == " I think"


def test_streamed_reasoning_comes_as_deltas_of_both_fields_before_the_content(client):
    chunks = list(client.chat.completions.create(model=MODEL, messages=ask(), max_tokens=20, temperature=0,
                                                 stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    reasoning = [d.model_extra.get("reasoning") for d in deltas]
    assert [d.model_extra.get("reasoning_content") for d in deltas] == reasoning
    assert "".join(r for r in reasoning if r) == " I think"
    content = [i for i, d in enumerate(deltas) if d.content]
    assert "".join(d.content or "" for d in deltas) == "Paris"
    assert max(i for i, r in enumerate(reasoning) if r) < min(content)
    final = chat_choice(client, True, model=MODEL, messages=ask("/think"), max_tokens=20, temperature=0).message
    assert final.content == "Paris" and final.model_extra["reasoning_content"] == " I think"


def test_a_closed_reasoning_and_a_model_without_a_format_change_nothing(client, live_server):
    r = client.chat.completions.create(model=MODEL, max_tokens=20, temperature=0,
                                       messages=ask("/no_think") + [{"role": "assistant", "content": "Paris",
                                                                     "reasoning": "It is Paris"},
                                                                    {"role": "user", "content": "Sure?"}])
    assert r.choices[0].message.model_extra["reasoning"] == " I think"  # the model reasons all the same
    plain, _ = openai_clients(live_server)
    r = plain.chat.completions.create(model=live_server.model, messages=ask(), max_tokens=4, temperature=0)
    assert r.choices[0].message.content and "reasoning" not in r.choices[0].message.model_extra


@pytest.mark.parametrize("stream", [False, True])
def test_the_grammar_holds_the_answer_after_the_reasoning(client, stream):
    request = dict(model=MODEL, messages=ask("/think"), max_tokens=200, temperature=0)  # char by char
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}
    choice = chat_choice(client, stream, tools=TOOLS, tool_choice="required", parallel_tool_calls=False, **request)
    assert choice.finish_reason == "tool_calls" and choice.message.model_extra["reasoning"] == " I think"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    answer = client.chat.completions.create(response_format=fmt, **request).choices[0].message
    assert json.loads(answer.content) == {"city": "Paris"} and answer.model_extra["reasoning"] == " I think"


def test_responses_put_the_reasoning_in_its_own_item_first(client):
    r = client.responses.create(model=MODEL, input="Where?", instructions="/think", max_output_tokens=20,
                                temperature=0)
    reasoning, message = r.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == " I think"
    assert message.type == "message" and r.output_text == "Paris"
    assert r.usage.output_tokens_details.reasoning_tokens == 3  # " I", " think", "</think>"
    with client.responses.stream(model=MODEL, input="Where?", instructions="/think", max_output_tokens=20,
                                 temperature=0) as events:
        types = [e.type for e in events]
        final = events.get_final_response()
    assert types.index("response.reasoning_text.delta") < types.index("response.output_text.delta")
    assert final.output[0].content[0].text == " I think" and final.output_text == "Paris"
    again = client.responses.create(model=MODEL, instructions="/think", max_output_tokens=20, temperature=0,
                                    input=[{"role": "user", "content": "Where?"}, *r.output,
                                           {"role": "user", "content": "Sure?"}])
    assert again.output_text == "Paris"  # an earlier reasoning item is valid input


def test_the_split_does_not_depend_on_how_the_text_is_cut():
    text = "\n<think>a</thi</think>\n\nb<think>c"
    whole = ThinkParser(opened=False)
    expected = whole.feed(text) + whole.close()
    assert expected == [ReasoningDelta("a</thi"), ContentDelta("b<think>c")]
    for cut in range(len(text) + 1):
        parser = ThinkParser(opened=False)
        events = parser.feed(text[:cut]) + parser.feed(text[cut:]) + parser.close()
        assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "a</thi"
        assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == "b<think>c"
    opened = ThinkParser(opened=True)
    assert opened.feed("cut off") + opened.close() == [ReasoningDelta("cut off")]  # never closed: all reasoning
