"""Counts every response of the public API by its outcome, for /metrics and the dashboard's totals.

An ASGI middleware sees each response's status, refusals included (a bad key, an invalid body, a
rate limit, an unknown route answer before any handler runs). A stream has sent 200 before it
can fail; the stream then reports the status its error event carried with mark_stream_failed.
"""

from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STREAM_ERROR_STATUS = "stream_error_status"  # in the request's state (scope["state"])


def mark_stream_failed(request: Request, status: int) -> None:
    setattr(request.state, STREAM_ERROR_STATUS, status)


class ResponseCounter:
    """Calls on_response(handler, method, status) once per HTTP request; handler is the route's
    path ("none" when no route matched), so the label set stays small."""

    def __init__(self, app: ASGIApp, on_response: Callable[[str, str, int], None]):
        self.app = app
        self.on_response = on_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = None

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_watch)
        except Exception:
            # Starlette raises again after sending its error response; a stream cut off by the
            # exception after its 200 failed all the same.
            status = 500 if status is None or status < 400 else status
            raise
        finally:
            route = scope.get("route")
            status = scope.get("state", {}).get(STREAM_ERROR_STATUS, status)
            self.on_response(getattr(route, "path", "none"), scope["method"], 500 if status is None else status)
