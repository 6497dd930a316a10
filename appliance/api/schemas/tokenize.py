"""POST /tokenize and POST /detokenize, in vLLM's shapes."""

from typing import Union

from pydantic import BaseModel, Field, RootModel, StrictStr

from appliance.api.schemas.chat import Message
from appliance.api.schemas.common import StrictRequest
from appliance.api.schemas.completions import TokenId


class TokenizePromptRequest(StrictRequest):
    model: StrictStr | None = Field(None, max_length=1024, description="the served model; its default when left out")
    prompt: StrictStr
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(StrictRequest):
    model: StrictStr | None = Field(None, max_length=1024, description="the served model; its default when left out")
    messages: list[Message] = Field(min_length=1, max_length=4096)
    add_generation_prompt: bool = True
    add_special_tokens: bool = Field(False, description="the chat template already writes them")
    return_token_strs: bool = False


class TokenizeRequest(RootModel[Union[TokenizePromptRequest, TokenizeChatRequest]]):
    """A prompt or chat messages; `.root` is the one given."""


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(StrictRequest):
    model: StrictStr | None = Field(None, max_length=1024, description="the served model; its default when left out")
    tokens: list[TokenId] = Field(max_length=1_000_000)


class DetokenizeResponse(BaseModel):
    prompt: str
