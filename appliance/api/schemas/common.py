"""What every request and response shares: the strict request base, sampling fields, usage, errors.

Requests are strict (a JSON `false` is not the integer 0, `"1"` is not a number) and refuse fields
they do not declare: what is accepted is exactly what /openapi.json says. Fields accepted without
effect are declared too, and say so in their description.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, WithJsonSchema, field_validator

MAX_N = 16
MAX_PROMPTS = 64
MAX_TOP_LOGPROBS = 20
MAX_TOKENS_LIMIT = 2**31 - 1
MAX_LOGIT_BIAS = 300  # entries; OpenAI's own limit


def no_effect(description: str, **kwargs):
    """A field accepted for compatibility that changes nothing here; the description says why."""
    return Field(None, description=f"accepted, no effect: {description}", **kwargs)


def priority_field():
    """vLLM's `priority`, on every generating request."""
    return Field(None, ge=-(2**31), le=2**31 - 1, description=(
        "lower runs first (vLLM's meaning); default: the key's priority (appliance keys update --priority)"))


# OpenAI's reasoning efforts: every value is accepted here; the model's chat template says which it takes.
ReasoningEffortValue = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class StrictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(StrictRequest):
    include_usage: bool = False
    continuous_usage_stats: bool = False


TOKEN_ID_PATTERN = r"^(0|[1-9][0-9]{0,9})$"
LogitBias = Annotated[
    dict[Annotated[StrictStr, Field(pattern=TOKEN_ID_PATTERN)], Annotated[float, Field(ge=-100.0, le=100.0)]],
    Field(max_length=MAX_LOGIT_BIAS),
    WithJsonSchema({"type": "object", "maxProperties": MAX_LOGIT_BIAS, "propertyNames": {"pattern": TOKEN_ID_PATTERN},
                    "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
                    "description": "token id (as a string) → bias added to its logit, -100 (banned) to 100 (forced); "
                                   "ids must be inside the model's vocabulary"}),
]


class SamplingFields(StrictRequest):
    model: StrictStr = Field(max_length=1024)
    max_tokens: StrictInt | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0.0, le=100.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: StrictInt = Field(1, ge=1, le=MAX_N)
    seed: StrictInt | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: StrictStr | list[StrictStr] | None = Field(None, description="up to 16 stop strings")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: LogitBias | None = None
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="only with stream: true")
    user: StrictStr | None = no_effect("the server does not track end users", max_length=1024)
    # vLLM's extra parameters (vllm bench serve and its users send these)
    top_k: StrictInt | None = Field(None, ge=-1, le=MAX_TOKENS_LIMIT)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    min_tokens: StrictInt = Field(0, ge=0, le=MAX_TOKENS_LIMIT)
    ignore_eos: bool = False
    stop_token_ids: list[Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS_LIMIT)]] | None = Field(None, max_length=1024)
    skip_special_tokens: bool = True
    priority: StrictInt | None = priority_field()

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value, info):
        if value is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed with stream: true (as OpenAI); drop it or stream")
        return value


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def omitted_when_none(**kwargs):
    """A stream delta's field that is left out, not sent as null, when it has no value (as OpenAI
    streams them; the SDK's accumulators would overwrite what an earlier delta set)."""
    return Field(None, exclude_if=lambda value: value is None, **kwargs)
