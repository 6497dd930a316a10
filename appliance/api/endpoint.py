"""One generating route, whatever its API: read the body → its Ask (the API's module) → the request's record →
admission's lease → the plan (render) → generate → the API's formatter → the answer, accounted.

Each API declares an Endpoint (chat.py, completions.py, responses.py, messages.py): its body's
schema, how the body becomes an Ask, and how its answer is written; the Responses API also
continues a stored conversation once the key is known (`resume`) and keeps a finished one (`keep`), having
checked before generating that it can (`check_keep`).
Whatever fails between admission and the start of the answer releases the lease here; from then
on the answer's end releases it (respond.py).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from appliance.api.formatters.base import Formatter
from appliance.api.generation import Generation
from appliance.api.images import ImageLimits
from appliance.api.plan import Ask, RequestPlan, plan_request
from appliance.api.request import admit, read_request, start_context
from appliance.api.respond import respond
from appliance.errors import APIError
from appliance.serving.context import RequestContext
from appliance.serving.service import Service


@dataclass(frozen=True)
class Endpoint:
    name: str  # the request log's and the metrics' endpoint
    id_prefix: str  # of the request's id ("chatcmpl")
    schema: type[BaseModel]
    ask: Callable[[BaseModel], Ask]
    formatter: Callable[[BaseModel, Generation, str, str], Formatter]  # (body, generation, request id, model name)
    resume: Callable[[BaseModel, Ask, RequestContext, Service], Awaitable[Ask]] | None = None  # after admission
    # Whether `keep` could keep the planned answer: refused before generating, not after.
    check_keep: Callable[[BaseModel, RequestPlan, RequestContext, Service], Awaitable[None]] | None = None
    keep: Callable[[BaseModel, Generation, RequestContext, Service], Awaitable[None]] | None = None  # a finished one
    param_names: dict[str, str] = field(default_factory=dict)  # a refusal's field → this API's name for it


def route(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        try:
            return await serve(request)
        except APIError as e:
            raise e.renamed(endpoint.param_names) from None

    async def serve(request: Request) -> Response:
        service: Service = request.app.state.service
        body = await read_request(request, endpoint.schema)
        ask = endpoint.ask(body)
        ctx = start_context(request, endpoint.id_prefix, endpoint.name, ask.model)
        lease = await admit(request, ctx)
        try:
            if endpoint.resume is not None:
                ask = await endpoint.resume(body, ask, ctx, service)
            plan: RequestPlan = await plan_request(ask, lease, ImageLimits.from_config(service.config))
            ctx.planned(plan.prompt_text, plan.constraint_label, len(plan.images))
            if endpoint.check_keep is not None:
                await endpoint.check_keep(body, plan, ctx, service)
            generation = Generation(service, plan, ctx)
            formatter = endpoint.formatter(body, generation, ctx.request_id, service.pool.served_name(lease.served))
            await generation.start()
        except BaseException:
            lease.release()
            raise
        keep = None if endpoint.keep is None else partial(endpoint.keep, body, generation, ctx, service)
        return await respond(request, service, ctx, generation, formatter, keep)

    return handle
