"""Structured request log: one JSON line per API request, run or refused; under systemd, journal entries
whose fields (REQUEST_ID, KEY_ID, MODEL, STATUS, TRACE_ID) journalctl can match (ops/journal.py).

Never the key secret (only its id); prompt text only when the config sets log_prompts.
"""

import json
import logging
import sys

from appliance.ops.journal import JournalHandler, record_fields, stderr_is_the_journal

logger = logging.getLogger("appliance.request")


def log_request(
    *,
    request_id: str,
    key_id: str | None,
    model: str,
    endpoint: str,
    status: str,
    prompt_tokens: int,
    completion_tokens: int,
    queue_time_s: float | None,
    ttft_s: float | None,
    total_time_s: float,
    finish_reason: str | None,
    prompt: str | None = None,
    constraint: str | None = None,
    trace_id: str | None = None,
    images: int = 0,
) -> dict:
    record = {
        "event": "request",
        "request_id": request_id,
        "key_id": key_id,
        "model": model,
        "endpoint": endpoint,
        "status": status,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "queue_time_s": _round(queue_time_s),
        "ttft_s": _round(ttft_s),
        "total_time_s": _round(total_time_s),
        "finish_reason": finish_reason,
    }
    if trace_id is not None:  # traces are on: the line and its trace find each other
        record["trace_id"] = trace_id
    if constraint is not None:  # what held the output to a grammar: "json_schema", "tools:required"...
        record["constraint"] = constraint
    if images:
        record["images"] = images
    if prompt is not None:
        record["prompt"] = prompt
    logger.info(json.dumps(record, ensure_ascii=False), extra=_journal_fields(record))
    return record


def log_refusal(
    *, method: str, path: str, status: int, code: str | None, message: str,
    request_id: str | None = None, key_id: str | None = None, model: str | None = None,
) -> dict:
    """A request refused before it ran (bad body, key, model, limit, a full queue): no usage to
    report, but on-call needs to see who was refused and why."""
    record = {
        "event": "refused",
        "request_id": request_id,
        "key_id": key_id,
        "model": model,
        "method": method,
        "path": path,
        "status": f"error {status}",
        "code": code,
        "message": message,
    }
    logger.log(logging.WARNING if status >= 500 else logging.INFO, json.dumps(record, ensure_ascii=False),
               extra=_journal_fields(record))
    return record


def _journal_fields(record: dict) -> dict:
    return record_fields(event=record["event"], request_id=record["request_id"], key_id=record["key_id"],
                         model=record["model"], endpoint=record.get("endpoint"), status=record["status"],
                         trace_id=record.get("trace_id"))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


# uvicorn logs its process's lifecycle once per server, and the service runs three in one process
# (the API, /metrics, the control socket): each line would appear three times.
UVICORN_LIFECYCLE = frozenset({"Started server process [%d]", "Shutting down", "Finished server process [%d]"})


class FirstOfEachLifecycleLine(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in UVICORN_LIFECYCLE:
            return True
        message = record.getMessage()
        first = message not in self.seen
        self.seen.add(message)
        return first


def setup_logging(level: str = "info") -> None:
    """Under systemd, journal entries with fields; else lines on stderr. Request lines are JSON already."""
    if stderr_is_the_journal():
        handler: logging.Handler = JournalHandler()  # journald adds the time, the unit, the pid
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn.filters[:] = [f for f in uvicorn.filters if not isinstance(f, FirstOfEachLifecycleLine)]
    uvicorn.addFilter(FirstOfEachLifecycleLine())
