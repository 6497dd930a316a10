"""Fallback after a failure: a request whose model fails before its first token runs again on the next
model of its chain (routing.py), and every answer a fallback gave says so in `x-appliance-fallback`.

Before the first token nothing has been sent (generation.py waits for it before the status line),
so the route can start over: the body is kept, and admission skips the models that failed. With no
fallback left the error is the one the model gave.
"""

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from appliance.errors import APIError
from appliance.serving.context import RequestContext
from appliance.serving.service import Service

log = logging.getLogger("appliance.api")

FALLBACK_HEADER = "x-appliance-fallback"
Endpoint = Callable[[Request], Awaitable[Response]]


def with_fallback(endpoint: Endpoint) -> Endpoint:
    async def run(request: Request) -> Response:
        service: Service = request.app.state.service
        failed: set[str] = set()
        request.state.failed_models = failed
        while True:
            try:
                response = await endpoint(request)
            except APIError as e:
                ctx: RequestContext | None = getattr(request.state, "context", None)
                if not _may_fall_back(service, ctx, e, failed):
                    raise
                log.warning("%s failed before its first token on %s (%s); trying its fallback",
                            ctx.request_id, ctx.served.name, e.message)
                failed.add(ctx.served.name)  # its lease was released when it failed (endpoint.py)
                continue
            ctx = getattr(request.state, "context", None)
            if ctx is not None and ctx.fallback is not None:
                response.headers[FALLBACK_HEADER] = ctx.fallback.header
            return response

    return run


def _may_fall_back(service: Service, ctx: RequestContext | None, error: APIError, failed: set[str]) -> bool:
    """A server-side failure (not a drain) of an admitted request that still has a model to try."""
    if ctx is None or ctx.served is None or error.status < 500 or error.code == "draining":
        return False
    try:
        return bool(service.router.candidates(ctx.model, ctx.allowed_models, failed | {ctx.served.name}))
    except APIError:
        return False
