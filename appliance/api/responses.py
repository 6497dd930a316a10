"""POST /v1/responses: the request becomes a chat request (input items → messages, tools, text.format →
response_format), and so the chat's Ask; the answer is a Response object, or its stream of events
(formatters/responses.py).

Stored responses: unless `store` is false, a finished response's conversation (its input after the
instructions, and its output as the assistant's turn) is kept in the key store for the key that
asked (keys/responses.py), for the operator's responses_retention_s, with its images as they were
read (never their URLs: a follow-up fetches nothing); `previous_response_id` puts that conversation,
images included, before the new input, so an agent may send only the new turn, and the engine finds
the images it has seen by their content. A key sees only its own responses; the images they hold are
bounded per key (stored_image_bytes_per_key), checked before generating.
"""

import asyncio
import dataclasses

from appliance.api.chat import chat_ask
from appliance.api.endpoint import Endpoint, route
from appliance.api.formatters.responses import ResponseFormatter
from appliance.api.generation import Generation
from appliance.api.images import ImageRef
from appliance.api.plan import Ask, RequestPlan
from appliance.api.request import parse
from appliance.api.schemas.chat import ChatCompletionRequest
from appliance.errors import APIError, invalid
from appliance.serving.context import RequestContext
from appliance.serving.formats.events import collect, reasoning
from appliance.serving.service import Service
from appliance.api.schemas.responses import (FunctionCallInput, FunctionCallOutputInput, ReasoningInput, ResponsesRequest,
                                             UserInputMessage)


def chat_messages(req: ResponsesRequest) -> list[dict]:
    messages = [{"role": "system", "content": req.instructions}] if req.instructions else []
    if isinstance(req.input, str):
        return messages + [{"role": "user", "content": req.input}]
    thought = None  # a reasoning item's text, for the assistant turn that follows it
    for item in req.input:
        if isinstance(item, ReasoningInput):
            thought = (thought or "") + item.text()
            continue
        if isinstance(item, FunctionCallInput):
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
            if thought is None and messages and messages[-1]["role"] == "assistant" \
                    and messages[-1].get("tool_calls") is not None:
                messages[-1]["tool_calls"].append(call)  # parallel calls are one assistant turn
                continue
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputInput):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
        else:
            messages.append({"role": item.role, "content": item.chat_content()})
        if thought is not None and messages[-1]["role"] == "assistant":
            messages[-1]["reasoning"] = thought
        thought = None
    return messages


def chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    body: dict = {"model": req.model, "messages": chat_messages(req), "stream": req.stream,
                  "parallel_tool_calls": req.parallel_tool_calls, "priority": req.priority}
    for name in ("temperature", "top_p"):
        if getattr(req, name) is not None:
            body[name] = getattr(req, name)
    if req.max_output_tokens is not None:
        body["max_completion_tokens"] = req.max_output_tokens
    if req.tools is not None:
        body["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
                         for t in req.tools]
    if isinstance(req.tool_choice, str):
        body["tool_choice"] = req.tool_choice
    elif req.tool_choice is not None:
        body["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.name}}
    if req.reasoning is not None and req.reasoning.effort is not None:
        body["reasoning_effort"] = req.reasoning.effort
    fmt = req.text.format if req.text is not None else None
    if fmt is not None and fmt.type == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": fmt.model_dump(
            by_alias=True, exclude={"type"}, exclude_none=True)}
    elif fmt is not None:
        body["response_format"] = {"type": fmt.type}
    return parse(ChatCompletionRequest, body)


def responses_ask(req: ResponsesRequest) -> Ask:
    for value in req.include or ():
        raise invalid("include", f"include: {value!r} is not available here (no file or web search, no image URLs "
                                 "to give back, no encrypted reasoning, no logprobs in the Responses API); send "
                                 "include: [] or leave it out")
    # Its images named by their place in the Responses request (the chat's messages are numbered otherwise).
    return dataclasses.replace(chat_ask(chat_request(req)), images=image_refs(req))


def image_refs(req: ResponsesRequest) -> tuple[ImageRef, ...]:
    """The input messages' input_image parts, in order, each with its place in the body."""
    if isinstance(req.input, str):
        return ()
    return tuple(ImageRef(part.image_url, f"input.{i}.content.{j}.image_url")
                 for i, item in enumerate(req.input) if isinstance(item, UserInputMessage)
                 for j, part in item.image_parts())


async def resume(req: ResponsesRequest, ask: Ask, ctx: RequestContext, service: Service) -> Ask:
    """The stored conversation of `previous_response_id` (this key's) before the new input, after the instructions."""
    if req.previous_response_id is None:
        return ask
    retention = service.config.responses_retention_s
    stored = await asyncio.to_thread(service.keys.stored_response, ctx.key_id, req.previous_response_id, retention)
    if stored is None:
        raise APIError(404, f"no stored response {req.previous_response_id!r} for this key: responses are kept "
                            f"{retention / 86400:g} days, for the key that made them, unless store was false",
                       param="previous_response_id", code="response_not_found")
    instructions, new = split_instructions(req, ask.messages)
    kept = tuple(ImageRef(None, "previous_response_id", data) for data in stored.images)
    return dataclasses.replace(ask, messages=instructions + tuple(stored.messages) + new, images=kept + ask.images)


async def check_keep(req: ResponsesRequest, plan: RequestPlan, ctx: RequestContext, service: Service) -> None:
    """Refuse, before generating, a response to be stored whose images would take its key past
    stored_image_bytes_per_key (the images it holds already count once)."""
    if not req.store or ctx.key_id is None or not plan.images:
        return
    bound = service.config.stored_image_bytes_per_key
    total = await asyncio.to_thread(service.keys.stored_image_bytes_with, ctx.key_id,
                                    [image.data for image in plan.images], service.config.responses_retention_s)
    if total > bound:
        raise invalid("store", f"store: this key's stored responses would hold {total} bytes of images, more than "
                               f"the {bound} this server keeps per key (stored_image_bytes_per_key); send "
                               "store: false, or wait for older responses to expire (responses_retention_s)")


async def keep(req: ResponsesRequest, generation: Generation, ctx: RequestContext, service: Service) -> None:
    """Store the finished response's conversation, unless the request said store: false."""
    if not req.store or ctx.key_id is None:
        return
    choice = generation.choices[0]
    content, calls = collect(choice.events)
    answer = {"role": "assistant", "content": content or ""}
    if calls:
        answer["tool_calls"] = [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                for c in calls]
    thought = reasoning(choice.events)
    if thought is not None:
        answer["reasoning_content"] = thought
    _, conversation = split_instructions(req, generation.plan.ask.messages)
    await asyncio.to_thread(service.keys.store_response, ctx.key_id, ctx.request_id, [*conversation, answer],
                            service.config.responses_retention_s, [image.data for image in generation.plan.images])


def split_instructions(req: ResponsesRequest, messages: tuple[dict, ...]) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """(the instructions' system message, if any; the conversation): instructions do not carry over."""
    n = 1 if req.instructions else 0
    return messages[:n], messages[n:]


def response_formatter(req: ResponsesRequest, generation, request_id: str, model: str) -> ResponseFormatter:
    return ResponseFormatter(generation, request_id, model, req)


# A Responses request is served as a chat: its refusals name the Responses fields the chat's came from.
RESPONSES_PARAMS = {"response_format": "text.format", "max_completion_tokens": "max_output_tokens",
                    "reasoning_effort": "reasoning.effort"}
RESPONSES = Endpoint("responses", "resp", ResponsesRequest, responses_ask, response_formatter, resume, check_keep,
                     keep, param_names=RESPONSES_PARAMS)
responses = route(RESPONSES)
