"""/openapi.json from the same declarations that validate requests: what it says is what is accepted."""

from typing import Any

from pydantic import BaseModel

from appliance.api.schemas.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from appliance.api.schemas.common import ErrorResponse
from appliance.api.schemas.completions import Completion, CompletionRequest
from appliance.api.schemas.embeddings import EmbeddingList, EmbeddingRequest, ModelList
from appliance.api.schemas.messages import (
    AnthropicError,
    CountTokensRequest,
    CountTokensResponse,
    Message,
    MessagesRequest,
)
from appliance.api.schemas.responses import Response, ResponsesRequest
from appliance.api.schemas.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizePromptRequest,
    TokenizeResponse,
)
from appliance.errors import anthropic_route

# path, method, request bodies (any one of them), answer, summary
ROUTES: list[tuple[str, str, tuple[type[BaseModel], ...], type[BaseModel], str]] = [
    ("/v1/chat/completions", "post", (ChatCompletionRequest,), ChatCompletion,
     "Create a chat completion (stream: SSE of ChatCompletionChunk)"),
    ("/v1/completions", "post", (CompletionRequest,), Completion,
     "Create a text completion (stream: SSE of Completion chunks)"),
    ("/v1/responses", "post", (ResponsesRequest,), Response,
     "Create a response, kept for previous_response_id unless store is false (stream: SSE of response events)"),
    ("/v1/messages", "post", (MessagesRequest,), Message,
     "Create a message, as Anthropic's Messages API (stream: its event stream; errors in Anthropic's shape)"),
    ("/v1/messages/count_tokens", "post", (CountTokensRequest,), CountTokensResponse,
     "Count a message request's input tokens"),
    ("/v1/embeddings", "post", (EmbeddingRequest,), EmbeddingList, "Embed inputs (mean-pooled last hidden states)"),
    ("/v1/models", "get", (), ModelList, "List the served models"),
    ("/tokenize", "post", (TokenizePromptRequest, TokenizeChatRequest), TokenizeResponse,
     "A prompt's or chat's token ids, as the model would see them"),
    ("/detokenize", "post", (DetokenizeRequest,), DetokenizeResponse, "The text of token ids"),
]
EXTRA_SCHEMAS = [ChatCompletionChunk, ErrorResponse, AnthropicError]
# What a streamed answer's `data:` lines carry, by route (with `stream: true`).
STREAMS: dict[str, tuple[type[BaseModel] | None, str]] = {
    "/v1/chat/completions": (ChatCompletionChunk, "`data: ` and a ChatCompletionChunk per event, `data: [DONE]` last"),
    "/v1/completions": (Completion, "`data: ` and a Completion chunk per event, `data: [DONE]` last"),
    "/v1/responses": (None, "`data: ` and a response event (an object with `type` and `sequence_number`) per event"),
    "/v1/messages": (None, "`event: <type>` and `data: ` an event of that type (message_start, content_block_start, "
                           "content_block_delta, content_block_stop, message_delta, message_stop, ping, error)"),
}


def event_stream(event: type[BaseModel] | None, description: str, refs: dict) -> dict[str, Any]:
    """A text/event-stream answer: OpenAPI 3.1 has no schema for the events themselves, so the event's schema is
    named beside the text's in an extension (what OpenAPI 3.2 calls itemSchema)."""
    stream: dict[str, Any] = {"schema": {"type": "string", "description": description}}
    if event is not None:
        stream["x-event-schema"] = refs[(event, "serialization")]
    return stream


def openapi_spec(version: str) -> dict[str, Any]:
    from pydantic.json_schema import models_json_schema

    models = [(m, "validation") for _, _, requests, _, _ in ROUTES for m in requests]
    models += [(m, "serialization") for _, _, _, m, _ in ROUTES] + [(m, "serialization") for m in EXTRA_SCHEMAS]
    refs, schema = models_json_schema(models, ref_template="#/components/schemas/{model}")
    paths: dict[str, Any] = {}
    errors = {False: ("An OpenAI error object", refs[(ErrorResponse, "serialization")]),
              True: ("An Anthropic error object", refs[(AnthropicError, "serialization")])}
    for path, method, requests, response, summary in ROUTES:
        error_text, error_ref = errors[anthropic_route(path)]
        content: dict[str, Any] = {"application/json": {"schema": refs[(response, "serialization")]}}
        if path in STREAMS:
            content["text/event-stream"] = event_stream(*STREAMS[path], refs)
        op: dict[str, Any] = {
            "summary": summary,
            "security": [{"bearer": []}, {"x-api-key": []}],
            "responses": {
                "200": {"description": "OK: JSON, or server-sent events with stream: true", "content": content},
                "default": {"description": error_text, "content": {"application/json": {"schema": error_ref}}},
            },
        }
        if requests:
            bodies = [refs[(m, "validation")] for m in requests]
            body = bodies[0] if len(bodies) == 1 else {"anyOf": bodies}
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        paths[path] = {method: op}
    for path, summary in (("/health", "Liveness: process and engine loop alive"),
                          ("/ready", "Readiness: model loaded, not draining, canary passed")):
        paths[path] = {"get": {"summary": summary, "responses": {
            "200": {"description": "OK"}, "503": {"description": "Not healthy / not ready; the body says why"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "appliance: OpenAI-compatible API", "version": version},
        "paths": paths,
        "components": {"schemas": schema.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                           "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
    }
