"""One API request's record as it moves through the stages: who sent it, what ran, what it cost.

Each stage adds what it learnt through the methods below (admission the key and the model, the
plan the prompt and the constraint, the engine stream the timings, the answer the usage and how
it ended); accounting reads the record once at the end.
"""

import time
from dataclasses import dataclass, field

from appliance.serving.served_model import ServedModel


@dataclass(eq=False)
class RequestContext:
    """One API request (possibly several engine requests: n > 1, several prompts)."""

    request_id: str
    endpoint: str
    model: str
    span: object | None = None  # its trace span (ops.tracing), when traces are on
    key_id: str | None = None
    priority: int = 0  # its key's default priority (lower runs first); a request may say its own
    share_weight: float = 1.0  # its key's share of the engine among keys of equal priority
    prompt_text: str | None = None  # logged only when config.log_prompts
    started: float = field(default_factory=time.monotonic)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    queue_time_s: float | None = None
    ttft_s: float | None = None
    status: str = "ok"
    constraint: str | None = None  # the grammar the output was held to, for the log line
    images: int = 0  # images in its prompt
    served: ServedModel | None = None  # the model the request was admitted to
    fallback: object | None = None  # routing.Fallback: why another model than its own answered
    allowed_models: list[str] | None = None  # its key's, for a fallback after a failure
    busy_s: float = 0.0  # its share of the box's busy time (ops.cost.BusyClock): what its cost is shared by
    accounted: bool = False  # finish() ran: usage recorded, the request log line written

    def identified(self, key_id: str, priority: int = 0, share_weight: float = 1.0) -> None:
        """Its key is known: a refusal from here on is logged with the key's id; its requests are scheduled with the
        key's priority and weight."""
        self.key_id, self.priority, self.share_weight = key_id, priority, share_weight

    def admitted(self, served: ServedModel, fallback, allowed_models: list[str] | None) -> None:
        self.served, self.fallback, self.allowed_models = served, fallback, allowed_models

    def planned(self, prompt_text: str, constraint: str | None, images: int = 0) -> None:
        self.prompt_text, self.constraint, self.images = prompt_text, constraint, images

    def first_token(self, ttft_s: float, queue_time_s: float | None) -> None:
        """The first token of its first engine request (n > 1: the earliest one counts)."""
        if self.ttft_s is None:
            self.ttft_s, self.queue_time_s = ttft_s, queue_time_s

    def add_busy(self, seconds: float) -> None:
        self.busy_s += seconds

    def counted(self, prompt_tokens: int, completion_tokens: int, finish_reason: str | None = None) -> None:
        """Its usage, before accounting: the key's usage, limits and the log line count it."""
        self.prompt_tokens, self.completion_tokens, self.finish_reason = prompt_tokens, completion_tokens, finish_reason

    def ended(self, status: str) -> None:
        """How it ended when not well: "error 503", "disconnected"."""
        self.status = status

    def mark_accounted(self) -> None:
        self.accounted = True
