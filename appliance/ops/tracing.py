"""OpenTelemetry traces of the public API: a span per request, child spans for queueing, prefill and decode.

Off unless `otlp_traces_endpoint` is set: then the service builds one `Tracing`, and its middleware
starts a server span for every /v1/ request, as the child of an incoming W3C `traceparent`.
Attributes are named as vLLM names them (gen_ai.latency.*, gen_ai.usage.prompt_tokens) and as the
GenAI semantic conventions do (gen_ai.operation.name, gen_ai.request.model, gen_ai.usage.input_tokens,
gen_ai.response.finish_reasons); the key's id goes in, never its secret or the prompt.

Export never blocks a request: ended spans go into a bounded queue that one thread sends over
OTLP/HTTP in batches. A span that finds the queue full, or whose batch the collector did not take,
is dropped and counted (appliance_trace_spans_dropped_total).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("appliance.tracing")

SPAN_STATE = "trace_span"  # where the middleware leaves the request's span: scope["state"], i.e. request.state
OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}  # GenAI operation names
EXPORT_TIMEOUT_S = 5.0  # a collector that does not answer costs the export thread this long, never a request


def traces_url(endpoint: str) -> str:
    """The collector's address as configured, with OTLP's /v1/traces path when it names none."""
    return endpoint.rstrip("/") + "/v1/traces" if urlsplit(endpoint).path in ("", "/") else endpoint


class SpanQueue(SpanProcessor):
    """Ended spans in a bounded queue, sent in batches by one thread; what does not fit or fails is counted.

    The SDK's BatchSpanProcessor drops in the same way but keeps no count a Prometheus scrape can read.
    """

    def __init__(self, exporter: SpanExporter, on_drop: Callable[[str, int], None], max_queued: int = 4096,
                 batch_size: int = 512, delay_s: float = 1.0):
        self.exporter = exporter
        self.on_drop = on_drop  # (reason, spans): "queue_full" or "export_failed"
        self.batch_size = batch_size
        self.delay_s = delay_s
        self._queue: queue.Queue[ReadableSpan] = queue.Queue(max_queued)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._sending = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="trace export", daemon=True)
        self._thread.start()

    def on_start(self, span, parent_context=None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        try:
            self._queue.put_nowait(span)
        except queue.Full:
            self.on_drop("queue_full", 1)
            return
        if self._queue.qsize() >= self.batch_size:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.delay_s)
            self._wake.clear()
            self.force_flush()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Send everything queued now (the export thread does this every delay_s)."""
        with self._sending:
            while True:
                batch = self._take()
                if not batch:
                    return True
                self._send(batch)

    def _take(self) -> list[ReadableSpan]:
        batch = []
        while len(batch) < self.batch_size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _send(self, batch: Sequence[ReadableSpan]) -> None:
        try:
            result = self.exporter.export(batch)
        except Exception:  # an exporter bug must not end the export thread
            log.exception("exporting %d spans failed", len(batch))
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self.on_drop("export_failed", len(batch))

    def shutdown(self) -> None:
        self._stopping.set()
        self._wake.set()
        self._thread.join(EXPORT_TIMEOUT_S * 2)
        self.force_flush()
        self.exporter.shutdown()


class Tracing:
    """The service's tracer: its own provider (not the process-global one), the span queue, the propagator."""

    def __init__(self, endpoint: str, on_drop: Callable[[str, int], None], exporter: SpanExporter | None = None,
                 delay_s: float = 1.0):
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # protobuf: 0.3 s

            exporter = OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=EXPORT_TIMEOUT_S)
        self.spans = SpanQueue(exporter, on_drop, delay_s=delay_s)
        self.provider = TracerProvider(resource=Resource.create({"service.name": "appliance"}))
        self.provider.add_span_processor(self.spans)
        self.tracer = self.provider.get_tracer("appliance")
        self.propagator = TraceContextTextMapPropagator()

    def middleware(self, app: ASGIApp) -> ASGIApp:
        return TracedRequests(app, self)

    def start_request(self, method: str, path: str, headers: dict[str, str]) -> Span:
        parent = self.propagator.extract(headers)  # an absent or malformed traceparent starts a new trace
        return self.tracer.start_span(f"{method} {path}", context=parent, kind=SpanKind.SERVER, attributes={
            "http.request.method": method, "url.path": path, "http.route": path})

    def engine_request(self, parent: Span, request_id: str, params, times: EngineTimes) -> None:
        """The queue, prefill and decode of one engine request, as children of the API request's span."""
        if not parent.is_recording():
            return
        parent.set_attributes(_sampling(params))
        context = set_span_in_context(parent)
        to_ns = _epoch_ns_of_monotonic()
        phases = (("queue", times.arrival, times.scheduled), ("prefill", times.scheduled, times.first_token),
                  ("decode", times.first_token, times.last_token))
        for name, start, end in phases:
            if start is None or end is None:
                continue
            span = self.tracer.start_span(name, context=context, start_time=to_ns(start),
                                          attributes={"gen_ai.request.id": request_id})
            if name == "decode":
                span.set_attribute("gen_ai.usage.output_tokens", times.output_tokens)
            span.end(end_time=to_ns(end))
        latencies = {"gen_ai.latency.time_in_model_prefill": _between(times.scheduled, times.first_token),
                     "gen_ai.latency.time_in_model_decode": _between(times.first_token, times.last_token),
                     "gen_ai.latency.time_in_model_inference": _between(times.scheduled, times.last_token)}
        parent.set_attributes({k: v for k, v in latencies.items() if v is not None})

    def shutdown(self) -> None:
        self.provider.shutdown()


class EngineTimes:
    """When one engine request arrived, was first scheduled, gave its first and last token (time.monotonic())."""

    __slots__ = ("arrival", "scheduled", "first_token", "last_token", "output_tokens")

    def __init__(self, arrival: float | None, scheduled: float | None, first_token: float | None,
                 last_token: float | None, output_tokens: int):
        self.arrival, self.scheduled = arrival, scheduled
        self.first_token, self.last_token, self.output_tokens = first_token, last_token, output_tokens


def annotate(span: Span, record: dict, response_model: str | None) -> None:
    """The request log line's facts on the request's span (only these fields: never a prompt)."""
    if not span.is_recording():
        return
    operation = OPERATIONS.get(record.get("endpoint") or "", record.get("endpoint") or "request")
    span.update_name(f"{operation} {record.get('model')}")
    reasons = [r for r in (record.get("finish_reason") or "").split(",") if r]
    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.request.model": record.get("model"),
        "gen_ai.response.model": response_model,
        "gen_ai.request.id": record.get("request_id"),
        "gen_ai.response.id": record.get("request_id"),
        "gen_ai.usage.input_tokens": record.get("prompt_tokens"),
        "gen_ai.usage.output_tokens": record.get("completion_tokens"),
        "gen_ai.usage.prompt_tokens": record.get("prompt_tokens"),
        "gen_ai.usage.completion_tokens": record.get("completion_tokens"),
        "gen_ai.response.finish_reasons": reasons,
        "gen_ai.latency.time_to_first_token": record.get("ttft_s"),
        "gen_ai.latency.time_in_queue": record.get("queue_time_s"),
        "gen_ai.latency.e2e": record.get("total_time_s"),
        "appliance.key_id": record.get("key_id"),
        "appliance.request.status": record.get("status"),
    }
    span.set_attributes({k: v for k, v in attributes.items() if v is not None})
    if str(record.get("status", "")).startswith("error"):
        span.set_status(Status(StatusCode.ERROR, record["status"]))


def trace_id(span: Span | None) -> str | None:
    """The W3C trace id (32 hex digits) of a recorded span, for the request log line."""
    if span is None or not span.get_span_context().is_valid:
        return None
    return f"{span.get_span_context().trace_id:032x}"


class TracedRequests:
    """ASGI middleware: a server span around each /v1/ request, left in the request's state for the stages."""

    def __init__(self, app: ASGIApp, tracing: Tracing):
        self.app = app
        self.tracing = tracing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        span = self.tracing.start_request(scope["method"], scope["path"], headers)
        scope.setdefault("state", {})[SPAN_STATE] = span
        status = None

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except Exception as e:
            span.record_exception(e)
            status = 500 if status is None or status < 400 else status
            raise
        finally:
            if status is not None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
            span.end()


def _sampling(params) -> dict:
    """The sampling parameters the GenAI conventions name, from the engine's SamplingParams."""
    values = {"gen_ai.request.max_tokens": getattr(params, "max_tokens", None),
              "gen_ai.request.temperature": getattr(params, "temperature", None),
              "gen_ai.request.top_p": getattr(params, "top_p", None)}
    return {k: v for k, v in values.items() if v is not None}


def _between(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else max(0.0, end - start)


def _epoch_ns_of_monotonic() -> Callable[[float], int]:
    """The engine times in time.monotonic(); spans want nanoseconds since the epoch."""
    offset_ns = time.time_ns() - time.monotonic_ns()
    return lambda monotonic_s: offset_ns + int(monotonic_s * 1e9)

