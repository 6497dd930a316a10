"""POST /v1/chat/completions: the request, the answer and its stream chunks."""

import time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Discriminator, Field, StrictInt, StrictStr, Tag

from appliance.api.schemas.common import (
    MAX_TOKENS_LIMIT,
    MAX_TOP_LOGPROBS,
    ReasoningEffortValue,
    SamplingFields,
    StrictRequest,
    TokenLogprob,
    Usage,
    no_effect,
    omitted_when_none,
)
from appliance.api.schemas.structured import NamedToolChoice, StructuredOutputFields, ToolDefinition


class TextPart(StrictRequest):
    type: Literal["text"]
    text: StrictStr


class RefusalPart(StrictRequest):
    """Part of an earlier answer in which the model refused: its text is what the model said."""

    type: Literal["refusal"]
    refusal: StrictStr

    @property
    def text(self) -> str:
        return self.refusal


class ImageURL(StrictRequest):
    url: StrictStr = Field(description="a data: URL with the image in base64 (PNG, JPEG, WebP, GIF), or an http(s) "
                                       "URL of a host the operator allows (image_url_hosts; none by default)")
    detail: Literal["auto", "low", "high"] | None = no_effect("the model's image processor decides the resolution")


class ImageURLPart(StrictRequest):
    """An image in a user message, for a model that takes images (GET /v1/models: input_modalities)."""

    type: Literal["image_url"]
    image_url: ImageURL


class FunctionCall(StrictRequest):
    name: StrictStr
    arguments: StrictStr = Field(description="the arguments as a JSON object's text, as the model wrote them")


class ToolCallItem(StrictRequest):
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class AudioReference(StrictRequest):
    id: StrictStr


class BaseMessage(StrictRequest):
    content: StrictStr | list[TextPart]
    name: StrictStr | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def to_template(self) -> dict:
        """The message as chat templates take it: role and text, and the tool and reasoning fields when present."""
        message = {"role": self.role, "content": self.text()}
        if self.name:
            message["name"] = self.name
        return message


class SystemMessage(BaseMessage):
    role: Literal["system", "developer"]


class UserMessage(BaseMessage):
    role: Literal["user"]
    content: StrictStr | list[TextPart | ImageURLPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if isinstance(part, TextPart))

    def image_parts(self) -> list[tuple[int, ImageURLPart]]:
        """(index in content, part) of the message's images."""
        return [] if isinstance(self.content, str) else [
            (j, part) for j, part in enumerate(self.content) if isinstance(part, ImageURLPart)]

    def to_template(self) -> dict:
        """With images, the content as chat templates of vision models take it: text and image parts in order (the
        template writes the model's image placeholder for each)."""
        message = super().to_template()
        if self.image_parts():
            message["content"] = [{"type": "image"} if isinstance(part, ImageURLPart) else
                                  {"type": "text", "text": part.text} for part in self.content]
        return message


class AssistantMessage(BaseMessage):
    """An earlier answer, as the openai SDK dumps it (`message.model_dump()`): what describes the past is accepted."""

    role: Literal["assistant"]
    content: StrictStr | list[TextPart | RefusalPart] | None = None
    refusal: StrictStr | None = Field(None, description="the turn's refusal: its text when the turn has no content")
    tool_calls: list[ToolCallItem] | None = Field(None, description="the calls this turn made")
    function_call: FunctionCall | None = Field(
        None, description="the call this turn made, in the deprecated form: rendered as a tool call (a `function` "
                          "message after it is its result)")
    annotations: list[dict[str, Any]] | None = no_effect("citations of an earlier answer")
    audio: AudioReference | None = no_effect("an earlier spoken answer (its transcript is the content)")
    reasoning: StrictStr | None = Field(None, description="this turn's reasoning")
    reasoning_content: StrictStr | None = Field(None, description="the same as reasoning (vLLM's older name)")

    def text(self) -> str:
        return super().text() or self.refusal or ""

    def to_template(self) -> dict:
        """Templates of reasoning models (Qwen3, DeepSeek-R1) read an assistant turn's `reasoning_content`."""
        message = super().to_template()
        calls = [c.model_dump() for c in self.tool_calls or []]
        if self.function_call is not None:
            calls.append({"id": FUNCTION_CALL_ID, "type": "function", "function": self.function_call.model_dump()})
        if calls:
            message["tool_calls"] = calls
        reasoning = self.reasoning if self.reasoning is not None else self.reasoning_content
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        return message


class ToolMessage(BaseMessage):
    role: Literal["tool"]
    tool_call_id: StrictStr = Field(description="the call this message answers")

    def to_template(self) -> dict:
        return {**super().to_template(), "tool_call_id": self.tool_call_id}


# The deprecated function calling: an assistant's function_call and the function message that answers it are the
# one tool call of their turn; templates need an id to pair them.
FUNCTION_CALL_ID = "call_function"


class FunctionMessage(StrictRequest):
    """The deprecated result of an assistant's function_call: rendered as a tool message."""

    role: Literal["function"]
    name: StrictStr
    content: StrictStr | None

    def to_template(self) -> dict:
        return {"role": "tool", "content": self.content or "", "name": self.name, "tool_call_id": FUNCTION_CALL_ID}


MESSAGE_TYPES = {"system": "SystemMessage", "developer": "SystemMessage", "user": "UserMessage",
                 "assistant": "AssistantMessage", "tool": "ToolMessage", "function": "FunctionMessage"}


def _message_type(value) -> str | None:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return MESSAGE_TYPES.get(role) if isinstance(role, str) else None


# One shape per role, as OpenAI's: a tool message needs the call it answers, only an assistant's has calls.
Message = Annotated[
    Union[Annotated[SystemMessage, Tag("SystemMessage")], Annotated[UserMessage, Tag("UserMessage")],
          Annotated[AssistantMessage, Tag("AssistantMessage")], Annotated[ToolMessage, Tag("ToolMessage")],
          Annotated[FunctionMessage, Tag("FunctionMessage")]],
    Discriminator(_message_type, custom_error_type="invalid_role",
                  custom_error_message="role must be one of system, developer, user, assistant, tool, function"),
]


class ChatCompletionRequest(SamplingFields, StructuredOutputFields):
    messages: list[Message] = Field(min_length=1, max_length=4096)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool = False
    top_logprobs: StrictInt | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[ToolDefinition] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    reasoning_effort: ReasoningEffortValue | None = Field(
        None, description="for a model whose chat template takes a reasoning effort (gpt-oss: low, medium, high); "
                          "refused for a model whose template takes none")
    metadata: dict[StrictStr, StrictStr] | None = no_effect("nothing is stored", max_length=16)
    store: bool | None = no_effect("completions are never stored")
    prompt_cache_key: StrictStr | None = no_effect("prompts that share a prefix share its cache anyway",
                                                  max_length=1024)
    safety_identifier: StrictStr | None = no_effect("the server does not track end users", max_length=1024)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class ToolCallFunction(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    reasoning: str | None = omitted_when_none(description="the model's reasoning, for reasoning models")
    reasoning_content: str | None = omitted_when_none(description="the same as reasoning (vLLM's older name)")
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ToolCallDeltaFunction(BaseModel):
    name: str | None = omitted_when_none()
    arguments: str | None = omitted_when_none()


class ToolCallDeltaOut(BaseModel):
    index: int
    id: str | None = omitted_when_none()
    type: Literal["function"] | None = omitted_when_none()
    function: ToolCallDeltaFunction


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = omitted_when_none()
    content: str | None = omitted_when_none()
    reasoning: str | None = omitted_when_none()
    reasoning_content: str | None = omitted_when_none()
    tool_calls: list[ToolCallDeltaOut] | None = omitted_when_none()


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
