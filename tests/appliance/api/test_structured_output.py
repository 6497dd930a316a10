"""Structured outputs through the API with the openai SDK, on the real default model.

Unconstrained, SmolLM2-135M answers "reply in JSON" with a Markdown fence around broken JSON; with a
grammar in the sampler every answer must parse and validate, even at temperature 1.0.
"""

import asyncio
import json
import re

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.appliance.conftest import openai_clients

pytestmark = pytest.mark.slow

SCHEMAS = {
    "person": {  # required fields, numbers with bounds, an enum
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "role": {"type": "string", "enum": ["admin", "user", "guest"]},
        },
        "required": ["name", "age", "role"],
        "additionalProperties": False,
    },
    "order": {  # a nested object and an array of objects
        "type": "object",
        "properties": {
            "customer": {
                "type": "object",
                "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 9999},
                               "vip": {"type": "boolean"}},
                "required": ["id", "vip"],
                "additionalProperties": False,
            },
            "items": {
                "type": "array", "minItems": 1, "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                                   "quantity": {"type": "integer", "minimum": 1, "maximum": 9}},
                    "required": ["sku", "quantity"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["customer", "items"],
        "additionalProperties": False,
    },
    "measurement": {  # bounded numbers, a string pattern
        "type": "object",
        "properties": {
            "sensor": {"type": "string", "pattern": "^s[0-9]{2}$"},
            "celsius": {"type": "integer", "minimum": -40, "maximum": 60},
            "ok": {"type": "boolean"},
        },
        "required": ["sensor", "celsius", "ok"],
        "additionalProperties": False,
    },
    "tags": {  # an array of enums
        "type": "object",
        "properties": {
            "tags": {"type": "array", "minItems": 1, "maxItems": 4,
                     "items": {"type": "string", "enum": ["red", "green", "blue", "black"]}},
            "count": {"type": "integer", "minimum": 1, "maximum": 4},
        },
        "required": ["tags", "count"],
        "additionalProperties": False,
    },
    "address": {  # optional fields beside required ones, a zip pattern
        "type": "object",
        "properties": {
            "street": {"type": "string", "maxLength": 30},
            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            "country": {"type": "string", "enum": ["FR", "DE", "US"]},
            "floor": {"type": "integer", "minimum": 0, "maximum": 50},
        },
        "required": ["street", "zip", "country"],
        "additionalProperties": False,
    },
}
PROMPT = "Reply with a JSON object describing an example {name}."


@pytest.fixture
def clients(default_server):
    """Fresh per test: the async client belongs to the event loop of the test's asyncio.run."""
    return openai_clients(default_server, timeout_s=600)


def response_format(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


def test_50_json_schema_answers_at_temperature_1_all_validate(default_server, clients):
    _, client = clients

    async def one(name: str, i: int):
        r = await client.chat.completions.create(
            model=default_server.model, messages=[{"role": "user", "content": PROMPT.format(name=name)}],
            response_format=response_format(name), temperature=1.0, seed=i, max_tokens=150)
        return name, r.choices[0]

    async def all_of_them():
        return await asyncio.gather(*(one(name, i) for i in range(10) for name in SCHEMAS))

    answers = asyncio.run(all_of_them())
    assert len(answers) == 50
    for name, choice in answers:
        assert choice.finish_reason == "stop", (name, choice.message.content)
        jsonschema.validate(json.loads(choice.message.content), SCHEMAS[name])


def test_parse_returns_the_pydantic_object(default_server, clients):
    class City(BaseModel):
        name: str = Field(max_length=30)
        country: str = Field(max_length=30)
        population: int = Field(ge=0, le=50_000_000)

    client, _ = clients
    r = client.chat.completions.parse(
        model=default_server.model, messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        response_format=City, temperature=0, max_tokens=120)
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and city.name


def test_json_object_answers_parse_to_objects(default_server, clients):
    """Greedy, one at a time (the same numerics every run). The grammar bounds the structure, not the
    length: on other subjects this model loops inside the object until max_tokens ("length", a
    prefix), as it does inside a string at temperature 1.0; these six end (in float32), and must parse."""
    client, _ = clients
    for subject in ("a city", "a song", "a tree", "a house", "a cake", "a phone"):
        r = client.chat.completions.create(
            model=default_server.model, messages=[{"role": "user", "content": f"Describe {subject} as JSON."}],
            response_format={"type": "json_object"}, temperature=0, max_tokens=300)
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(json.loads(choice.message.content), dict)


def test_regex_and_choice_always_match(default_server, clients):
    client, _ = clients
    date = r"20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])"
    for seed in range(5):
        r = client.completions.create(model=default_server.model, prompt="Today's date is", max_tokens=20,
                                      temperature=1.0, seed=seed, extra_body={"structured_outputs": {"regex": date}})
        assert re.fullmatch(date, r.choices[0].text), r.choices[0].text
        r = client.chat.completions.create(
            model=default_server.model, messages=[{"role": "user", "content": "Is the sky green?"}],
            temperature=1.0, seed=seed, max_tokens=5, extra_body={"guided_choice": ["yes", "no", "maybe"]})
        assert r.choices[0].message.content in ("yes", "no", "maybe")


def test_streaming_gives_the_same_text_as_not_streaming(default_server, clients):
    client, _ = clients
    request = dict(model=default_server.model, messages=[{"role": "user", "content": PROMPT.format(name="order")}],
                   response_format=response_format("order"), temperature=1.0, seed=7, max_tokens=200)
    whole = client.chat.completions.create(**request).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**request, stream=True)
                       if c.choices)
    assert streamed == whole
    jsonschema.validate(json.loads(whole), SCHEMAS["order"])


def test_an_invalid_schema_is_a_400_naming_response_format(default_server, clients):
    client, _ = clients
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=default_server.model, messages=[{"role": "user", "content": "x"}], max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {
                "name": "bad", "schema": {"type": "object", "properties": {"a": {"type": "strnig"}}}}})
    assert e.value.body["param"] == "response_format" and "strnig" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=default_server.model, messages=[{"role": "user", "content": "x"}],
                                       max_tokens=5, extra_body={"guided_regex": "(unclosed"})
    assert e.value.body["param"] == "guided_regex"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=default_server.model, messages=[{"role": "user", "content": "x"}],
                                       max_tokens=5, response_format={"type": "json_object"},
                                       extra_body={"guided_choice": ["a", "b"]})
    assert "only one output constraint" in e.value.body["message"]
