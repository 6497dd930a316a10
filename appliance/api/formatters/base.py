"""What every formatter has: the request's id, the model's name as answers give it, the model's token texts."""

import json
import time
from collections.abc import Callable

from pydantic import BaseModel

from appliance.api.generation import Choice, Generation, TokenCounts, Update
from appliance.api.schemas import Usage
from appliance.errors import APIError


def sse(obj: BaseModel | dict) -> str:
    body = obj.model_dump_json() if isinstance(obj, BaseModel) else json.dumps(obj)
    return f"data: {body}\n\n"


class Formatter:
    """How one API writes a generation's answer: the whole body, or stream events as the outputs come."""

    done: str | None = "data: [DONE]\n\n"  # the line that ends the stream, after everything else

    def __init__(self, generation: Generation, request_id: str, model: str):
        self.generation = generation
        self.request_id = request_id
        self.model = model  # as answers name it (pool.served_name)
        self.token_text: Callable[[int], str] = generation.plan.served.token_text
        self.created = int(time.time())

    def body(self) -> BaseModel:
        """The whole answer, once the generation finished."""
        raise NotImplementedError

    def chunks(self, choice: Choice, update: Update) -> list:
        """The stream events for one engine output of `choice`."""
        raise NotImplementedError

    def closing(self) -> list:
        """The events after the last output (a usage chunk, where asked for)."""
        return []

    def failure(self, error: APIError) -> list:
        """The events that end a stream that failed after its status was sent."""
        return [error.body()]

    def frame(self, event: BaseModel | dict) -> str:
        return sse(event)


def openai_usage(counts: TokenCounts) -> Usage:
    """Chat's and completions' usage object."""
    return Usage(prompt_tokens=counts.prompt, completion_tokens=counts.completion,
                 total_tokens=counts.prompt + counts.completion, prompt_tokens_details={"cached_tokens": counts.cached})
