"""One error type for the public API, rendered in one place as an OpenAI error object.

{"error": {"message", "type", "param", "code"}} with the matching HTTP status, and Retry-After
on 429 and 503. Engine, key-store and validation errors are translated here, nowhere else.
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

    def to_response(self, headers: dict[str, str] | None = None) -> Response:
        headers = dict(headers or {})
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return Response(
            json.dumps(self.body()), status_code=self.status, headers=headers, media_type="application/json"
        )


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


def from_validation_error(error) -> APIError:
    """A pydantic ValidationError: name the first offending field, as OpenAI does."""
    first = error.errors(include_url=False, include_input=False)[0]
    loc = [str(p) for p in first.get("loc", ()) if not _is_union_tag(p)]
    param = ".".join(loc) or None
    message = first.get("msg", "invalid value")
    return invalid(param, f"{param}: {message}" if param else message)


def _is_union_tag(part) -> bool:
    # pydantic puts the union member it tried in the location ("str", "list[int]", "function-after[...]").
    return isinstance(part, str) and (
        part in ("str", "int", "float", "bool", "list", "dict")
        or "[" in part
        or part.startswith("function-")
        or part in ("TextPart", "Message")
    )
