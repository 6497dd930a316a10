"""Accounting, the last stage of a request: key usage, per-key metrics, the request log line."""

import time

from appliance.config import Config
from appliance.keys import KeyStore
from appliance.ops.metrics import Metrics
from appliance.ops.requestlog import log_request
from appliance.serving.context import RequestContext


class Accounting:
    def __init__(self, config: Config, keys: KeyStore | None, metrics: Metrics):
        self.config = config
        self.keys = keys
        self.metrics = metrics

    def finish(self, ctx: RequestContext) -> None:
        """Account one API request, once: usage (in memory, flushed by the ledger), metrics, the log line."""
        ctx.accounted = True
        if ctx.key_id is not None:
            if self.keys is not None:
                self.keys.record_usage(ctx.key_id, ctx.prompt_tokens, ctx.completion_tokens)
            self.metrics.observe_key(ctx.key_id, ctx.prompt_tokens, ctx.completion_tokens)
        log_request(
            request_id=ctx.request_id, key_id=ctx.key_id, model=ctx.model, endpoint=ctx.endpoint,
            status=ctx.status, prompt_tokens=ctx.prompt_tokens, completion_tokens=ctx.completion_tokens,
            queue_time_s=ctx.queue_time_s, ttft_s=ctx.ttft_s, total_time_s=time.monotonic() - ctx.started,
            finish_reason=ctx.finish_reason, prompt=ctx.prompt_text if self.config.log_prompts else None,
        )
