"""What every API route does first: read the body, validate it, name the key, start the request's context."""

import json

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from appliance.errors import APIError, from_validation_error, invalid
from appliance.ops.tracing import SPAN_STATE
from appliance.serving.context import RequestContext
from appliance.serving.served_model import ModelLease
from appliance.serving.service import Service


def json_number(text: str) -> float | int:
    """A JSON number with a fraction or exponent: an int when it has no fractional part (18.0, 1e3), as JSON
    Schema counts integers and /openapi.json promises; the strict request models refuse floats where they
    take integers."""
    value = float(text)
    return int(value) if value.is_integer() else value


async def read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object; 413 as soon as it passes `limit` bytes, before parsing."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(413, f"the request body is {length} bytes; the limit is {limit}", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"the request body is over the limit of {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks), parse_float=json_number)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, 5000-digit numbers, deep nesting
        raise invalid(None, f"the request body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise invalid(None, "the request body must be a JSON object")
    return data


def parse(model: type[BaseModel], data: dict):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e) from None
    except RecursionError:
        raise invalid(None, "the request body is nested too deeply") from None


async def read_request(request: Request, model: type[BaseModel]):
    """The validated body of an API request (read once: a fallback after a failure runs the route again)."""
    service: Service = request.app.state.service
    data = getattr(request.state, "body", None)
    if data is None:
        data = request.state.body = await read_json(request, service.config.max_request_body_bytes)
    return parse(model, data)


def api_key(request: Request) -> str | None:
    """The key a request sends: as a Bearer token (OpenAI's clients), or in x-api-key (Anthropic's)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-api-key", "").strip() or None


def client_address(request: Request) -> str | None:
    """The caller's address: the peer's, or what a trusted proxy (forwarded_allow_ips) says it is."""
    return request.client.host if request.client is not None else None


def start_context(request: Request, id_prefix: str, endpoint: str, model: str) -> RequestContext:
    """The request's record, kept on the request first, so that a refusal's log line can name its key and model."""
    service: Service = request.app.state.service
    ctx = request.state.context = RequestContext(service.new_request_id(id_prefix), endpoint, model,
                                                 span=getattr(request.state, SPAN_STATE, None))
    return ctx


async def admit(request: Request, ctx: RequestContext) -> ModelLease:
    """Admission (key, model, limits): the request's lease on its model, to be released when it ends."""
    service: Service = request.app.state.service
    avoid = frozenset(getattr(request.state, "failed_models", ()))  # failed before their first token (api/fallback.py)
    return await service.admission.admit(api_key(request), ctx.model, ctx, client_address(request), avoid)
