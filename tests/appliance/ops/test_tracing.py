"""Traces over OTLP/HTTP to a real receiver in this process: the spans, their attributes, the incoming
traceparent, the trace id in the request log line, and spans dropped (never a request held up)."""

import json
import logging
import time

import httpx
import pytest

from appliance.ops.tracing import SpanQueue
from tests.appliance.conftest import add_keys, make_config, start_server
from tests.appliance.ops.otlp_receiver import Receiver
from tests.appliance.ops.test_metrics import scrape, value

INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_PARENT = "00f067aa0ba902b7"
SECRET_PROMPT = "the launch code is 0000"


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def traced(tiny_model_path, tmp_path_factory, receiver):
    server = start_server(make_config(tiny_model_path, tmp_path_factory.mktemp("traced"),
                                      otlp_traces_endpoint=receiver.endpoint))
    add_keys(server, server.app.config.keys_db_path)
    yield server
    server.stop()


def test_a_streamed_chat_request_is_traced_under_the_incoming_traceparent(traced, receiver, caplog):
    import openai

    client = openai.OpenAI(base_url=traced.base_url + "/v1", api_key=traced.key, max_retries=0)
    with caplog.at_level(logging.INFO, logger="appliance.request"):
        stream = client.chat.completions.create(
            model=traced.model, messages=[{"role": "user", "content": SECRET_PROMPT}], max_tokens=6, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
            extra_headers={"traceparent": f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"})
        usage = [chunk.usage for chunk in stream if chunk.usage is not None][0]
    spans = receiver.wait_for(lambda spans: {"chat " + traced.model, "queue", "prefill", "decode"}
                              <= {s["name"] for s in spans if s["trace_id"] == INCOMING_TRACE})
    ours = {s["name"]: s for s in spans if s["trace_id"] == INCOMING_TRACE}
    request = ours["chat " + traced.model]
    assert request["parent_span_id"] == INCOMING_PARENT and request["path"] == "/v1/traces"
    assert request["service"] == "appliance" and request["kind"] == 2  # SPAN_KIND_SERVER
    attributes = request["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == attributes["gen_ai.response.model"] == traced.model
    assert attributes["gen_ai.usage.input_tokens"] == attributes["gen_ai.usage.prompt_tokens"] == usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == attributes["gen_ai.usage.completion_tokens"] == 6
    assert attributes["gen_ai.response.finish_reasons"] == ["length"]
    assert attributes["gen_ai.request.max_tokens"] == 6
    assert attributes["gen_ai.latency.time_to_first_token"] > 0 and attributes["gen_ai.latency.time_in_queue"] >= 0
    assert attributes["gen_ai.latency.e2e"] >= attributes["gen_ai.latency.time_to_first_token"]
    assert attributes["appliance.key_id"] == traced.key_ids["main"]
    assert attributes["http.response.status_code"] == 200 and attributes["http.route"] == "/v1/chat/completions"
    everything = json.dumps([s["attributes"] for s in spans])
    assert traced.key not in everything and SECRET_PROMPT not in everything  # the key's id, never its secret or prompt
    # queue -> prefill -> decode, children of the request's span, one after the other inside it
    phases = [ours[name] for name in ("queue", "prefill", "decode")]
    assert all(p["parent_span_id"] == request["span_id"] for p in phases)
    assert request["start_ns"] <= phases[0]["start_ns"] <= phases[0]["end_ns"] <= phases[1]["start_ns"] + 1000
    assert phases[1]["end_ns"] <= phases[2]["start_ns"] + 1000 and phases[2]["end_ns"] <= request["end_ns"]
    assert phases[2]["attributes"]["gen_ai.usage.output_tokens"] == 6
    # the request log line carries the trace id
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "appliance.request"]
    assert [line["trace_id"] for line in lines if line["request_id"] == attributes["gen_ai.request.id"]] == [INCOMING_TRACE]


def test_without_a_traceparent_a_refused_request_starts_its_own_trace(traced, receiver):
    r = httpx.post(traced.base_url + "/v1/completions", json={"model": traced.model, "prompt": "x"},
                   headers={"Authorization": "Bearer sk-app-nope"})
    assert r.status_code == 401
    spans = receiver.wait_for(lambda spans: any(s["attributes"].get("http.response.status_code") == 401 for s in spans))
    refused = next(s for s in spans if s["attributes"].get("http.response.status_code") == 401)
    assert refused["trace_id"] != INCOMING_TRACE and refused["parent_span_id"] == ""
    assert refused["name"] == "POST /v1/completions"  # never admitted: no model to name it by


def test_probes_are_not_traced(traced, receiver):
    before = len(receiver.spans)
    assert httpx.get(traced.base_url + "/ready").status_code == 200
    traced.service.tracing.spans.force_flush()
    assert all(not s["attributes"].get("url.path", "").startswith("/ready") for s in receiver.spans[before:])


def test_spans_the_collector_refuses_are_dropped_and_counted(tiny_model_path, tmp_path):
    with Receiver(status=400) as refusing:  # 400: OTLP says do not retry
        server = start_server(make_config(tiny_model_path, tmp_path, otlp_traces_endpoint=refusing.endpoint))
        try:
            add_keys(server, server.app.config.keys_db_path)
            r = httpx.post(server.base_url + "/v1/completions", headers=server.headers(),
                           json={"model": server.model, "prompt": "x", "max_tokens": 2}, timeout=30)
            assert r.status_code == 200
            refusing.wait_for(lambda spans: refusing.requests > 0)
            server.service.tracing.spans.force_flush()
            samples = scrape(server)
            assert value(samples, "appliance_trace_spans_dropped_total", reason="export_failed") >= 4
        finally:
            server.stop()


def test_a_full_queue_drops_instead_of_waiting():
    """Spans that find no room are dropped at once and counted; the queued ones are sent at shutdown."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider

    dropped = []
    with Receiver() as receiver:
        queue = SpanQueue(OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces"),
                          lambda reason, n: dropped.append((reason, n)), max_queued=8, batch_size=100, delay_s=60)
        tracer = TracerProvider().get_tracer("test")
        started = time.monotonic()
        for i in range(20):
            span = tracer.start_span(f"s{i}")
            span.end()
            queue.on_end(span)
        assert time.monotonic() - started < 0.5
        assert dropped == [("queue_full", 1)] * 12
        queue.shutdown()
        assert [s["name"] for s in receiver.spans] == [f"s{i}" for i in range(8)]
