"""The public HTTP API: OpenAI-compatible routes, /health, /ready, /openapi.json.

Handlers are thin: read and validate the body (schemas.py), ask the service, format the answer
(formatting.py). Every error is an APIError rendered by one handler as an OpenAI error object.
"""

import base64
import json
import logging
import struct

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from appliance.api import formatting as fmt
from appliance.errors import APIError, from_engine_error, from_validation_error, invalid
from appliance.api.generation import Generation, respond
from appliance.ops.requestlog import log_refusal
from appliance.api.response_counter import ResponseCounter
from appliance.api.schemas import (
    MAX_PROMPTS,
    ChatCompletionRequest,
    CompletionRequest,
    Embedding,
    EmbeddingList,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    Usage,
    openapi_spec,
)
from appliance.serving.service import RequestContext, Service

log = logging.getLogger("appliance.api")


# -- request plumbing ---------------------------------------------------------------------------
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
        data = json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, 5000-digit numbers, deep nesting
        raise invalid(None, f"the request body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise invalid(None, "the request body must be a JSON object")
    return data


def new_context(request: Request, id_prefix: str, endpoint: str, model: str) -> RequestContext:
    """The request's context, kept on the request so a refusal's log line can name its key and model."""
    service: Service = request.app.state.service
    request.state.context = RequestContext(service.new_request_id(id_prefix), endpoint, model)
    return request.state.context


def parse(model: type[BaseModel], data: dict):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e) from None
    except RecursionError:
        raise invalid(None, "the request body is nested too deeply") from None


def api_key(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def sampling_params(req, max_tokens: int | None, logprobs: int | None, index: int):
    from engine import SamplingParams
    from engine.errors import InvalidParameter

    seed = None if req.seed is None else (req.seed + index) % 2**64
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    try:
        return SamplingParams(
            max_tokens=max_tokens, min_tokens=req.min_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0, min_p=req.min_p or 0.0, seed=seed,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            logprobs=logprobs, stop=stop, stop_token_ids=list(req.stop_token_ids or []),
            ignore_eos=req.ignore_eos, skip_special_tokens=req.skip_special_tokens,
        )
    except InvalidParameter as e:
        raise invalid(e.param, str(e)) from None


# -- routes -------------------------------------------------------------------------------------
async def chat_completions(request: Request) -> Response:
    service: Service = request.app.state.service
    req = parse(ChatCompletionRequest, await read_json(request, service.config.max_request_body_bytes))
    ctx = new_context(request, "chatcmpl", "chat", req.model)
    await service.authorize(api_key(request), req.model, ctx)
    messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in req.messages]
    prompt = await service.render_chat(ctx, messages)
    ctx.prompt_text = prompt
    top = (req.top_logprobs or 0) if req.logprobs else None
    max_tokens = req.max_completion_tokens or req.max_tokens or ctx.served.max_model_len
    jobs = [(0, prompt, sampling_params(req, max_tokens, top, i)) for i in range(req.n)]
    gen = Generation(service, ctx, jobs, "messages")
    await gen.start()
    model, rid, text = service.served_name(ctx.served), ctx.request_id, ctx.served.token_text
    return await respond(
        request, gen, req.stream, bool(req.stream_options and req.stream_options.include_usage),
        whole=lambda states: fmt.chat_completion(rid, model, states, text, top),
        chunk=lambda created, state, out: fmt.chat_chunk(rid, model, created, state, out, text, top),
        usage_chunk=lambda created, states: fmt.chat_usage_chunk(rid, model, created, states),
    )


def completion_prompts(prompt) -> list:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


async def completions(request: Request) -> Response:
    service: Service = request.app.state.service
    req = parse(CompletionRequest, await read_json(request, service.config.max_request_body_bytes))
    if req.echo:
        raise invalid("echo", "echo is not supported")
    if req.suffix:
        raise invalid("suffix", "suffix is not supported")
    prompts = completion_prompts(req.prompt)
    if len(prompts) * req.n > MAX_PROMPTS:
        raise invalid("n", f"prompts × n may be at most {MAX_PROMPTS}, got {len(prompts) * req.n}")
    ctx = new_context(request, "cmpl", "completions", req.model)
    await service.authorize(api_key(request), req.model, ctx)
    ctx.prompt_text = json.dumps(req.prompt) if not isinstance(req.prompt, str) else req.prompt
    top = req.logprobs
    max_tokens = req.max_tokens or 16
    jobs = [(p, prompt, sampling_params(req, max_tokens, top, j)) for p, prompt in enumerate(prompts) for j in range(req.n)]
    gen = Generation(service, ctx, jobs, "prompt")
    await gen.start()
    model, rid, text = service.served_name(ctx.served), ctx.request_id, ctx.served.token_text
    return await respond(
        request, gen, req.stream, bool(req.stream_options and req.stream_options.include_usage),
        whole=lambda states: fmt.completion(rid, model, states, text, top),
        chunk=lambda created, state, out: fmt.completion_chunk(rid, model, created, state, out, text, top),
        usage_chunk=lambda created, states: fmt.completion_usage_chunk(rid, model, created, states),
    )


async def embeddings(request: Request) -> Response:
    service: Service = request.app.state.service
    req = parse(EmbeddingRequest, await read_json(request, service.config.max_request_body_bytes))
    ctx = new_context(request, "embd", "embeddings", req.model)
    await service.authorize(api_key(request), req.model, ctx)
    inputs = completion_prompts(req.input)
    try:
        vectors, tokens = await service.embed(ctx, inputs)
        ctx.prompt_tokens = tokens  # before finish: the key's usage, limits and the log line count them
    except APIError as e:
        ctx.status = f"error {e.status}"
        raise
    finally:
        service.finish(ctx)
    data = []
    for i, vector in enumerate(vectors):
        if req.dimensions is not None:
            vector = vector[: req.dimensions]
        if req.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            value = vector
        data.append(Embedding(index=i, embedding=value))
    body = EmbeddingList(data=data, model=service.served_name(ctx.served), usage=Usage(prompt_tokens=tokens, total_tokens=tokens))
    return Response(body.model_dump_json(), media_type="application/json")


async def models(request: Request) -> Response:
    service: Service = request.app.state.service
    await service.authorize(api_key(request), None)
    cards = [ModelCard(id=service.model_name, created=service.created, max_model_len=service.max_model_len)]
    return Response(ModelList(data=cards).model_dump_json(), media_type="application/json")


async def health(request: Request) -> Response:
    ok, body = request.app.state.service.health()
    return JSONResponse(body, status_code=200 if ok else 503)


async def ready(request: Request) -> Response:
    service: Service = request.app.state.service
    ok, body = service.readiness()
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
    return exc.to_response()


async def on_http_error(request: Request, exc: HTTPException) -> Response:
    message = "no such route" if exc.status_code == 404 else str(exc.detail)
    return APIError(exc.status_code, f"{message}: {request.method} {request.url.path}").to_response()


async def on_unexpected(request: Request, exc: Exception) -> Response:
    from engine.errors import EngineError

    if isinstance(exc, EngineError):
        return from_engine_error(exc, request.app.state.service.config.retry_after_s).to_response()
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return APIError(500, "internal error; the server log has the details").to_response()


def build_app(service: Service) -> ASGIApp:
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
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
    return ResponseCounter(app, on_response=count_response)  # outermost: it sees the last-resort 500s too
