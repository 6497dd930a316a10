"""POST /v1/chat/completions: messages (and tools) through the model's chat template, then generation.

The output may be held to a grammar: response_format (or vLLM's structured_outputs), or the tools'
call format; the model's output format reads the text back into content, reasoning and tool calls.
"""

from appliance.api.endpoint import Endpoint, route
from appliance.api.formatters.chat import ChatFormatter
from appliance.api.images import ImageRef
from appliance.api.plan import Ask
from appliance.api.sampling import Sampling
from appliance.api.schemas import ChatCompletionRequest
from appliance.api.schemas.chat import UserMessage
from appliance.api.structured import requested_constraint
from appliance.serving.formats.tools.functions import tool_request


def image_refs(req: ChatCompletionRequest) -> tuple[ImageRef, ...]:
    """The user messages' image parts, in order, each with its place in the body."""
    return tuple(ImageRef(part.image_url.url, f"messages.{i}.content.{j}.image_url.url")
                 for i, message in enumerate(req.messages) if isinstance(message, UserMessage)
                 for j, part in message.image_parts())


def chat_ask(req: ChatCompletionRequest) -> Ask:
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools is not None else None
    choice = req.tool_choice.model_dump() if hasattr(req.tool_choice, "model_dump") else req.tool_choice
    return Ask(
        model=req.model, sampling=Sampling.from_openai(req), prompt_param="messages",
        max_tokens=req.max_completion_tokens or req.max_tokens, n=req.n, stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
        logprobs=(req.top_logprobs or 0) if req.logprobs else None, constraint=requested_constraint(req),
        messages=tuple(m.to_template() for m in req.messages), tools=tool_request(tools, choice, req.parallel_tool_calls),
        priority=req.priority,
        reasoning_effort=req.reasoning_effort, images=image_refs(req),
    )


def chat_formatter(req: ChatCompletionRequest, generation, request_id: str, model: str) -> ChatFormatter:
    ask = generation.plan.ask
    return ChatFormatter(generation, request_id, model, ask.logprobs, ask.include_usage)


CHAT = Endpoint("chat", "chatcmpl", ChatCompletionRequest, chat_ask, chat_formatter)
chat_completions = route(CHAT)
