"""What the engine gives back: a request's output of one step, and the engine's counters."""

from dataclasses import dataclass, field

from engine.sampler import SampledToken


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None  # "stop", "length" or "abort"
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    logprobs: list[SampledToken] = field(default_factory=list)
    # With params.prompt_logprobs, on the first output only: one per prompt token, the first with logprob None
    prompt_logprobs: list[SampledToken] | None = None
    stop_reason: str | int | None = None  # the stop string or stop token that ended it
    arrival_time: float = 0.0
    first_scheduled_time: float | None = None
    first_token_time: float | None = None


@dataclass
class EngineStats:
    model: str | None
    num_waiting: int
    num_running: int
    kv_blocks_used: int
    kv_blocks_total: int
    kv_usage: float
    block_size: int
    prefix_cache_queries: int
    prefix_cache_hits: int
    num_preemptions: int
    prompt_tokens_total: int
    generation_tokens_total: int
    steps_total: int
    last_step_time: float  # time.monotonic() of the last step that ran
    execution: dict | None = None  # ModelRunner.execution() of the loaded model
    state_slots_used: int = 0  # a model with recurrent layers: one slot per running sequence (engine.state_slots)
    state_slots_total: int = 0
    structured_output_requests: int = 0  # requests added with a grammar or schema
