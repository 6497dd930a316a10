"""One API request's record as it moves through the stages: who sent it, what ran, what it cost."""

import time
from dataclasses import dataclass, field

from appliance.serving.served_model import ServedModel


@dataclass(eq=False)  # identity semantics: contexts live in a WeakSet
class RequestContext:
    """One API request (possibly several engine requests: n > 1, several prompts)."""

    request_id: str
    endpoint: str
    model: str
    key_id: str | None = None
    prompt_text: str | None = None  # logged only when config.log_prompts
    started: float = field(default_factory=time.monotonic)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    queue_time_s: float | None = None
    ttft_s: float | None = None
    status: str = "ok"
    constraint: str | None = None  # the grammar the output was held to, for the log line
    served: ServedModel | None = None  # the model the request was admitted to
    fallback: object | None = None  # routing.Fallback: why another model than its own answered
    allowed_models: list[str] | None = None  # its key's, for a fallback after a failure
    busy_s: float = 0.0  # its share of the box's busy time (ops.cost.BusyClock): what its cost is shared by
    span: object | None = None  # its trace span (ops.tracing), when traces are on
    accounted: bool = False  # finish() ran: usage recorded, the request log line written
