"""The public API's Starlette app: the route table, /health, /ready, /openapi.json, and errors rendered in one place.

Routes are thin (one module per endpoint): validate the body, pass admission, render, generate,
answer. Every error is an APIError rendered by one handler as an OpenAI error object.
"""

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from appliance.api.chat import chat_completions
from appliance.api.completions import completions
from appliance.api.embeddings import embeddings
from appliance.api.fallback import with_fallback
from appliance.api.gate import ClientGate
from appliance.api.messages import count_tokens, messages
from appliance.api.model_list import list_models
from appliance.api.response_counter import ResponseCounter
from appliance.api.responses import responses
from appliance.api.schemas import openapi_spec
from appliance.api.tokenize import detokenize, tokenize
from appliance.errors import APIError, anthropic_route, from_engine_error
from appliance.ops.requestlog import log_refusal
from appliance.serving.context import RequestContext
from appliance.serving.service import Service

log = logging.getLogger("appliance.api")


async def health(request: Request) -> Response:
    ok, body = request.app.state.service.readiness.health()
    return JSONResponse(body, status_code=200 if ok else 503)


async def ready(request: Request) -> Response:
    service: Service = request.app.state.service
    ok, body = service.readiness.ready()
    headers = {} if ok else {"Retry-After": str(service.config.retry_after_s)}
    return JSONResponse(body, status_code=200 if ok else 503, headers=headers)


async def openapi(request: Request) -> Response:
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("appliance")
    except PackageNotFoundError:
        v = "0.0.0"
    return JSONResponse(openapi_spec(v))


# -- errors, rendered in one place --------------------------------------------------------------
async def on_api_error(request: Request, exc: APIError) -> Response:
    ctx: RequestContext | None = getattr(request.state, "context", None)
    if ctx is None or not ctx.accounted:  # a request that ran has its own log line
        known = {"request_id": ctx.request_id, "key_id": ctx.key_id, "model": ctx.model} if ctx else {}
        log_refusal(method=request.method, path=request.url.path, status=exc.status, code=exc.code,
                    message=exc.message, **known)
    return exc.to_response(anthropic=anthropic_route(request.url.path))


async def on_http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own refusals (no such route, wrong method), as OpenAI error objects.

    A 405 keeps the Allow header Starlette computed (RFC 9110 requires it).
    """
    message = "no such route" if exc.status_code == 404 else str(exc.detail)
    error = APIError(exc.status_code, f"{message}: {request.method} {request.url.path}")
    return error.to_response(headers=exc.headers, anthropic=anthropic_route(request.url.path))


async def on_unexpected(request: Request, exc: Exception) -> Response:
    from engine.errors import EngineError

    anthropic = anthropic_route(request.url.path)
    if isinstance(exc, EngineError):
        return from_engine_error(exc, request.app.state.service.config.retry_after_s).to_response(anthropic=anthropic)
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return APIError(500, "internal error; the server log has the details").to_response(anthropic=anthropic)


def build_app(service: Service) -> ASGIApp:
    routes = [
        Route("/v1/chat/completions", with_fallback(chat_completions), methods=["POST"]),
        Route("/v1/completions", with_fallback(completions), methods=["POST"]),
        Route("/v1/responses", with_fallback(responses), methods=["POST"]),
        Route("/v1/messages", with_fallback(messages), methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/v1/embeddings", with_fallback(embeddings), methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]

    def count_response(handler: str, method: str, status: int) -> None:
        service.metrics.observe_response(handler, method, status)
        if handler.startswith("/v1/") or handler == "none":  # API requests, not health probes
            service.window.count_response(status)

    app = Starlette(
        routes=routes,
        exception_handlers={APIError: on_api_error, HTTPException: on_http_error, Exception: on_unexpected},
    )
    app.state.service = service
    traced = service.tracing.middleware(app) if service.tracing is not None else app  # a span per /v1/ request
    gated = ClientGate(traced, service.lockout, service.config.retry_after_s)  # before routing: no body read
    return ResponseCounter(gated, on_response=count_response)  # outermost: it sees the last-resort 500s too
