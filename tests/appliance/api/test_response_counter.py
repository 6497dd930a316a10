"""ResponseCounter under uvicorn: every response counted once with the status the client got."""

import threading
import time

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from appliance.errors import APIError
from appliance.api.response_counter import ResponseCounter, mark_stream_failed


async def ok(request: Request):
    return PlainTextResponse("ok")


async def refused(request: Request):
    raise APIError(429, "slow down")


async def broken(request: Request):
    raise RuntimeError("a bug")


async def stream_reporting_its_error(request: Request):
    async def events():
        yield "data: 1\n\n"
        mark_stream_failed(request, 503)
        yield 'data: {"error": {"message": "draining"}}\n\n'

    return StreamingResponse(events(), media_type="text/event-stream")


async def stream_cut_by_a_bug(request: Request):
    async def events():
        yield "data: 1\n\n"
        raise RuntimeError("a bug mid-stream")

    return StreamingResponse(events(), media_type="text/event-stream")


async def on_api_error(request: Request, exc: APIError):
    return exc.to_response()


async def on_unexpected(request: Request, exc: Exception):
    return JSONResponse({"error": "internal"}, status_code=500)


@pytest.fixture(scope="module")
def served():
    counted: list[tuple[str, str, int]] = []
    app = Starlette(
        routes=[Route("/ok", ok), Route("/refused", refused), Route("/broken", broken),
                Route("/stream-error", stream_reporting_its_error), Route("/stream-bug", stream_cut_by_a_bug)],
        exception_handlers={APIError: on_api_error, Exception: on_unexpected},
    )
    config = uvicorn.Config(ResponseCounter(app, lambda *outcome: counted.append(outcome)), port=0, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", counted
    server.should_exit = True
    thread.join(10)


def fetch(served, method: str, path: str) -> tuple[int, tuple[str, str, int]]:
    base, counted = served
    before = len(counted)
    try:
        status = httpx.request(method, base + path, timeout=10).status_code
    except httpx.RemoteProtocolError:  # the server dropped a stream a bug cut short
        status = None
    deadline = time.monotonic() + 5
    while len(counted) == before and time.monotonic() < deadline:  # counted as the app returns
        time.sleep(0.01)
    assert len(counted) == before + 1, "each request is counted exactly once"
    return status, counted[-1]


@pytest.mark.parametrize("method, path, status, counted", [
    ("GET", "/ok", 200, ("/ok", "GET", 200)),
    ("GET", "/refused", 429, ("/refused", "GET", 429)),  # an APIError's own status
    ("GET", "/broken", 500, ("/broken", "GET", 500)),  # the last-resort handler's 500, raised again past us
    ("GET", "/nowhere", 404, ("none", "GET", 404)),  # no route: one label for all unknown paths
    ("POST", "/ok", 405, ("/ok", "POST", 405)),
    ("GET", "/stream-error", 200, ("/stream-error", "GET", 503)),  # 200 was sent; the error event said 503
])
def test_each_response_is_counted_with_the_status_the_client_got(served, method, path, status, counted):
    assert fetch(served, method, path) == (status, counted)


def test_a_stream_cut_short_by_a_bug_counts_as_a_server_error(served):
    _, counted = fetch(served, "GET", "/stream-bug")
    assert counted == ("/stream-bug", "GET", 500)
