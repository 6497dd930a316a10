"""The sampling a request asks for, in the engine's terms: each API maps its own fields onto `Sampling`."""

from dataclasses import dataclass, field

from appliance.errors import engine_errors
from appliance.serving.constraint import OutputConstraint


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] = field(default_factory=dict)

    @classmethod
    def from_openai(cls, req) -> "Sampling":
        """The fields chat and completions requests share (OpenAI's, and vLLM's extra ones)."""
        return cls(
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0, min_p=req.min_p or 0.0,
            seed=req.seed, stop=(req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ()),
            stop_token_ids=tuple(req.stop_token_ids or ()), presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            min_tokens=req.min_tokens, ignore_eos=req.ignore_eos, skip_special_tokens=req.skip_special_tokens,
            logit_bias={int(token): bias for token, bias in (req.logit_bias or {}).items()},
        )

    def params(self, index: int, max_tokens: int, logprobs: int | None, constraint: OutputConstraint | None,
               kept_special_token_ids: frozenset[int], prompt_logprobs: int | None, retry_after_s: float,
               param_names: dict[str, str], scheduling: "Scheduling"):
        """The engine's SamplingParams for choice `index`: its seed is the request's plus the index, so n choices
        differ. The engine's refusals become 400s naming the request's fields (`param_names`)."""
        from engine import SamplingParams

        seed = None if self.seed is None else (self.seed + index) % 2**64
        with engine_errors(retry_after_s, param_names):
            return SamplingParams(
                max_tokens=max_tokens, min_tokens=self.min_tokens, temperature=self.temperature, top_p=self.top_p,
                top_k=self.top_k, min_p=self.min_p, seed=seed, presence_penalty=self.presence_penalty,
                frequency_penalty=self.frequency_penalty, repetition_penalty=self.repetition_penalty,
                logprobs=logprobs, prompt_logprobs=prompt_logprobs, stop=list(self.stop),
                stop_token_ids=list(self.stop_token_ids), ignore_eos=self.ignore_eos,
                skip_special_tokens=self.skip_special_tokens, kept_special_token_ids=kept_special_token_ids,
                structured_output=constraint.to_engine() if constraint is not None else None,
                logit_bias=dict(self.logit_bias), priority=scheduling.priority, share_group=scheduling.group,
                share_weight=scheduling.weight,
            )


@dataclass(frozen=True)
class Scheduling:
    """Where the engine's scheduler puts a request: its priority (lower first), and its key's share."""

    priority: int = 0
    group: str | None = None  # the key: requests of one key share its turns
    weight: float = 1.0
