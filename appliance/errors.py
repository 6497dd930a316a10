"""One error type for the public API, rendered in one place as an OpenAI error object.

{"error": {"message", "type", "param", "code"}} with the matching HTTP status, and Retry-After
on 429 and 503; the Messages API's routes get Anthropic's shape of the same error,
{"type": "error", "error": {"type", "message"}}. Engine, key-store and validation errors are
translated here, nowhere else.
"""

import json
import math
from contextlib import contextmanager

from starlette.responses import Response

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    501: "invalid_request_error",
    503: "service_unavailable_error",
}

ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}


def anthropic_route(path: str) -> bool:
    """The Messages API's routes, whose errors take Anthropic's shape."""
    return path == "/v1/messages" or path.startswith("/v1/messages/")


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        retry_after_s: float | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ERROR_TYPES.get(status, "invalid_request_error")
        self.retry_after_s = retry_after_s

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def renamed(self, names: dict[str, str]) -> "APIError":
        """The same error naming its field as another API calls it (a Responses request served as a chat)."""
        new = names.get(self.param)
        if new is None:
            return self
        return APIError(self.status, self.message.replace(self.param, new), param=new, code=self.code, type=self.type,
                        retry_after_s=self.retry_after_s)

    def anthropic_body(self) -> dict:
        """Anthropic's shape: its error type by status; the field at fault is named in the message."""
        kind = ANTHROPIC_TYPES.get(self.status, "api_error" if self.status >= 500 else "invalid_request_error")
        named = self.param is None or self.message.startswith(self.param)
        return {"type": "error", "error": {"type": kind, "message": self.message if named else
                                           f"{self.param}: {self.message}"}}

    def to_response(self, headers: dict[str, str] | None = None, anthropic: bool = False) -> Response:
        headers = dict(headers or {})
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        body = self.anthropic_body() if anthropic else self.body()
        return Response(json.dumps(body), status_code=self.status, headers=headers, media_type="application/json")


def invalid(param: str | None, message: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_parameter")


def from_engine_error(error: Exception, retry_after_s: float, params: dict[str, str] | None = None) -> APIError:
    """Map an engine exception to the API's error; unknown ones are not handled here.

    `params` renames the engine's parameter names to the request fields they came from
    (the engine's "prompt" is a chat request's "messages", its "structured_output" the
    request's "response_format"...).
    """
    from engine.errors import InvalidParameter, NoModelLoaded, PromptTooLong, QueueFull

    params = params or {}
    prompt_param = params.get("prompt", "prompt")
    if isinstance(error, InvalidParameter):
        return invalid(params.get(error.param, error.param), str(error))
    if isinstance(error, PromptTooLong):
        return APIError(
            400,
            f"This model's maximum context length is {error.max_model_len} tokens, but the prompt has "
            f"{error.num_prompt_tokens} tokens. Shorten the prompt.",
            param=prompt_param,
            code="context_length_exceeded",
        )
    if isinstance(error, QueueFull):
        return APIError(
            503, "the server is overloaded: its request queue is full; retry later",
            code="overloaded", retry_after_s=retry_after_s,
        )
    if isinstance(error, NoModelLoaded):
        return APIError(503, "no model is loaded yet; retry later", code="no_model_loaded", retry_after_s=retry_after_s)
    raise error


@contextmanager
def engine_errors(retry_after_s: float, params: dict[str, str] | None = None):
    """Engine exceptions raised inside become the API's errors (see from_engine_error); others pass through."""
    from engine.errors import EngineError

    try:
        yield
    except EngineError as e:
        raise from_engine_error(e, retry_after_s, params) from None


# Why a field or content part the request schemas (appliance/api/schemas/) do not declare is refused, for the
# 400 that names it; any other undeclared field is refused as not implemented.
REFUSED_REASONS = {
    "modalities": "this server answers in text only",
    "audio": "this server answers in text only",
    "prediction": "predicted outputs are not implemented",
    "web_search_options": "this server has no web search",
    "service_tier": "this server has a single tier",
    "functions": "the deprecated functions field is not implemented; use tools",
    "function_call": "the deprecated function_call field is not implemented; use tool_choice",
    "best_of": "best_of is not implemented; use n",
    "conversation": "conversations are not kept; continue a response with previous_response_id, or send the whole "
                    "conversation as input",
    "background": "background responses are not implemented; ask without background",
    "image_url": "images go in user messages",
    "input_audio": "this model reads text only",
    "file": "this model reads text only",
    "input_image": "images go in user messages",
    "input_file": "this model reads text only",
    "container": "there are no code execution containers here",
    "mcp_servers": "MCP servers are not called from here",
    "image": "images go in a user turn's content",
    "document": "this model reads text only",
    "suffix": "insertion (a suffix after the completion) is not implemented",
    # A message's fields that belong to another role (each role has its own shape, as OpenAI's).
    "tool_calls": "only assistant messages carry tool_calls",
    "tool_call_id": "only tool messages answer a call",
}


def from_validation_error(error, refused_reasons: dict[str, str] = REFUSED_REASONS) -> APIError:
    """A pydantic ValidationError: name the first offending field, as OpenAI does.

    A field the request model does not declare, or a content part of a type it does not take, is
    named with the reason it is refused (`refused_reasons`, by field or part type) and what to do."""
    reasons = refused_reasons
    errors = error.errors(include_url=False)
    accepted = _accepting_member_error(errors)
    refused = None if accepted else next((e for e in errors if _refused_part(e, reasons)), None)
    first = accepted or refused or errors[0]
    loc = [str(p) for p in first.get("loc", ()) if not _is_union_tag(p)]
    param = ".".join(loc) or None
    if first["type"] == "extra_forbidden":
        name = loc[-1] if loc else "?"
        why = reasons.get(name, "this server does not implement it")
        return invalid(param, f"{param}: the field '{name}' is not supported: {why}; remove it "
                              "(docs/API.md lists what each endpoint accepts)")
    if param is not None and loc[0] == "logit_bias":  # every bad entry at once, so one fix is enough
        locs = [[str(p) for p in e["loc"] if not _is_union_tag(p)] for e in errors]
        bad = sorted({loc[1] for loc in locs if len(loc) > 1 and loc[0] == "logit_bias"})
        return invalid("logit_bias", f"logit_bias maps token ids (non-negative integers, as strings) to biases "
                                     f"between -100 and 100; these entries are not: {', '.join(bad)}")
    if refused is not None:
        part = _part_type(refused)
        return invalid(param, f"{param}: content of type '{part}' is not supported: {reasons[part]}; send text")
    message = first.get("msg", "invalid value")
    return invalid(param, f"{param}: {message}" if param else message)


def _part_type(error: dict) -> str | None:
    """The `type` of the content part an error is about: its input where the error is about the type field, or the
    part's own `type` where a tagged union found no member for it."""
    value = error.get("input")
    loc = error.get("loc", ())
    if error["type"] == "union_tag_invalid" and isinstance(value, dict):
        return value.get("type") if isinstance(value.get("type"), str) else None
    if error["type"] in ("literal_error", "union_tag_invalid") and loc and loc[-1] == "type" and isinstance(value, str):
        return value
    return None


def _accepting_member_error(errors: list[dict]) -> dict | None:
    """Where a content part's type is one that a member of its union takes (an image_url part in a user message),
    that member's first error: the other members' complaints that the type is not theirs are beside the point."""
    for e in errors:
        if e["type"] != "literal_error" or _part_type(e) is None or len(e["loc"]) < 2:
            continue
        depth = len(e["loc"]) - 2  # where the loc names the union's member: (..., index, Member, "type")
        prefix = tuple(e["loc"][:depth])
        rejecting = {f["loc"][depth] for f in errors
                     if f["type"] == "literal_error" and _part_type(f) is not None and tuple(f["loc"][:depth]) == prefix}
        for f in errors:
            if len(f["loc"]) > depth and tuple(f["loc"][:depth]) == prefix and f["loc"][depth] not in rejecting:
                return f
    return None


def _refused_part(error: dict, reasons: dict[str, str]) -> bool:
    """A content part's `type` that is one of the refused ones (image_url, input_audio, image...)."""
    return _part_type(error) in reasons


def _is_union_tag(part) -> bool:
    # pydantic puts the union member it tried in the location ("str", "list[int]", "function-after[...]").
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "list", "dict")
        or "[" in part
        or part.startswith(("function-", "constrained-"))
        or part in ("TextPart", "RefusalPart", "ImageURLPart", "InputText", "InputImage", "InputMessage",
                    "UserInputMessage", "SystemMessage", "UserMessage", "AssistantMessage", "ToolMessage",
                    "FunctionMessage")
    )
