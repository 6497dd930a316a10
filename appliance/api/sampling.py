"""The engine's SamplingParams from the fields chat and completions requests share."""

from appliance.api.structured import OutputConstraint
from appliance.errors import engine_errors


def sampling_params(req, max_tokens: int | None, logprobs: int | None, index: int, retry_after_s: float,
                    constraint: OutputConstraint | None = None, kept_special_token_ids: frozenset[int] = frozenset(),
                    prompt_logprobs: int | None = None):
    """Choice `index` of a request: its seed is the request's plus the index, so n choices differ."""
    from engine import SamplingParams

    seed = None if req.seed is None else (req.seed + index) % 2**64
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    with engine_errors(retry_after_s, param_names(constraint)):
        return SamplingParams(
            max_tokens=max_tokens, min_tokens=req.min_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=req.top_k or 0, min_p=req.min_p or 0.0, seed=seed,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            logprobs=logprobs, prompt_logprobs=prompt_logprobs, stop=stop, stop_token_ids=list(req.stop_token_ids or []),
            ignore_eos=req.ignore_eos,
            skip_special_tokens=req.skip_special_tokens, kept_special_token_ids=kept_special_token_ids,
            structured_output=constraint.to_engine() if constraint is not None else None,
            logit_bias={int(token): bias for token, bias in (req.logit_bias or {}).items()},
        )


def param_names(constraint: OutputConstraint | None, prompt_param: str = "prompt") -> dict[str, str]:
    """The request fields behind the engine's parameter names, for the engine's 400s."""
    names = {"prompt": prompt_param}
    if constraint is not None:
        names["structured_output"] = constraint.param
    return names
