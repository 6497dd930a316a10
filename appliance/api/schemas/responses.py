"""POST /v1/responses: the request, its input items, and the Response object.

Output items are written so that they are valid input items too: an app sends `response.output`
back as the next request's input, as the openai SDK's examples do.
"""

import time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from appliance.api.schemas.common import MAX_TOKENS_LIMIT, ReasoningEffortValue, StrictRequest, no_effect, priority_field
from appliance.api.schemas.structured import FUNCTION_NAME_PATTERN, Parameters, tool_choice_without_tools


class InputText(StrictRequest):
    type: Literal["input_text", "output_text"]
    text: StrictStr
    annotations: list[dict[str, Any]] | None = no_effect("annotations of an earlier output", max_length=0)
    logprobs: list[dict[str, Any]] | None = no_effect("log-probabilities of an earlier output")


class InputImage(StrictRequest):
    """An image in a user message, for a model that takes images (GET /v1/models: input_modalities)."""

    type: Literal["input_image"]
    image_url: StrictStr = Field(description="a data: URL with the image in base64 (PNG, JPEG, WebP, GIF), or an "
                                             "http(s) URL of a host the operator allows (image_url_hosts; none by "
                                             "default)")
    detail: Literal["auto", "low", "high"] | None = no_effect("the model's image processor decides the resolution")


ItemStatus = Literal["in_progress", "completed", "incomplete"]


class InputMessage(StrictRequest):
    type: Literal["message"] = "message"
    role: Literal["assistant", "system", "developer"]
    content: StrictStr | list[InputText]
    id: StrictStr | None = no_effect("the id of an earlier output item")
    status: ItemStatus | None = no_effect("the status of an earlier output item")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, InputText))

    def chat_content(self) -> str | list[dict]:
        """The content as a chat message's."""
        return self.text()


class UserInputMessage(InputMessage):
    """A user's message: text, and images for a model that takes them."""

    role: Literal["user"]
    content: StrictStr | list[InputText | InputImage]

    def image_parts(self) -> list[tuple[int, InputImage]]:
        """(index in content, part) of the message's images."""
        return [] if isinstance(self.content, str) else [
            (j, p) for j, p in enumerate(self.content) if isinstance(p, InputImage)]

    def chat_content(self) -> str | list[dict]:
        """With images, chat's text and image_url parts in order."""
        if not self.image_parts():
            return self.text()
        return [{"type": "image_url", "image_url": {"url": p.image_url}} if isinstance(p, InputImage) else
                {"type": "text", "text": p.text} for p in self.content]


class FunctionCallInput(StrictRequest):
    type: Literal["function_call"]
    call_id: StrictStr
    name: StrictStr
    arguments: StrictStr
    id: StrictStr | None = no_effect("the id of an earlier output item")
    status: ItemStatus | None = no_effect("the status of an earlier output item")


class FunctionCallOutputInput(StrictRequest):
    type: Literal["function_call_output"]
    call_id: StrictStr
    output: StrictStr
    id: StrictStr | None = no_effect("the id of an earlier item")
    status: ItemStatus | None = no_effect("the status of an earlier item")


class ReasoningTextInput(StrictRequest):
    type: Literal["reasoning_text"]
    text: StrictStr


class ReasoningInput(StrictRequest):
    """An earlier answer's reasoning: it goes to the assistant turn that follows it, as chat's `reasoning`."""

    type: Literal["reasoning"]
    content: list[ReasoningTextInput] = Field(default_factory=list, max_length=64)
    summary: list[dict[str, Any]] | None = no_effect("summaries are not written here", max_length=0)
    id: StrictStr | None = no_effect("the id of an earlier output item")
    status: ItemStatus | None = no_effect("the status of an earlier output item")

    def text(self) -> str:
        return "".join(part.text for part in self.content)


InputItem = Union[UserInputMessage, InputMessage, FunctionCallInput, FunctionCallOutputInput, ReasoningInput]


class FunctionTool(StrictRequest):
    type: Literal["function"]
    name: StrictStr = Field(pattern=FUNCTION_NAME_PATTERN)
    description: StrictStr | None = None
    parameters: Parameters | None = None
    strict: bool | None = None


class NamedFunctionChoice(StrictRequest):
    type: Literal["function"]
    name: StrictStr


class TextFormatText(StrictRequest):
    type: Literal["text"]


class TextFormatJSONObject(StrictRequest):
    type: Literal["json_object"]


class TextFormatJSONSchema(StrictRequest):
    type: Literal["json_schema"]
    name: StrictStr = Field(max_length=64)
    schema_: dict[str, Any] = Field(alias="schema")
    description: StrictStr | None = None
    strict: bool | None = None


TextFormat = Annotated[Union[TextFormatText, TextFormatJSONObject, TextFormatJSONSchema], Field(discriminator="type")]


class TextConfig(StrictRequest):
    format: TextFormat | None = None


NOT_REASONING = {"not": {"required": ["type"], "properties": {"type": {"const": "reasoning"}}}}


class ReasoningConfig(StrictRequest):
    effort: ReasoningEffortValue | None = Field(
        None, description="for a model whose chat template takes a reasoning effort (gpt-oss: low, medium, high); "
                          "refused for a model whose template takes none")
    summary: Literal["auto", "concise", "detailed"] | None = no_effect(
        "no summaries are written; the reasoning item carries the reasoning itself")


class ResponsesRequest(StrictRequest):
    model_config = ConfigDict(json_schema_extra={"not": {"anyOf": tool_choice_without_tools()}})

    model: StrictStr = Field(max_length=1024)
    input: Annotated[StrictStr, Field(min_length=1)] | Annotated[list[InputItem], Field(
        min_length=1, max_length=4096, json_schema_extra={"contains": NOT_REASONING})]
    instructions: StrictStr | None = None
    max_output_tokens: StrictInt | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    tools: list[FunctionTool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedFunctionChoice | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    stream: bool = False
    priority: StrictInt | None = priority_field()
    store: bool = Field(True, description="keep the response's conversation, images included (per key, for the "
                                          "operator's responses_retention_s; images up to its "
                                          "stored_image_bytes_per_key), so that a later request may continue it")
    previous_response_id: StrictStr | None = Field(
        None, max_length=256, description="continue a stored response of this key: its conversation, images "
                                          "included, comes before this input (its instructions do not carry over)")
    include: list[StrictStr] | None = Field(None, max_length=16, description="extra output: none of OpenAI's "
                                            "values is available here, each is refused by name; [] is accepted")
    metadata: dict[StrictStr, StrictStr] | None = no_effect("nothing is kept with it", max_length=16)
    user: StrictStr | None = no_effect("the server does not track end users", max_length=1024)

    @field_validator("input")
    @classmethod
    def _not_only_reasoning(cls, value):
        if isinstance(value, list) and all(isinstance(item, ReasoningInput) for item in value):
            raise ValueError("input needs a message or a function call; a reasoning item only goes with the assistant "
                             "turn after it")
        return value


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list = []


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: ItemStatus = "completed"
    content: list[OutputText]


class FunctionCallOutput(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: ItemStatus = "completed"


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningOutput(BaseModel):
    id: str
    type: Literal["reasoning"] = "reasoning"
    summary: list = []
    content: list[ReasoningText]
    status: ItemStatus = "completed"


OutputItem = Union[ReasoningOutput, OutputMessage, FunctionCallOutput]


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class Response(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    incomplete_details: IncompleteDetails | None = None
    error: dict[str, str] | None = None
    model: str
    instructions: str | None = None
    output: list[OutputItem]
    parallel_tool_calls: bool
    tool_choice: Any
    tools: list[dict[str, Any]]
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool = True
    previous_response_id: str | None = None
    usage: ResponseUsage | None = None
