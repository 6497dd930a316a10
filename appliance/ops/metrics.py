"""Prometheus metrics, named as vLLM names them so vLLM dashboards and alerts work unchanged.

Engine gauges and counters (running, waiting, KV usage, tokens, preemptions, prefix cache) are
read from the engine's stats at scrape time; per-request histograms and per-key counters are
observed by the service as requests finish. Each service has its own registry.
"""

import hmac
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)


ENGINE_FAMILIES = (  # (family, name, help, EngineStats field), as vLLM names them
    (GaugeMetricFamily, "vllm:num_requests_running", "Number of requests in model execution batches.", "num_running"),
    (GaugeMetricFamily, "vllm:num_requests_waiting", "Number of requests waiting to be processed.", "num_waiting"),
    (GaugeMetricFamily, "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", "kv_usage"),
    (CounterMetricFamily, "vllm:prompt_tokens", "Number of prefill tokens processed.", "prompt_tokens_total"),
    (CounterMetricFamily, "vllm:generation_tokens", "Number of generation tokens processed.", "generation_tokens_total"),
    (CounterMetricFamily, "vllm:num_preemptions", "Cumulative number of preemptions from the engine.", "num_preemptions"),
    (CounterMetricFamily, "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried blocks.",
     "prefix_cache_queries"),
    (CounterMetricFamily, "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached blocks.",
     "prefix_cache_hits"),
)


class _EngineCollector:
    """Reads each loaded model's EngineStats when Prometheus scrapes; nothing to update per step."""

    def __init__(self, engines: Callable[[], list[tuple[str, object]]]):
        self._engines = engines  # (model_name, stats) of every loaded model

    def collect(self):
        engines = self._engines()
        labels = ["model_name"]

        def family(kind, name, doc, value):
            f = kind(name, doc, labels=labels)
            for model, stats in engines:
                f.add_metric([model], value(stats))
            return f

        if not engines:
            return
        for kind, name, doc, field in ENGINE_FAMILIES:
            yield family(kind, name, doc, lambda stats: getattr(stats, field))
        info = GaugeMetricFamily(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig; prefix_caching says why it is off "
            "where the model rules it out (recurrent layers), num_state_slots the recurrent layers' slots.",
            labels=["block_size", "num_gpu_blocks", "enable_prefix_caching", "prefix_caching", "num_state_slots",
                    "model_name"],
        )
        names = ["device", "dtype", "attention_backend", "fused_layers", "cuda_graphs", "async_scheduling", "experts",
                 "attention", "kv_cache", "weights", "kv_cache_dtype", "state_slots", "recurrent"]
        path = GaugeMetricFamily(
            "appliance_engine_execution_info",
            "What runs the model: device, dtype, attention backend, fused layers, CUDA graphs, async scheduling, "
            "experts implementation (MoE), attention variants, KV cache groups, the weights' packing (e.g. int4 g32 "
            "+ bfloat16), the KV cache's dtype, the state slots of recurrent layers and what runs them (fla, torch).",
            labels=[*names, "model_name"],
        )
        for model, stats in engines:
            prefix = (stats.execution or {}).get("prefix_caching", "on")
            info.add_metric([str(stats.block_size), str(stats.kv_blocks_total), str(prefix.startswith("on")), prefix,
                             str(stats.state_slots_total), model], 1.0)
            if stats.execution is not None:
                path.add_metric([str(stats.execution.get(n, "")).lower() for n in names] + [model], 1.0)
        yield info
        yield path


class Metrics:
    def __init__(self, engines: Callable[[], list[tuple[str, object]]]):
        disable_created_metrics()  # as vLLM does: no *_created series
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engines))
        r = self.registry
        self.fallbacks = Counter(
            "appliance_fallbacks", "Requests another model answered: from, to, and why (not_ready, overloaded, failed).",
            ["from", "to", "reason"], registry=r,
        )
        self.request_success = Counter(
            "vllm:request_success", "Count of successfully processed requests.",
            ["model_name", "finished_reason"], registry=r,
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            ["model_name"], buckets=TTFT_BUCKETS, registry=r,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            ["model_name"], buckets=ITL_BUCKETS, registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.",
            ["model_name"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_time = Histogram(
            "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
            ["model_name"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_time_by_priority = Histogram(
            "appliance_request_queue_time_seconds", "Time requests waited before their first step, by priority.",
            ["model_name", "priority"], buckets=LATENCY_BUCKETS, registry=r,
        )
        # As prometheus-fastapi-instrumentator names it (vLLM's API server exports it so).
        self.http_requests = Counter(
            "http_requests", "HTTP requests by route, method and status class (2xx, 4xx, 5xx).",
            ["handler", "method", "status"], registry=r,
        )
        self.images = Counter("appliance_request_images", "Images in the prompts of the requests a model answered.",
                              ["model_name"], registry=r)
        self.key_requests = Counter("appliance_key_requests", "Requests admitted per API key.", ["key_id"], registry=r)
        self.key_prompt_tokens = Counter("appliance_key_prompt_tokens", "Prompt tokens per API key.", ["key_id"], registry=r)
        self.key_completion_tokens = Counter(
            "appliance_key_completion_tokens", "Completion tokens per API key.", ["key_id"], registry=r
        )
        self.auth_failures = Counter(
            "appliance_auth_failures", "Failed authentications (wrong or malformed API keys) on the public API.",
            registry=r,
        )
        self.auth_lockouts = Counter(
            "appliance_auth_lockouts", "Client addresses locked out after too many failed authentications.",
            registry=r,
        )

        self.spans_dropped = Counter(
            "appliance_trace_spans_dropped", "Trace spans dropped: the export queue was full or the collector refused them.",
            ["reason"], registry=r,
        )

    def count_fallback(self, from_: str, to: str, reason: str) -> None:
        self.fallbacks.labels(from_, to, reason).inc()

    def count_dropped_spans(self, reason: str, spans: int) -> None:
        self.spans_dropped.labels(reason).inc(spans)

    def observe_request(
        self, model: str, finish_reason: str | None, queue_s: float | None, ttft_s: float | None,
        e2e_s: float, token_gaps_s: list[float], priority: int = 0,
    ) -> None:
        if finish_reason in ("stop", "length", "abort"):
            self.request_success.labels(model, finish_reason).inc()
        if queue_s is not None:
            self.queue_time.labels(model).observe(queue_s)
            self.queue_time_by_priority.labels(model, str(priority)).observe(queue_s)
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        self.e2e.labels(model).observe(e2e_s)
        itl = self.itl.labels(model)
        for gap in token_gaps_s:
            itl.observe(gap)

    def observe_response(self, handler: str, method: str, status: int) -> None:
        self.http_requests.labels(handler, method, f"{status // 100}xx").inc()

    def observe_images(self, model: str, images: int) -> None:
        self.images.labels(model).inc(images)

    def observe_key(self, key_id: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.key_requests.labels(key_id).inc()
        self.key_prompt_tokens.labels(key_id).inc(prompt_tokens)
        self.key_completion_tokens.labels(key_id).inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def metrics_routes(metrics: Metrics, token: str | None = None) -> list[Route]:
    """GET /metrics; with a token, only for `Authorization: Bearer <token>` (compared in constant time)."""
    expected = f"Bearer {token}".encode() if token else None

    async def endpoint(request: Request) -> Response:
        if expected is not None and not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
            return Response("metrics_token required: send 'Authorization: Bearer <metrics_token>' "
                            "(Prometheus: authorization.credentials in the scrape config)\n", status_code=401,
                            headers={"WWW-Authenticate": "Bearer"}, media_type="text/plain")
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", endpoint)]
