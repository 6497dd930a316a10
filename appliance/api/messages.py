"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API (what Claude Code and the anthropic SDK
speak), on the same plan, generation, limits and accounting as the OpenAI routes.

The request becomes a chat for the model's template: the system prompt, then each turn's blocks
(text; a user's images as image parts among its text, read as chat's image_url parts are; an
assistant's tool_use blocks as its tool calls and its thinking as its reasoning; a user's
tool_result blocks as tool messages before its text). Tools and tool_choice map onto
OpenAI's (any is required, tool is a named function, disable_parallel_tool_use turns parallel
calls off). The answer is a Message or Anthropic's event stream (formatters/messages.py); errors
take Anthropic's shape (app.py).
"""

import asyncio
import json

from starlette.requests import Request
from starlette.responses import Response

from appliance.api.endpoint import Endpoint, route
from appliance.api.formatters.messages import MessagesFormatter
from appliance.api.images import ImageLimits, ImageRef
from appliance.api.plan import Ask, read_request_images
from appliance.api.request import read_request
from appliance.api.sampling import Sampling
from appliance.api.schemas.messages import (
    CountTokensRequest,
    CountTokensResponse,
    ImageBlock,
    MessagesRequest,
    MessagesRequestBase,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from appliance.api.tokenize import lease_for
from appliance.errors import invalid
from appliance.serving.constraint import OutputConstraint
from appliance.serving.formats.tools.functions import ToolRequest, tool_request
from appliance.serving.render import render_chat

# Where each kind of block may be: a call is the assistant's, its result the user's.
TURN_OF_BLOCK = {ToolUseBlock: "assistant", ThinkingBlock: "assistant", ToolResultBlock: "user", ImageBlock: "user"}


def chat_messages(req: MessagesRequestBase) -> list[dict]:
    system = req.system_text()
    messages = [{"role": "system", "content": system}] if system else []
    for i, turn in enumerate(req.messages):
        text, parts, calls, results, thought = [], [], [], [], []
        for j, block in enumerate(turn.blocks()):
            if TURN_OF_BLOCK.get(type(block), turn.role) != turn.role:
                raise invalid(f"messages.{i}.content.{j}.type", f"a {block.type} block belongs in a "
                                                                f"{TURN_OF_BLOCK[type(block)]} turn, not a {turn.role} one")
            if isinstance(block, TextBlock):
                text.append(block.text)
                parts.append({"type": "text", "text": block.text})
            elif isinstance(block, ImageBlock):
                parts.append({"type": "image"})
            elif isinstance(block, ToolUseBlock):
                calls.append({"id": block.id, "type": "function",
                              "function": {"name": block.name, "arguments": json.dumps(block.input)}})
            elif isinstance(block, ToolResultBlock):
                content = block.text()
                results.append({"role": "tool", "tool_call_id": block.tool_use_id,
                                "content": f"error: {content}" if block.is_error else content})
            elif isinstance(block, ThinkingBlock):
                thought.append(block.thinking)
        if turn.role == "assistant":
            message = {"role": "assistant", "content": "".join(text)}
            if calls:
                message["tool_calls"] = calls
            if thought:
                message["reasoning_content"] = "".join(thought)
            messages.append(message)
        else:
            messages += results
            if len(parts) > len(text):  # images: the parts in order, for the template's image placeholders
                messages.append({"role": "user", "content": parts})
            elif text:
                messages.append({"role": "user", "content": "".join(text)})
    return messages


def image_refs(req: MessagesRequestBase) -> tuple[ImageRef, ...]:
    """The user turns' image blocks, in order, each with its place in the body."""
    return tuple(ImageRef(block.url, f"messages.{i}.content.{j}.source")
                 for i, turn in enumerate(req.messages) for j, block in enumerate(turn.blocks())
                 if isinstance(block, ImageBlock))


def tools_of(req: MessagesRequestBase) -> ToolRequest:
    tools = None
    if req.tools is not None:
        tools = [{"type": "function", "function": {"name": t.name, "parameters": t.input_schema,
                                                   **({"description": t.description} if t.description else {})}}
                 for t in req.tools]
    choice, parallel = None, True
    if req.tool_choice is not None:
        kind = req.tool_choice.type
        if kind == "tool" and req.tool_choice.name is None:
            raise invalid("tool_choice.name", "tool_choice of type tool needs the name of the tool to call")
        choice = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or {
            "type": "function", "function": {"name": req.tool_choice.name}}
        parallel = not req.tool_choice.disable_parallel_tool_use
        if tools is None and kind == "none":
            choice = None  # nothing to call either way
    return tool_request(tools, choice, parallel)


def messages_ask(req: MessagesRequest) -> Ask:
    sampling = Sampling(temperature=1.0 if req.temperature is None else req.temperature,
                        top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0,
                        stop=tuple(req.stop_sequences or ()))
    output = req.output_config.format if req.output_config is not None else None
    constraint = OutputConstraint("output_config.format", "json", output.schema_) if output is not None else None
    return Ask(model=req.model, sampling=sampling, prompt_param="messages", max_tokens=req.max_tokens,
               stream=req.stream, constraint=constraint, messages=tuple(chat_messages(req)), tools=tools_of(req),
               priority=req.priority, images=image_refs(req))


def messages_formatter(req: MessagesRequest, generation, request_id: str, model: str) -> MessagesFormatter:
    return MessagesFormatter(generation, request_id, model)


MESSAGES = Endpoint("messages", "msg", MessagesRequest, messages_ask, messages_formatter)
messages = route(MESSAGES)


async def count_tokens(request: Request) -> Response:
    """The prompt's tokens as the model would see them (chat template, tools), without generating."""
    req = await read_request(request, CountTokensRequest)
    history, tools, refs = chat_messages(req), tools_of(req), image_refs(req)
    lease = await lease_for(request, req.model)
    try:
        images = await read_request_images(refs, lease.served, ImageLimits.from_config(request.app.state.service.config))
        prompt, _ = await render_chat(lease.served, history, tools)
        engine = lease.served.engine
        if images:  # each image counts the placeholder tokens the model's processor gives it
            count = len((await asyncio.to_thread(engine.prepare_images, prompt, [i.picture for i in images]))[0])
        else:
            count = len(await asyncio.to_thread(engine.tokenizer.encode, prompt, add_special_tokens=False))
    finally:
        lease.release()
    return Response(CountTokensResponse(input_tokens=count).model_dump_json(), media_type="application/json")
