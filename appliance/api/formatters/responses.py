"""The Responses API's answer: a Response object from a finished choice, or the events the openai SDK's
`responses.stream` folds (created, output item and text deltas, function-call argument deltas, and
response.completed, or response.incomplete when max_output_tokens cut it, as OpenAI ends them)."""

from appliance.api.formatters.base import Formatter
from appliance.api.generation import Choice, Generation, Update
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
from appliance.serving.formats.events import (
    ContentDelta,
    ReasoningDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
    collect,
    reasoning,
)


class ResponseFormatter(Formatter):
    """One choice (the Responses API has no n), echoing the request's settings as OpenAI's Response does."""

    def __init__(self, generation: Generation, request_id: str, model: str, req: ResponsesRequest):
        super().__init__(generation, request_id, model)
        self.echo = {
            "instructions": req.instructions, "parallel_tool_calls": req.parallel_tool_calls,
            "tool_choice": req.tool_choice.model_dump() if hasattr(req.tool_choice, "model_dump")
            else (req.tool_choice or "auto"),
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []], "temperature": req.temperature,
            "top_p": req.top_p, "max_output_tokens": req.max_output_tokens, "metadata": req.metadata,
            "text": req.text.model_dump(by_alias=True, exclude_none=True) if req.text is not None else None,
            "store": req.store, "previous_response_id": req.previous_response_id}
        self.stream = ResponseStream(request_id)

    def response(self, status: str) -> Response:
        """The Response object: empty while in progress."""
        output, usage, incomplete = [], None, None
        if status != "in_progress":
            choice = self.generation.choices[0]
            output = output_items(self.request_id, choice)
            counts = self.generation.counts()
            usage = ResponseUsage(input_tokens=counts.prompt, output_tokens=counts.completion,
                                  total_tokens=counts.prompt + counts.completion,
                                  output_tokens_details={"reasoning_tokens": counts.reasoning},
                                  input_tokens_details={"cached_tokens": counts.cached})
            if choice.finish_reason == "length":
                status, incomplete = "incomplete", IncompleteDetails(reason="max_output_tokens")
        return Response(id=self.request_id, model=self.model, status=status, output=output, usage=usage,
                        incomplete_details=incomplete, **self.echo)

    def body(self) -> Response:
        return self.response("completed")

    def chunks(self, choice: Choice, update: Update) -> list[dict]:
        stream, events = self.stream, []
        if stream.sequence == 0:
            events.append(stream.event("response.created", response=self.response("in_progress").model_dump()))
        for e in update.events:
            if isinstance(e, ReasoningDelta):
                events += stream.reasoning(e.text)
            elif isinstance(e, ContentDelta) and e.text:
                events += stream.text(e.text)
            elif isinstance(e, ToolCallStart):
                events += stream.call(e.id, e.name)
            elif isinstance(e, ToolCallArguments):
                events += stream.arguments(e.text)
            elif isinstance(e, ToolCallEnd):
                events += stream.close()
        if update.finished:
            events += stream.close(cut=True)
            final = self.response("completed")  # or incomplete: OpenAI ends such a stream with response.incomplete
            events.append(stream.event(f"response.{final.status}", response=final.model_dump()))
        return events


def output_items(request_id: str, choice: Choice) -> list:
    (content, calls), thought = collect(choice.events), reasoning(choice.events)
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

    def call(self, call_id: str, name: str) -> list[dict]:
        events = self.close()
        self.open = {"id": f"fc_{call_id}", "type": "function_call", "call_id": call_id, "name": name,
                     "arguments": "", "status": "in_progress"}
        self.items.append(self.open)
        events.append(self.event("response.output_item.added", output_index=len(self.items) - 1, item=dict(self.open)))
        return events

    def arguments(self, delta: str) -> list[dict]:
        self.open["arguments"] += delta
        return [self.event("response.function_call_arguments.delta", **self._place(), delta=delta)]

    def close(self, cut: bool = False) -> list[dict]:
        """The done events of the item being written, if any; a call still open when the output ended (`cut`)
        is incomplete."""
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
        item["status"] = "incomplete" if cut and item["type"] == "function_call" else "completed"
        events.append(self.event("response.output_item.done", output_index=len(self.items) - 1, item=dict(item)))
        self.open = None
        return events
