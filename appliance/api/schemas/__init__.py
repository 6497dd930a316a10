"""Request and response shapes of the public API, declared once, one module per endpoint.

The same pydantic models validate input (naming the offending field in the 400), build the
responses, and produce /openapi.json. Requests refuse the fields they do not declare
(appliance.errors.REFUSED_REASONS says why for the ones clients send most).
"""

from appliance.api.schemas.chat import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ChatLogprobs,
    ChatMessage,
    Message,
    ToolCallDeltaOut,
    ToolCallOut,
)
from appliance.api.schemas.common import (
    MAX_N,
    MAX_PROMPTS,
    MAX_TOP_LOGPROBS,
    ErrorResponse,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from appliance.api.schemas.completions import Completion, CompletionChoice, CompletionLogprobs, CompletionRequest
from appliance.api.schemas.embeddings import Embedding, EmbeddingList, EmbeddingRequest, ModelCard, ModelList
from appliance.api.schemas.openapi import openapi_spec

__all__ = [
    "MAX_N", "MAX_PROMPTS", "MAX_TOP_LOGPROBS",
    "ChatChoice", "ChatChunkChoice", "ChatCompletion", "ChatCompletionChunk", "ChatCompletionRequest", "ChatDelta",
    "ChatLogprobs", "ChatMessage", "Completion", "CompletionChoice", "CompletionLogprobs", "CompletionRequest",
    "Embedding", "EmbeddingList", "EmbeddingRequest", "ErrorResponse", "Message", "ModelCard", "ModelList",
    "TokenLogprob", "ToolCallDeltaOut", "ToolCallOut", "TopLogprob", "Usage", "openapi_spec",
]
