"""The control protocol's client: JSON over HTTP on the service's Unix socket.

Shared by the CLI and the TUI, so it imports nothing heavy (no torch, transformers or engine):
`appliance tui` must start in well under a second over SSH. Every failure becomes a ControlError
whose message says what to do.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from appliance.config import DEV_STATE_DIR

DEFAULT_SOCKET = Path("/run/appliance/control.sock")
DEV_SOCKET = DEV_STATE_DIR / "control.sock"  # `appliance serve --dev`
SOCKET_ENV = "APPLIANCE_CONTROL_SOCKET"
GROUP = "appliance"


class ControlError(Exception):
    """The service answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.message = message
        self.status = status


class ServiceUnreachable(ControlError):
    """No service listens on the socket (not running, or another path)."""


class AccessRefused(ControlError):
    """The socket's permissions or the service's peer check refused us."""


def resolve_socket(explicit: Path | None = None, dev: bool = False) -> Path:
    """--socket, else $APPLIANCE_CONTROL_SOCKET, else the dev socket with --dev, else the config's."""
    if explicit is not None:
        return explicit
    if os.environ.get(SOCKET_ENV):
        return Path(os.environ[SOCKET_ENV])
    if dev:
        return DEV_SOCKET
    from appliance.config import ConfigError, load_config

    try:
        return load_config().control_socket
    except (ConfigError, OSError):
        return DEFAULT_SOCKET


def _refused_message(path: Path) -> str:
    return (f"access to the control socket {path} was refused: add yourself to the {GROUP} group "
            f"(sudo usermod -aG {GROUP} $USER, then log in again) or use sudo")


class ControlClient:
    """One connection pool to the socket; methods return the service's JSON."""

    def __init__(self, socket_path: Path = DEFAULT_SOCKET, timeout_s: float = 10.0):
        self.socket_path = Path(socket_path)
        self._http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket_path)),
            base_url="http://appliance", timeout=timeout_s,
        )
        self._event_streams: set[httpx.Response] = set()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the protocol ---------------------------------------------------------------------------
    def request(self, method: str, path: str, body: dict | None = None, **params) -> Any:
        query = {k: v for k, v in params.items() if v is not None}
        try:
            response = self._http.request(method, path, json=body, params=query)
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        return self._decode(response)

    def events(self) -> Iterator[tuple[str, dict]]:
        """The live event stream: ("snapshot", {...}) about once a second, ("progress", {...}) for tasks."""
        try:
            with self._http.stream("GET", "/v1/events", timeout=httpx.Timeout(10.0, read=30.0)) as response:
                if response.status_code != 200:
                    response.read()
                    self._decode(response)
                event, data = "message", []
                self._event_streams.add(response)
                try:
                    for line in response.iter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].strip())
                        elif not line and data:
                            yield event, json.loads("\n".join(data))
                            event, data = "message", []
                finally:
                    self._event_streams.discard(response)
        except httpx.TransportError as e:
            raise self._unreachable(e) from None

    def interrupt_events(self) -> None:
        """From another thread: end every events() stream of this client now, instead of at its next
        event (shutting the socket down wakes a blocked read; closing it would not)."""
        for response in list(self._event_streams):
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed

    def _unreachable(self, error: Exception) -> ControlError:
        cause = error.__cause__ or error.__context__
        if isinstance(cause, PermissionError) or "Permission denied" in str(error):
            return AccessRefused(_refused_message(self.socket_path), 403)
        if not self.socket_path.exists():
            return ServiceUnreachable(
                f"no control socket at {self.socket_path}: is the service running? "
                f"(systemctl status appliance; for a development server: appliance serve --dev)")
        if isinstance(error, httpx.TimeoutException):
            return ServiceUnreachable(f"the service did not answer on {self.socket_path} in time; it may be overloaded or hung")
        return ServiceUnreachable(f"cannot connect to {self.socket_path}: is the service running? ({error})")

    def _decode(self, response: httpx.Response) -> Any:
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code < 400:
            return data
        message = (data or {}).get("error", {}).get("message") if isinstance(data, dict) else None
        message = message or f"the service answered HTTP {response.status_code}"
        if response.status_code == 403:
            raise AccessRefused(message, 403)
        raise ControlError(message, response.status_code)

    # -- status and telemetry -------------------------------------------------------------------
    def status(self) -> dict:
        return self.request("GET", "/v1/status")

    def history(self, seconds: float | None = None) -> list[dict]:
        return self.request("GET", "/v1/history", seconds=seconds)["snapshots"]

    # -- keys -----------------------------------------------------------------------------------
    def keys(self) -> list[dict]:
        return self.request("GET", "/v1/keys")["keys"]

    def create_key(self, name: str, **limits) -> dict:
        """{"key": {...}, "api_key": "sk-app-..."}: the secret comes this once."""
        return self.request("POST", "/v1/keys", {"name": name, **limits})

    def revoke_key(self, key_id: str) -> dict:
        return self.request("POST", f"/v1/keys/{key_id}/revoke")

    def update_key(self, key_id: str, **fields) -> dict:
        return self.request("PATCH", f"/v1/keys/{key_id}", fields)

    def key_usage(self, key_id: str, days: int = 30) -> list[dict]:
        return self.request("GET", f"/v1/keys/{key_id}/usage", days=days)["days"]

    # -- models ---------------------------------------------------------------------------------
    def models(self) -> dict:
        """{"models": [...], "loaded": name, "task": running load/pull or None}."""
        return self.request("GET", "/v1/models")

    def pull_model(self, repo: str, revision: str = "main", name: str | None = None) -> dict:
        return self.request("POST", "/v1/models/pull", {"repo": repo, "revision": revision, "name": name})

    def import_model(self, path: str, name: str | None = None) -> dict:
        return self.request("POST", "/v1/models/import", {"path": path, "name": name})

    def delete_model(self, name: str) -> dict:
        return self.request("DELETE", f"/v1/models/{name}")

    def load_model(self, name: str, replace: str | None = None) -> dict:
        """Load `name` next to the loaded models, or in place of `replace` (a hot swap); returns the
        task (follow it with task() or events())."""
        return self.request("POST", f"/v1/models/{name}/load", {"replace": replace} if replace else None)

    def unload_model(self, name: str) -> dict:
        """Drain and stop a loaded model; returns the task."""
        return self.request("POST", f"/v1/models/{name}/unload")

    def pin_model(self, name: str, pinned: bool = True) -> dict:
        return self.request("POST", f"/v1/models/{name}/pin", {"pinned": pinned})

    def task(self, task_id: str) -> dict:
        return self.request("GET", f"/v1/tasks/{task_id}")

    # -- the fleet ------------------------------------------------------------------------------
    def fleet(self) -> dict:
        """{"membership": this box's place in a fleet or None, "leaving", "gateway": the fleet's view where a
        gateway runs on this box (each box's health, circuit, queue, KV usage, tokens/s) or None}."""
        return self.request("GET", "/v1/fleet")

    def fleet_join(self, gateway_url: str, admin_key: str, worker_url: str, timeout_s: float = 30.0) -> dict:
        return self._long("POST", "/v1/fleet/join", {"gateway_url": gateway_url, "admin_key": admin_key,
                                                      "worker_url": worker_url, "timeout_s": timeout_s}, timeout_s + 15)

    def fleet_leave(self, timeout_s: float = 120.0) -> dict:
        """Out of the rotation, then in-flight requests finish (up to the service's drain_timeout_s)."""
        return self._long("POST", "/v1/fleet/leave", None, timeout_s)

    def _long(self, method: str, path: str, body: dict | None, timeout_s: float) -> Any:
        try:
            response = self._http.request(method, path, json=body, timeout=timeout_s)
        except httpx.TransportError as e:
            raise self._unreachable(e) from None
        return self._decode(response)

    # -- health, logs, audit --------------------------------------------------------------------
    def health(self) -> dict:
        return self.request("GET", "/v1/health")

    def logs(self, after: int = 0, limit: int = 200) -> dict:
        """{"lines": [{"seq", "time", "level", "logger", "message"}], "next": seq to pass as after, "boot_id"}.

        "boot_id" changes when the service restarts (and its numbering with it).
        """
        return self.request("GET", "/v1/logs", after=after, limit=limit)

    def cost(self) -> dict:
        """Cost figures per window ("hour", "today", "30d"): overall with "kinds", and "models", "keys"."""
        return self.request("GET", "/v1/cost")

    def audit(self, limit: int = 100) -> list[dict]:
        return self.request("GET", "/v1/audit", limit=limit)["entries"]
