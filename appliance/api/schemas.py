"""Request and response shapes of the public API, declared once.

The same pydantic models validate input (naming the offending field in the 400), build the
responses, and produce /openapi.json. Unknown request fields are ignored, as OpenAI and vLLM
clients send fields this server has no use for.
"""

import time
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

MAX_N = 16
MAX_PROMPTS = 64
MAX_TOP_LOGPROBS = 20
MAX_TOKENS_LIMIT = 2**31 - 1


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


# -- parameters shared by chat and completions ------------------------------------------------
class StreamOptions(_Request):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(_Request):
    model: StrictStr = Field(max_length=1024)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0.0, le=100.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    stop: StrictStr | list[StrictStr] | None = Field(None, description="up to 16 stop strings")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=1024)
    # vLLM's extra parameters (vllm bench serve and its users send these)
    top_k: int | None = Field(None, ge=-1, le=MAX_TOKENS_LIMIT)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS_LIMIT)
    ignore_eos: bool = False
    stop_token_ids: list[StrictInt] | None = Field(None, max_length=1024)
    skip_special_tokens: bool = True


# -- chat -------------------------------------------------------------------------------------
class TextPart(_Request):
    type: Literal["text"]
    text: StrictStr


class FunctionCall(_Request):
    name: StrictStr
    arguments: StrictStr = Field(description="the arguments as a JSON object's text, as the model wrote them")


class ToolCallItem(_Request):
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[ToolCallItem] | None = Field(None, description="an assistant turn's calls, in the history")
    tool_call_id: StrictStr | None = Field(None, description="the call a tool message answers")

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def to_template(self) -> dict:
        """The message as chat templates take it: role and text, and the tool fields when present."""
        message = {"role": self.role, "content": self.text()}
        if self.name:
            message["name"] = self.name
        if self.tool_calls:
            message["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


# -- structured output and tools ---------------------------------------------------------------
class JSONSchemaFormat(_Request):
    name: StrictStr = Field(max_length=64)
    description: StrictStr | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormatText(_Request):
    type: Literal["text"]


class ResponseFormatJSONObject(_Request):
    type: Literal["json_object"]


class ResponseFormatJSONSchema(_Request):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    Union[ResponseFormatText, ResponseFormatJSONObject, ResponseFormatJSONSchema], Field(discriminator="type")
]


class StructuredOutputs(_Request):
    """vLLM's `structured_outputs`: exactly one of these."""

    json_: dict[str, Any] | StrictStr | None = Field(None, alias="json")
    regex: StrictStr | None = None
    choice: list[StrictStr] | None = Field(None, min_length=1)
    grammar: StrictStr | None = None
    json_object: bool | None = None


class StructuredOutputFields(_Request):
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    # vLLM's older names for structured_outputs' members
    guided_json: dict[str, Any] | StrictStr | None = None
    guided_regex: StrictStr | None = None
    guided_choice: list[StrictStr] | None = Field(None, min_length=1)
    guided_grammar: StrictStr | None = None


class FunctionDefinition(_Request):
    name: StrictStr
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Request):
    name: StrictStr


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(SamplingFields, StructuredOutputFields):
    messages: list[Message] = Field(min_length=1, max_length=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS_LIMIT)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[ToolDefinition] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True


# -- completions ------------------------------------------------------------------------------
Prompt = Union[
    StrictStr,
    Annotated[list[StrictStr], Field(min_length=1, max_length=MAX_PROMPTS)],
    Annotated[list[StrictInt], Field(min_length=1)],
    Annotated[list[Annotated[list[StrictInt], Field(min_length=1)]], Field(min_length=1, max_length=MAX_PROMPTS)],
]


class CompletionRequest(SamplingFields, StructuredOutputFields):
    prompt: Prompt
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    suffix: StrictStr | None = None


# -- embeddings -------------------------------------------------------------------------------
class EmbeddingRequest(_Request):
    model: StrictStr = Field(max_length=1024)
    input: Prompt
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = Field(None, max_length=1024)


# -- responses --------------------------------------------------------------------------------
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


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = []
    token_logprobs: list[float | None] = []
    tokens: list[str] = []
    top_logprobs: list[dict[str, float] | None] = []


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


def _omitted_when_none(**kwargs):
    """A stream delta's field that is left out, not sent as null, when it has no value (as OpenAI
    streams them; the SDK's accumulators would overwrite what an earlier delta set)."""
    return Field(None, exclude_if=lambda value: value is None, **kwargs)


class ToolCallDeltaFunction(BaseModel):
    name: str | None = _omitted_when_none()
    arguments: str | None = _omitted_when_none()


class ToolCallDeltaOut(BaseModel):
    index: int
    id: str | None = _omitted_when_none()
    type: Literal["function"] | None = _omitted_when_none()
    function: ToolCallDeltaFunction


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = _omitted_when_none()
    content: str | None = _omitted_when_none()
    tool_calls: list[ToolCallDeltaOut] | None = _omitted_when_none()


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


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "appliance"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- /openapi.json ----------------------------------------------------------------------------
ROUTES: list[tuple[str, str, type[BaseModel] | None, type[BaseModel], str]] = [
    ("/v1/chat/completions", "post", ChatCompletionRequest, ChatCompletion, "Create a chat completion (stream: SSE of ChatCompletionChunk)"),
    ("/v1/completions", "post", CompletionRequest, Completion, "Create a text completion (stream: SSE of Completion chunks)"),
    ("/v1/embeddings", "post", EmbeddingRequest, EmbeddingList, "Embed inputs (mean-pooled last hidden states)"),
    ("/v1/models", "get", None, ModelList, "List the served models"),
]


def openapi_spec(version: str) -> dict[str, Any]:
    from pydantic.json_schema import models_json_schema

    models = [(m, "validation") for _, _, m, _, _ in ROUTES if m is not None]
    models += [(m, "serialization") for _, _, _, m, _ in ROUTES] + [(ChatCompletionChunk, "serialization"), (ErrorResponse, "serialization")]
    refs, schema = models_json_schema(models, ref_template="#/components/schemas/{model}")
    paths: dict[str, Any] = {}
    error_ref = {"$ref": refs[(ErrorResponse, "serialization")]["$ref"]}
    for path, method, request, response, summary in ROUTES:
        op: dict[str, Any] = {
            "summary": summary,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": refs[(response, "serialization")]}}},
                "default": {"description": "An OpenAI error object", "content": {"application/json": {"schema": error_ref}}},
            },
        }
        if request is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": refs[(request, "validation")]}}}
        paths[path] = {method: op}
    for path, summary in (("/health", "Liveness: process and engine loop alive"), ("/ready", "Readiness: model loaded, not draining, canary passed")):
        paths[path] = {"get": {"summary": summary, "responses": {"200": {"description": "OK"}, "503": {"description": "Not healthy / not ready; the body says why"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "appliance: OpenAI-compatible API", "version": version},
        "paths": paths,
        "components": {"schemas": schema.get("$defs", {}), "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
