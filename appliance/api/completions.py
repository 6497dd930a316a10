"""POST /v1/completions: one or more prompts (text or token ids), n choices each."""

from appliance.api.endpoint import Endpoint, route
from appliance.api.formatters.completions import CompletionFormatter
from appliance.api.plan import Ask
from appliance.api.sampling import Sampling
from appliance.api.schemas import MAX_PROMPTS, CompletionRequest
from appliance.api.structured import requested_constraint
from appliance.errors import invalid


def prompt_list(prompt) -> list:
    """A prompt field as a list of prompts: a string, a token-id list, or a list of either."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


def completion_ask(req: CompletionRequest) -> Ask:
    prompts = prompt_list(req.prompt)
    if len(prompts) * req.n > MAX_PROMPTS:
        raise invalid("n", f"prompts × n may be at most {MAX_PROMPTS}, got {len(prompts) * req.n}")
    return Ask(
        model=req.model, sampling=Sampling.from_openai(req), prompt_param="prompt", max_tokens=req.max_tokens or 16,
        n=req.n, stream=req.stream, include_usage=bool(req.stream_options and req.stream_options.include_usage),
        logprobs=req.logprobs, prompt_logprobs=req.logprobs if req.echo else None,  # echo: the prompt's tokens too
        constraint=requested_constraint(req), prompts=tuple(prompts), priority=req.priority,
    )


def completion_formatter(req: CompletionRequest, generation, request_id: str, model: str) -> CompletionFormatter:
    plan = generation.plan
    echoed = [prompt_text(plan.served, p) for p in plan.prompts] if req.echo else None
    return CompletionFormatter(generation, request_id, model, plan.ask.logprobs, plan.ask.include_usage, echoed)


def prompt_text(served, prompt) -> str:
    """A prompt as text: itself, or its token ids decoded (what echo writes back)."""
    if isinstance(prompt, str):
        return prompt
    tokenizer = served.engine.tokenizer
    return tokenizer.decode(prompt) if tokenizer is not None else ""


COMPLETIONS = Endpoint("completions", "cmpl", CompletionRequest, completion_ask, completion_formatter)
completions = route(COMPLETIONS)
