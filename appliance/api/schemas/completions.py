"""POST /v1/completions: the request, the answer (its stream chunks are the same shape)."""

import time
from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field, StrictInt, StrictStr

from appliance.api.schemas.common import MAX_PROMPTS, MAX_TOKENS_LIMIT, MAX_TOP_LOGPROBS, SamplingFields, Usage
from appliance.api.schemas.structured import StructuredOutputFields

TokenId = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS_LIMIT)]
# An empty prompt is refused by the schema: the engine needs at least one token to start from.
Prompt = Union[
    Annotated[StrictStr, Field(min_length=1)],
    Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(min_length=1, max_length=MAX_PROMPTS)],
    Annotated[list[TokenId], Field(min_length=1)],
    Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1, max_length=MAX_PROMPTS)],
]


class CompletionRequest(SamplingFields, StructuredOutputFields):
    prompt: Prompt
    logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = []
    token_logprobs: list[float | None] = []
    tokens: list[str] = []
    top_logprobs: list[dict[str, float] | None] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
