"""POST /v1/chat/completions: messages through the model's chat template, then generation."""

from starlette.requests import Request
from starlette.responses import Response

from appliance.api import formatting as fmt
from appliance.api.generation import generate_response
from appliance.api.request import admit, read_request
from appliance.api.sampling import sampling_params
from appliance.api.schemas import ChatCompletionRequest
from appliance.serving.render import render_chat
from appliance.serving.service import Service


async def chat_completions(request: Request) -> Response:
    service: Service = request.app.state.service
    req = await read_request(request, ChatCompletionRequest)
    ctx = await admit(request, "chatcmpl", "chat", req.model)
    messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in req.messages]
    ctx.prompt_text = await render_chat(ctx.served, messages)
    top = (req.top_logprobs or 0) if req.logprobs else None
    max_tokens = req.max_completion_tokens or req.max_tokens or ctx.served.max_model_len
    retry = service.config.retry_after_s
    jobs = [(0, ctx.prompt_text, sampling_params(req, max_tokens, top, i, retry)) for i in range(req.n)]
    return await generate_response(request, ctx, jobs, "messages", req, top, fmt.CHAT)
