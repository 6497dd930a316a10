"""POST /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API): the requests, their content blocks,
and the Message object."""

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, StrictInt, StrictStr

from appliance.api.schemas.common import MAX_TOKENS_LIMIT, StrictRequest, no_effect, priority_field
from appliance.api.schemas.structured import FUNCTION_NAME_PATTERN, Parameters


class TextBlock(StrictRequest):
    type: Literal["text"]
    text: StrictStr
    citations: list[dict[str, Any]] | None = no_effect("citations of an earlier answer")
    cache_control: dict[str, Any] | None = no_effect("prompts that share a prefix share its KV cache anyway")


class Base64ImageSource(StrictRequest):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: StrictStr = Field(description="the image's bytes in base64")


class URLImageSource(StrictRequest):
    type: Literal["url"]
    url: StrictStr = Field(description="an http(s) URL of a host the operator allows (image_url_hosts; none by "
                                       "default)")


class ImageBlock(StrictRequest):
    """An image in a user turn, for a model that takes images (GET /v1/models: input_modalities)."""

    type: Literal["image"]
    source: Annotated[Union[Base64ImageSource, URLImageSource], Field(discriminator="type")]
    cache_control: dict[str, Any] | None = no_effect("prompts that share a prefix share its KV cache anyway")

    @property
    def url(self) -> str:
        """The image as a URL: a base64 source as a data: URL."""
        source = self.source
        return f"data:{source.media_type};base64,{source.data}" if source.type == "base64" else source.url


class ToolUseBlock(StrictRequest):
    """An earlier call of the assistant's."""

    type: Literal["tool_use"]
    id: StrictStr
    name: StrictStr
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = no_effect("prompts that share a prefix share its KV cache anyway")


class ToolResultBlock(StrictRequest):
    """The result of a call, in a user turn."""

    type: Literal["tool_result"]
    tool_use_id: StrictStr
    content: StrictStr | list[TextBlock] | None = None
    is_error: bool | None = Field(None, description="the call failed; the content says how")
    cache_control: dict[str, Any] | None = no_effect("prompts that share a prefix share its KV cache anyway")

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(block.text for block in self.content)


class ThinkingBlock(StrictRequest):
    """An earlier turn's reasoning: given to the chat template as the turn's reasoning."""

    type: Literal["thinking"]
    thinking: StrictStr
    signature: StrictStr | None = no_effect("signatures are not checked")


class RedactedThinkingBlock(StrictRequest):
    type: Literal["redacted_thinking"]
    data: StrictStr = Field(description="accepted, no effect: the model never sees redacted reasoning")


Block = Annotated[Union[TextBlock, ImageBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock, RedactedThinkingBlock],
                  Field(discriminator="type")]


class InputMessage(StrictRequest):
    role: Literal["user", "assistant"]
    content: StrictStr | Annotated[list[Block], Field(min_length=1)]

    def blocks(self) -> list:
        return [TextBlock(type="text", text=self.content)] if isinstance(self.content, str) else self.content


class Tool(StrictRequest):
    name: StrictStr = Field(pattern=FUNCTION_NAME_PATTERN)
    description: StrictStr | None = None
    input_schema: Parameters
    type: Literal["custom"] | None = None
    cache_control: dict[str, Any] | None = no_effect("prompts that share a prefix share its KV cache anyway")


class ToolChoice(StrictRequest):
    """auto: the model decides; any: it must call a tool; tool: it must call `name`; none: no calls."""

    type: Literal["auto", "any", "tool", "none"]
    name: StrictStr | None = Field(None, description="with type tool: the tool to call")
    disable_parallel_tool_use: bool = False


class Thinking(StrictRequest):
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: StrictInt | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    display: Literal["summarized", "omitted"] | None = None


class OutputFormat(StrictRequest):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(StrictRequest):
    format: OutputFormat | None = Field(None, description="the answer is held to this JSON schema by the grammar")
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = no_effect(
        "a reasoning model's chat template decides how it reasons")


class Metadata(StrictRequest):
    user_id: StrictStr | None = no_effect("the server does not track end users", max_length=256)


class MessagesRequestBase(StrictRequest):
    model: StrictStr = Field(max_length=1024)
    messages: list[InputMessage] = Field(min_length=1, max_length=4096)
    system: StrictStr | list[TextBlock] | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = no_effect("a reasoning model's chat template decides whether it reasons; its "
                                          "reasoning comes back as thinking blocks")
    output_config: OutputConfig | None = None
    cache_control: dict[str, Any] | None = no_effect("prompts that share a prefix share its KV cache anyway")

    def system_text(self) -> str | None:
        if self.system is None or isinstance(self.system, str):
            return self.system
        return "".join(block.text for block in self.system)


class MessagesRequest(MessagesRequestBase):
    max_tokens: StrictInt = Field(ge=1, le=MAX_TOKENS_LIMIT)
    stop_sequences: list[StrictStr] | None = Field(None, max_length=16)
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=1.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(None, ge=0, le=MAX_TOKENS_LIMIT)
    priority: StrictInt | None = priority_field()
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = no_effect("a single tier")
    speed: Literal["standard", "fast"] | None = no_effect("one speed")
    inference_geo: StrictStr | None = no_effect("the box is where it is", max_length=64)
    diagnostics: dict[str, Any] | None = no_effect("no cache diagnostics are kept")
    user_profile_id: StrictStr | None = no_effect("the server does not track end users", max_length=256)
    workspace_id: StrictStr | None = no_effect("keys, not workspaces, separate tenants here", max_length=256)


class CountTokensRequest(MessagesRequestBase):
    pass


class CountTokensResponse(BaseModel):
    input_tokens: int


class TextOut(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingOut(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""


class ToolUseOut(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class MessageUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[ThinkingOut | TextOut | ToolUseOut]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"] | None = None
    stop_sequence: str | None = None
    usage: MessageUsage


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    type: Literal["error"] = "error"
    error: AnthropicErrorDetail
