"""/openapi.json says exactly what the server accepts: schemathesis, against the live server.

For every operation, requests drawn from its schema (positive) must be answered 2xx, requests
that break it (negative) 4xx, and none 5xx. The draw is fixed (derandomized) and bounded, and
positive requests generate at most MAX_GENERATED tokens, so it runs in seconds on the tiny model.

A few checks depend on the served model or compare values, which a JSON schema cannot say
(docs/API.md lists them): a schema-valid request they refuse is a 400 naming them (BEYOND_SCHEMA).
"""

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from appliance.api.schemas.structured import CONSTRAINT_FIELDS

EXAMPLES = 30  # per operation and mode
MAX_GENERATED = 2
LENGTH_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
OPERATIONS = [("/v1/chat/completions", "POST"), ("/v1/completions", "POST"), ("/v1/responses", "POST"),
              ("/v1/messages", "POST"), ("/v1/messages/count_tokens", "POST"), ("/v1/embeddings", "POST"),
              ("/v1/models", "GET"), ("/tokenize", "POST"), ("/detokenize", "POST")]


# (params, message pattern) of the refusals the schema cannot state, as docs/API.md lists them
BEYOND_SCHEMA = [
    (("prompt", "input", "messages"), r"token ids must be integers in \[0, \d+\)|maximum context length"),
    (("tokens",), r"^token ids outside the vocabulary"),
    (("stop_token_ids",), r"below the vocabulary size"),
    (("logit_bias",), r"outside the vocabulary"),
    (("n",), r"^prompts × n may be at most"),
    (("min_tokens",), r"^min_tokens must be between 0 and max_tokens"),
    (("messages",), r"^the messages do not fit the model's chat template"),
    (CONSTRAINT_FIELDS, r"^invalid (json|json_object|regex|choice|grammar)\b"),
    (("tools",), r"names must be unique|cannot be enforced"),
    (("tool_choice",), r"which is not in tools|needs at least one tool|only allowed when tools are given"),
    (("tool_choice.name",), r"needs the name of the tool"),
    (("include",), r"is not available here"),
    (("previous_response_id",), r"^no stored response"),
    (("output_config.format", "text.format", "response_format"), r"cannot be combined with tools|^invalid json\b"),
]
MESSAGES_BLOCK = re.compile(r"^messages\.\d+\.content\.\d+\.type$")  # a block in the wrong turn (docs/API.md)


def beyond_schema(response) -> bool:
    if response.status_code != 400:
        return False
    body = response.json()
    if body.get("type") == "error":  # Anthropic's shape names the field at the start of its message
        message = body["error"]["message"]
        param = message.partition(": ")[0]
        return any(message.startswith(p) and re.search(pattern, message) for params, pattern in BEYOND_SCHEMA
                   for p in params) or bool(MESSAGES_BLOCK.match(param) and "belongs in a" in message)
    error = body["error"]
    return any(error["param"] in params and re.search(pattern, error["message"]) for params, pattern in BEYOND_SCHEMA)


def bounded(case) -> None:
    """A positive request's output cut to MAX_GENERATED tokens: still schema-valid, and fast."""
    body = case.body
    if case.meta.generation.mode.is_positive and isinstance(body, dict):
        field = next((f for f in LENGTH_FIELDS if f in body), None)
        generates = case.path not in ("/v1/embeddings", "/v1/messages/count_tokens")
        if field is None and generates and case.path.startswith("/v1/") and case.method == "POST":
            field = "max_output_tokens" if case.path == "/v1/responses" else "max_tokens"
        if field is not None:
            body[field] = min(body.get(field) or MAX_GENERATED, MAX_GENERATED)
            if "min_tokens" in body:
                body["min_tokens"] = min(body["min_tokens"], body[field])


@pytest.fixture(scope="module")
def api_schema(live_server):
    return schemathesis.openapi.from_url(live_server.base_url + "/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
@pytest.mark.parametrize("path,method", OPERATIONS, ids=[p for p, _ in OPERATIONS])
def test_requests_drawn_from_the_schema(live_server, api_schema, path, method, mode):
    checks = [not_a_server_error, positive_data_acceptance if mode.is_positive else negative_data_rejection]

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    def check(case):
        bounded(case)
        response = case.call(base_url=live_server.base_url, headers=live_server.headers())
        if not (mode.is_positive and beyond_schema(response)):
            case.validate_response(response, checks=checks)

    check()
