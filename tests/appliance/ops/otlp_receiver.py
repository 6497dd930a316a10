"""A real OTLP/HTTP trace receiver in the test process: POST /v1/traces, decoded with opentelemetry-proto.

What a collector does with the service's export, minus the forwarding: it keeps every span it got
(with its resource's service name) and answers 200, or the status it is told to answer.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


def attribute_values(attributes) -> dict:
    """OTLP KeyValues as a plain dict (strings, ints, floats, bools and arrays of them)."""
    out = {}
    for kv in attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = [getattr(v, v.WhichOneof("value")) for v in value.array_value.values]
        else:
            out[kv.key] = getattr(value, kind)
    return out


class Receiver:
    def __init__(self, status: int = 200):
        self.status = status
        self.spans: list[dict] = []
        self.requests = 0
        self._guard = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver._take(self.path, body)
                self.send_response(receiver.status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _take(self, path: str, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            service = attribute_values(resource_spans.resource.attributes).get("service.name")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append({"path": path, "service": service, "name": span.name, "trace_id": span.trace_id.hex(),
                                  "span_id": span.span_id.hex(), "parent_span_id": span.parent_span_id.hex(),
                                  "kind": span.kind, "start_ns": span.start_time_unix_nano,
                                  "end_ns": span.end_time_unix_nano, "status_code": span.status.code,
                                  "attributes": attribute_values(span.attributes)})
        with self._guard:
            self.requests += 1
            self.spans.extend(spans)

    def wait_for(self, predicate, timeout_s: float = 10.0) -> list[dict]:
        """The spans received, once predicate(spans) holds (the service sends about once a second)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._guard:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s} s; received {len(spans)} spans: "
                                     f"{[s['name'] for s in spans]}")
            time.sleep(0.05)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
