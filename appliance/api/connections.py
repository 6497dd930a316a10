"""The public listeners' connections: a cap on how many are open, and a deadline for each request's headers.

uvicorn's HTTP/1.1 protocol (h11) keeps a connection that never sends a request open forever, and
lets a client that sends its headers a byte at a time hold one as long as it likes; its own
`limit_concurrency` answers 503 on every connection, established ones too, once the cap is reached.
This subclass, shared by the HTTP and HTTPS listeners:

- counts open connections across both listeners; one opened past `max_connections` is marked
  (the API's gate answers its requests 503 and closes it), so the file descriptors the process
  may hold are never exhausted by clients and the established connections keep being served;
- gives every connection `header_timeout_s` from its start (after the TLS handshake), and from
  the end of each response, to send a complete request head, however slowly the bytes trickle
  in; past it the connection is closed. uvicorn's keep-alive timer (`idle_timeout_s`) still
  closes a connection that sends nothing at all after a response.
"""

from __future__ import annotations

import asyncio
import logging
import resource

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("appliance.serve")
OVER_LIMIT = "over_connection_limit"  # in a request's scope["state"]: max_connections, when past it
# File descriptors the process needs besides its clients' connections: model files, SQLite, the
# engine's and CUDA's own, the control and metrics listeners, and the connections past the limit
# that wait for their 503.
FD_RESERVE = 1024


def fit_to_file_limit(max_connections: int) -> int:
    """max_connections, after raising the soft RLIMIT_NOFILE to fit it where the hard limit allows;
    less (with a warning naming LimitNOFILE) where it does not."""
    want = max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        raised = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= want:
        return max_connections
    fitted = max(soft - FD_RESERVE, soft // 2)
    log.warning("max_connections = %d needs %d open files, but this process may open %d (LimitNOFILE): "
                "serving at most %d connections; raise LimitNOFILE (systemctl edit appliance) or lower max_connections",
                max_connections, want, soft, fitted)
    return fitted


class ConnectionLimits:
    """What the public listeners' connections share: the open ones and the limits."""

    def __init__(self, max_connections: int, header_timeout_s: float):
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.open: set[asyncio.Protocol] = set()

    def protocol(self) -> type[H11Protocol]:
        """The protocol class for uvicorn.Config(http=...), bound to these limits."""
        limits = self

        class LimitedH11Protocol(H11Protocol):
            header_deadline: asyncio.TimerHandle | None = None

            def connection_made(self, transport) -> None:
                super().connection_made(transport)
                limits.open.add(self)
                if len(limits.open) > limits.max_connections:
                    # A per-connection copy: uvicorn copies app_state into every request's scope["state"].
                    self.app_state = {**self.app_state, OVER_LIMIT: limits.max_connections}
                self._arm_header_deadline()

            def connection_lost(self, exc) -> None:
                limits.open.discard(self)
                self._disarm_header_deadline()
                super().connection_lost(exc)

            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                if self.conn.their_state is not h11.IDLE:  # a whole request head has arrived
                    self._disarm_header_deadline()

            def on_response_complete(self) -> None:
                super().on_response_complete()
                if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                    self._arm_header_deadline()

            def _arm_header_deadline(self) -> None:
                self._disarm_header_deadline()
                self.header_deadline = self.loop.call_later(limits.header_timeout_s, self._header_timeout)

            def _disarm_header_deadline(self) -> None:
                if self.header_deadline is not None:
                    self.header_deadline.cancel()
                    self.header_deadline = None

            def _header_timeout(self) -> None:
                self.header_deadline = None
                if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                    self.transport.close()

        return LimitedH11Protocol
