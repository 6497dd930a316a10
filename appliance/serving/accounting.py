"""Accounting, the last stage of a request: key usage, per-key metrics, its cost, the request log line, its trace."""

import time
from collections.abc import Callable

from appliance.config import Config
from appliance.keys import KeyStore
from appliance.ops import tracing
from appliance.ops.cost import CostLedger
from appliance.ops.metrics import Metrics
from appliance.ops.requestlog import log_request
from appliance.serving.context import RequestContext


class Accounting:
    def __init__(self, config: Config, keys: KeyStore | None, metrics: Metrics, cost: CostLedger,
                 served_name: Callable[[object], str]):
        self.config = config
        self.keys = keys
        self.metrics = metrics
        self.cost = cost
        self.served_name = served_name  # the model's name as /metrics and responses give it

    def finish(self, ctx: RequestContext) -> None:
        """Account one API request, once: usage (in memory, flushed by the ledger), metrics, the log line."""
        ctx.mark_accounted()
        if ctx.key_id is not None:
            if self.keys is not None:
                self.keys.record_usage(ctx.key_id, ctx.prompt_tokens, ctx.completion_tokens)
            self.metrics.observe_key(ctx.key_id, ctx.prompt_tokens, ctx.completion_tokens)
        model = self.served_name(ctx.served) if ctx.served is not None else ctx.model
        self.cost.record(model, ctx.key_id, "embedding" if ctx.endpoint == "embeddings" else "generation",
                         ctx.prompt_tokens, ctx.completion_tokens, ctx.busy_s)
        record = log_request(
            request_id=ctx.request_id, key_id=ctx.key_id, model=ctx.model, endpoint=ctx.endpoint,
            status=ctx.status, prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens,
            queue_time_s=ctx.queue_time_s, ttft_s=ctx.ttft_s, total_time_s=time.monotonic() - ctx.started,
            finish_reason=ctx.finish_reason, prompt=ctx.prompt_text if self.config.log_prompts else None,
            constraint=ctx.constraint, trace_id=tracing.trace_id(ctx.span), images=ctx.images,
        )
        if ctx.images:
            self.metrics.observe_images(model, ctx.images)
        if ctx.span is not None:
            tracing.annotate(ctx.span, record, model)
