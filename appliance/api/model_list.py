"""GET /v1/models: every name a request's `model` may say (loaded models, models that load on demand,
aliases), each with its state."""

from starlette.requests import Request
from starlette.responses import Response

from appliance.api.request import api_key, client_address
from appliance.api.schemas import ModelCard, ModelList
from appliance.serving.service import Service


async def list_models(request: Request) -> Response:
    service: Service = request.app.state.service
    await service.admission.authorize(api_key(request), client=client_address(request))
    pool = service.pool
    cards = []
    for name, model in sorted(service.router.routable_names().items(), key=lambda item: (item[0] != pool.model_name, item[0])):
        served = pool.resident.get(model)
        state = "loaded" if served is not None else "loading" if model in pool.loads else "on_demand"
        shown = pool.served_name(served) if served is not None else model
        execution = (served.engine.stats().execution if served is not None else None) or {}
        cards.append(ModelCard(id=name, created=int(served.loaded_at) if served is not None else service.created,
                               max_model_len=served.max_model_len if served is not None else None, state=state,
                               model=shown if shown != name else None, weights=execution.get("weights"),
                               weight_bytes=execution.get("weight_bytes"),
                               kv_cache_dtype=execution.get("kv_cache_dtype"),
                               input_modalities=None if served is None else
                               ["text", "image"] if served.engine.takes_images else ["text"]))
    if not cards:  # starting: the configured model, not loaded yet
        cards.append(ModelCard(id=pool.model_name, created=service.created, state="loading"))
    return Response(ModelList(data=cards).model_dump_json(), media_type="application/json")
