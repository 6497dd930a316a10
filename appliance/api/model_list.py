"""GET /v1/models: what a request's `model` may name."""

from starlette.requests import Request
from starlette.responses import Response

from appliance.api.request import api_key, client_address
from appliance.api.schemas import ModelCard, ModelList
from appliance.serving.service import Service


async def list_models(request: Request) -> Response:
    service: Service = request.app.state.service
    await service.admission.authorize(api_key(request), None, client=client_address(request))
    active = service.pool.active
    cards = [ModelCard(id=service.pool.model_name, created=service.created,
                       max_model_len=active.max_model_len if active is not None else None)]
    return Response(ModelList(data=cards).model_dump_json(), media_type="application/json")
