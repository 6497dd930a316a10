"""POST /v1/embeddings: mean-pooled vectors of the admitted model, as floats or base64."""

import base64
import struct

from starlette.requests import Request
from starlette.responses import Response

from appliance.api.completions import prompt_list
from appliance.api.request import admit, read_request, start_context
from appliance.api.schemas import Embedding, EmbeddingList, EmbeddingRequest, Usage
from appliance.errors import APIError
from appliance.serving.embeddings import embed
from appliance.serving.service import Service


async def embeddings(request: Request) -> Response:
    service: Service = request.app.state.service
    req = await read_request(request, EmbeddingRequest)
    ctx = start_context(request, "embd", "embeddings", req.model)
    lease = await admit(request, ctx)
    try:
        vectors, tokens = await embed(lease.served, ctx, prompt_list(req.input), service.config.retry_after_s,
                                      service.busy)
        ctx.counted(tokens, 0)  # before accounting: the key's usage, limits and the log line count them
    except APIError as e:
        ctx.ended(f"error {e.status}")
        raise
    finally:
        service.accounting.finish(ctx)
        lease.release()
    data = []
    for i, vector in enumerate(vectors):
        if req.dimensions is not None:
            vector = vector[: req.dimensions]
        if req.encoding_format == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            value = vector
        data.append(Embedding(index=i, embedding=value))
    body = EmbeddingList(data=data, model=service.pool.served_name(lease.served),
                         usage=Usage(prompt_tokens=tokens, total_tokens=tokens))
    return Response(body.model_dump_json(), media_type="application/json")
