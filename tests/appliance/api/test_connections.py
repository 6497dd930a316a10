"""Connection limits on the public listener: 2,000 idle connections and a slow-header client do not
slow /health down, connections past max_connections get 503, and the header deadline frees them all.

The idle connections never send a byte; the slow client sends its request head a few bytes at a
time, which would hold a plain uvicorn connection for as long as it kept trickling.
"""

import json
import resource
import socket
import threading
import time

import pytest

from tests.appliance.conftest import make_config, start_server

IDLE = 2000
MAX_CONNECTIONS = IDLE + 5  # the idle ones, the slow one, the /health probes, and a little room
HEADER_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory):
    need = 2 * (MAX_CONNECTIONS + 50) + 1024  # both ends of every connection live in this process
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"{2 * MAX_CONNECTIONS} sockets need RLIMIT_NOFILE >= {need}; the hard limit here is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    live = start_server(make_config(tiny_model_path, tmp_path_factory.mktemp("conn-state"), metrics_port=0,
                                    max_connections=MAX_CONNECTIONS, header_timeout_s=HEADER_TIMEOUT_S))
    yield live
    live.stop()


def get(port: int, path: str = "/health") -> tuple[bytes, float]:
    """A request on a new connection: (the whole response, seconds from connect to its end)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer, time.perf_counter() - started


def wait_open(server, count: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(server.app.connections.open) < count:
        assert time.monotonic() < deadline, f"{len(server.app.connections.open)} of {count} connections accepted"
        time.sleep(0.01)


def trickle(conn: socket.socket, stop: threading.Event, closed: dict) -> None:
    """Send a request head a few bytes every 0.1 s, forever; note when the server hangs up."""
    head = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 10_000
    started = time.monotonic()
    for i in range(0, len(head), 4):
        if stop.is_set():
            return
        try:
            conn.sendall(head[i:i + 4])
        except OSError:
            break
        time.sleep(0.1)
    closed["after_s"] = time.monotonic() - started


def test_idle_and_slow_connections_neither_starve_health_nor_exhaust_the_limit(server):
    port = server.app.public_port
    idle = []
    stop, closed = threading.Event(), {}
    try:
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        slow = socket.create_connection(("127.0.0.1", port))
        idle.append(slow)
        slow_client = threading.Thread(target=trickle, args=(slow, stop, closed))
        slow_client.start()
        wait_open(server, IDLE + 1)
        times = []
        for _ in range(5):
            answer, seconds = get(port)
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            times.append(seconds)
        print(f"\n/health on a new connection beside {IDLE} idle ones: {', '.join(f'{t * 1000:.1f}' for t in times)} ms")
        assert sorted(times)[len(times) // 2] < 0.1

        for _ in range(MAX_CONNECTIONS - IDLE - 1):  # up to the limit: the next one is past it
            idle.append(socket.create_connection(("127.0.0.1", port)))
        wait_open(server, MAX_CONNECTIONS)
        answer, _ = get(port)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and b"connection: close" in head.lower(), head
        error = json.loads(body)["error"]
        assert error["code"] == "too_many_connections" and f"maximum of {MAX_CONNECTIONS}" in error["message"]

        # The header deadline closes the idle ones and the trickling one alike.
        slow_client.join(HEADER_TIMEOUT_S + 5)
        assert HEADER_TIMEOUT_S - 1 <= closed["after_s"] <= HEADER_TIMEOUT_S + 2, closed
        deadline = time.monotonic() + 5
        while server.app.connections.open and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.app.connections.open
        assert idle[0].recv(1) == b""  # hung up on, not left open
        answer, _ = get(port)
        assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        stop.set()
        for conn in idle:
            conn.close()


def test_a_kept_alive_connection_gets_the_header_deadline_again_after_each_response(server):
    with socket.create_connection(("127.0.0.1", server.app.public_port), timeout=10) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert conn.recv(65536).startswith(b"HTTP/1.1 200 ")
        started = time.monotonic()
        conn.sendall(b"GET /health HTTP/1.1\r\n")  # a second request head that never ends
        while time.monotonic() - started < HEADER_TIMEOUT_S + 3:
            try:
                conn.sendall(b"X: y\r\n")  # bytes keep coming, which would keep uvicorn's own timer off
            except OSError:  # the server hung up
                break
            time.sleep(0.2)
        else:
            pytest.fail("the connection was not closed")
        assert time.monotonic() - started >= HEADER_TIMEOUT_S - 0.5
