"""One generating route, whatever its API: read the body → its Ask (the API's module) → the request's record →
admission's lease → the plan (render) → generate → the API's formatter → the answer, accounted.

Each API declares an Endpoint (chat.py, completions.py, responses.py): its body's schema, how the
body becomes an Ask, and how its answer is written. Whatever fails between admission and the
start of the answer releases the lease here; from then on the answer's end releases it (respond.py).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from appliance.api.formatters.base import Formatter
from appliance.api.generation import Generation
from appliance.api.plan import Ask, RequestPlan, plan_request
from appliance.api.request import admit, read_request, start_context
from appliance.api.respond import respond
from appliance.serving.service import Service


@dataclass(frozen=True)
class Endpoint:
    name: str  # the request log's and the metrics' endpoint
    id_prefix: str  # of the request's id ("chatcmpl")
    schema: type[BaseModel]
    ask: Callable[[BaseModel], Ask]
    formatter: Callable[[BaseModel, Generation, str, str], Formatter]  # (body, generation, request id, model name)


def route(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        service: Service = request.app.state.service
        body = await read_request(request, endpoint.schema)
        ask = endpoint.ask(body)
        ctx = start_context(request, endpoint.id_prefix, endpoint.name, ask.model)
        lease = await admit(request, ctx)
        try:
            plan: RequestPlan = await plan_request(ask, lease)
            ctx.planned(plan.prompt_text, plan.constraint_label)
            generation = Generation(service, plan, ctx)
            formatter = endpoint.formatter(body, generation, ctx.request_id, service.pool.served_name(lease.served))
            await generation.start()
        except BaseException:
            lease.release()
            raise
        return await respond(request, service, ctx, generation, formatter)

    return handle
