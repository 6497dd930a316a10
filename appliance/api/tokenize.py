"""POST /tokenize and POST /detokenize, as vLLM answers them: a prompt's (or a chat's) token ids and back.

Neither generates, so neither is charged to the key's tokens; the key and its model are checked.
"""

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from appliance.api.request import api_key, client_address, read_request
from appliance.api.schemas.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeChatRequest,
    TokenizePromptRequest,
    TokenizeRequest,
    TokenizeResponse,
)
from appliance.errors import APIError, invalid
from appliance.serving.served_model import ModelLease, ServedModel
from appliance.serving.service import Service


async def lease_for(request: Request, model: str | None) -> ModelLease:
    """The key checked, and a lease on the model named (counted against the key's request limits), or on the
    default model when none is named."""
    service: Service = request.app.state.service
    if model is None:
        await service.admission.authorize(api_key(request), client=client_address(request))
        return service.router.resolve(None).lease()
    return await service.admission.admit(api_key(request), model, None, client_address(request))


def tokenizer_of(served: ServedModel):
    tokenizer = served.engine.tokenizer
    if tokenizer is None:
        raise APIError(400, "this model has no tokenizer; it takes token ids only", param="model")
    return tokenizer


async def tokenize(request: Request) -> Response:
    req = (await read_request(request, TokenizeRequest)).root
    lease = await lease_for(request, req.model)
    try:
        tokenizer = tokenizer_of(lease.served)

        def run() -> list[int]:
            text = req.prompt if isinstance(req, TokenizePromptRequest) else chat_text(tokenizer, req)
            return tokenizer.encode(text, add_special_tokens=req.add_special_tokens)

        tokens = await asyncio.to_thread(run)
    finally:
        lease.release()
    strs = tokenizer.convert_ids_to_tokens(tokens) if req.return_token_strs else None
    body = TokenizeResponse(count=len(tokens), max_model_len=lease.served.max_model_len, tokens=tokens,
                            token_strs=strs)
    return Response(body.model_dump_json(), media_type="application/json")


def chat_text(tokenizer, req: TokenizeChatRequest) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise invalid("messages", "this model has no chat template; tokenize a prompt instead")
    try:
        return tokenizer.apply_chat_template([m.to_template() for m in req.messages], tokenize=False,
                                             add_generation_prompt=req.add_generation_prompt)
    except Exception as e:  # jinja raise_exception (role order...), template errors
        raise invalid("messages", f"the messages do not fit the model's chat template: {e}") from None


async def detokenize(request: Request) -> Response:
    req = await read_request(request, DetokenizeRequest)
    lease = await lease_for(request, req.model)
    try:
        tokenizer = tokenizer_of(lease.served)
        vocab = len(tokenizer)
        outside = sorted({t for t in req.tokens if t >= vocab})
        if outside:
            raise invalid("tokens", f"token ids outside the vocabulary (size {vocab}): "
                                    f"{', '.join(map(str, outside[:20]))}")
        text = await asyncio.to_thread(tokenizer.decode, req.tokens)
    finally:
        lease.release()
    return Response(DetokenizeResponse(prompt=text).model_dump_json(), media_type="application/json")
