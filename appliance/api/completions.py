"""POST /v1/completions: one or more prompts (text or token ids), n choices each."""

import json

from starlette.requests import Request
from starlette.responses import Response

from appliance.api import formatting as fmt
from appliance.api.generation import generate_response
from appliance.api.request import admit, read_request
from appliance.api.sampling import param_names, sampling_params
from appliance.api.schemas import MAX_PROMPTS, CompletionRequest
from appliance.api.structured import requested_constraint
from appliance.errors import invalid
from appliance.serving.service import Service


def prompt_list(prompt) -> list:
    """A prompt field as a list of prompts: a string, a token-id list, or a list of either."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


async def completions(request: Request) -> Response:
    service: Service = request.app.state.service
    req = await read_request(request, CompletionRequest)
    prompts = prompt_list(req.prompt)
    if len(prompts) * req.n > MAX_PROMPTS:
        raise invalid("n", f"prompts × n may be at most {MAX_PROMPTS}, got {len(prompts) * req.n}")
    constraint = requested_constraint(req)
    ctx = await admit(request, "cmpl", "completions", req.model)
    ctx.constraint = constraint.label if constraint is not None else None
    ctx.prompt_text = json.dumps(req.prompt) if not isinstance(req.prompt, str) else req.prompt
    top = req.logprobs
    retry = service.config.retry_after_s
    prompt_top = top if req.echo else None  # echo with logprobs: the prompt's tokens have theirs too
    jobs = [(p, prompt, sampling_params(req, req.max_tokens or 16, top, j, retry, constraint,
                                        prompt_logprobs=prompt_top))
            for p, prompt in enumerate(prompts) for j in range(req.n)]
    formats = fmt.echoing([prompt_text(ctx.served, p) for p in prompts]) if req.echo else fmt.COMPLETION
    return await generate_response(request, ctx, jobs, param_names(constraint), req, top, formats)


def prompt_text(served, prompt) -> str:
    """A prompt as text: itself, or its token ids decoded (what echo writes back)."""
    if isinstance(prompt, str):
        return prompt
    tokenizer = served.engine.tokenizer
    return tokenizer.decode(prompt) if tokenizer is not None else ""
