"""The Responses API's answer: a Response object from a finished choice, or the events the openai SDK's
`responses.stream` folds (created, output item and text deltas, function-call argument deltas, completed)."""

from appliance.api import formatting as fmt
from appliance.api.schemas.responses import (
    FunctionCallOutput,
    IncompleteDetails,
    OutputMessage,
    OutputText,
    ReasoningOutput,
    ReasoningText,
    Response,
    ResponsesRequest,
    ResponseUsage,
)
from appliance.api.tools.events import ContentDelta, ReasoningDelta, ToolCallDelta, collect, reasoning


def response_formats(req: ResponsesRequest) -> fmt.Formats:
    echo = {"instructions": req.instructions, "parallel_tool_calls": req.parallel_tool_calls,
            "tool_choice": req.tool_choice.model_dump() if hasattr(req.tool_choice, "model_dump")
            else (req.tool_choice or "auto"),
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []], "temperature": req.temperature,
            "top_p": req.top_p, "max_output_tokens": req.max_output_tokens, "metadata": req.metadata,
            "text": req.text.model_dump(by_alias=True, exclude_none=True) if req.text is not None else None}

    def response(request_id: str, model: str, states: list, status: str) -> Response:
        state = states[0]
        output, usage, incomplete = [], None, None
        if status != "in_progress":
            output = output_items(request_id, state)
            u = fmt.usage(states)
            usage = ResponseUsage(input_tokens=u.prompt_tokens, output_tokens=u.completion_tokens,
                                  total_tokens=u.total_tokens,
                                  output_tokens_details={"reasoning_tokens": state.reasoning_tokens},
                                  input_tokens_details={"cached_tokens": u.prompt_tokens_details["cached_tokens"]})
            if state.finish_reason == "length":
                status, incomplete = "incomplete", IncompleteDetails(reason="max_output_tokens")
        return Response(id=request_id, model=model, status=status, output=output, usage=usage,
                        incomplete_details=incomplete, **echo)

    def whole(request_id: str, model: str, states: list, token_text, top) -> Response:
        return response(request_id, model, states, "completed")

    def chunks(request_id: str, model: str, created: int, state, out, token_text, top) -> list[dict]:
        stream = state.stream if state.started else ResponseStream(request_id)
        events = []
        if not state.started:
            state.started, state.stream = True, stream
            events += [stream.event("response.created", response=response(request_id, model, [state],
                                                                            "in_progress").model_dump())]
        text_events = state.new_events if state.parsed else [ContentDelta(out.new_text)]
        for e in text_events:
            if isinstance(e, ReasoningDelta):
                events += stream.reasoning(e.text)
            elif isinstance(e, ContentDelta) and e.text:
                events += stream.text(e.text)
            elif isinstance(e, ToolCallDelta):
                events += stream.call(e)
        if out.finished:
            events += stream.close()
            final = response(request_id, model, [state], "completed")
            events.append(stream.event("response.completed", response=final.model_dump()))
        return events

    return fmt.Formats(whole, chunks, lambda *args: {})


def output_items(request_id: str, state) -> list:
    if not state.parsed:
        content, calls, thought = "".join(state.text), [], None
    else:
        (content, calls), thought = collect(state.events), reasoning(state.events)
    items = []
    if thought is not None:
        items.append(ReasoningOutput(id=f"rs_{request_id}", content=[ReasoningText(text=thought)]))
    if content:
        items.append(OutputMessage(id=f"msg_{request_id}", content=[OutputText(text=content)]))
    items += [FunctionCallOutput(id=f"fc_{c.id}", call_id=c.id, name=c.name, arguments=c.arguments) for c in calls]
    return items


class ResponseStream:
    """Numbers the events and opens and closes output items as text and calls arrive."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.sequence = 0
        self.items: list[dict] = []  # the output so far, as the SDK accumulates it
        self.open: dict | None = None  # the item being written

    def event(self, type: str, **fields) -> dict:
        self.sequence += 1
        return {"type": type, "sequence_number": self.sequence - 1, **fields}

    def _place(self) -> dict:
        return {"output_index": len(self.items) - 1, "item_id": self.open["id"]}

    def text(self, delta: str) -> list[dict]:
        events = []
        if self.open is None or self.open["type"] != "message":
            events += self.close()
            self.open = {"id": f"msg_{self.request_id}", "type": "message", "role": "assistant",
                         "status": "in_progress", "content": []}
            self.items.append(self.open)
            events.append(self.event("response.output_item.added", output_index=len(self.items) - 1,
                                     item=dict(self.open, content=[])))
            self.open["content"].append({"type": "output_text", "text": "", "annotations": []})
            events.append(self.event("response.content_part.added", **self._place(), content_index=0,
                                     part={"type": "output_text", "text": "", "annotations": []}))
        self.open["content"][0]["text"] += delta
        events.append(self.event("response.output_text.delta", **self._place(), content_index=0, delta=delta,
                                 logprobs=[]))
        return events

    def reasoning(self, delta: str) -> list[dict]:
        events = []
        if self.open is None or self.open["type"] != "reasoning":
            events += self.close()
            self.open = {"id": f"rs_{self.request_id}", "type": "reasoning", "summary": [], "content": [],
                         "status": "in_progress"}
            self.items.append(self.open)
            events.append(self.event("response.output_item.added", output_index=len(self.items) - 1,
                                     item=dict(self.open, content=[])))
            self.open["content"].append({"type": "reasoning_text", "text": ""})
        self.open["content"][0]["text"] += delta
        events.append(self.event("response.reasoning_text.delta", **self._place(), content_index=0, delta=delta))
        return events

    def call(self, e: ToolCallDelta) -> list[dict]:
        events = []
        if e.id is not None:  # a new call
            events += self.close()
            self.open = {"id": f"fc_{e.id}", "type": "function_call", "call_id": e.id, "name": e.name or "",
                         "arguments": "", "status": "in_progress"}
            self.items.append(self.open)
            events.append(self.event("response.output_item.added", output_index=len(self.items) - 1,
                                     item=dict(self.open)))
        if e.arguments:
            self.open["arguments"] += e.arguments
            events.append(self.event("response.function_call_arguments.delta", **self._place(), delta=e.arguments))
        return events

    def close(self) -> list[dict]:
        """The done events of the item being written, if any."""
        item, events = self.open, []
        if item is None:
            return events
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self.event("response.output_text.done", **self._place(), content_index=0,
                                     text=part["text"], logprobs=[]))
            events.append(self.event("response.content_part.done", **self._place(), content_index=0, part=part))
        elif item["type"] == "reasoning":
            events.append(self.event("response.reasoning_text.done", **self._place(), content_index=0,
                                     text=item["content"][0]["text"]))
        else:
            events.append(self.event("response.function_call_arguments.done", **self._place(),
                                     arguments=item["arguments"], name=item["name"]))
        item["status"] = "completed"
        events.append(self.event("response.output_item.done", output_index=len(self.items) - 1, item=dict(item)))
        self.open = None
        return events
