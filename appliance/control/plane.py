"""What every control route shares: the plane it acts on, the caller (peer), the JSON body."""

import json

from starlette.requests import Request

from appliance.control.audit import AuditLog
from appliance.control.events import EventHub
from appliance.control.logbuffer import LogBuffer
from appliance.control.monitor import Monitor
from appliance.control.peer import AccessPolicy, Peer
from appliance.control.tasks import Tasks
from appliance.errors import APIError
from appliance.fleet.fleet_view import FleetView
from appliance.serving.service import Service


class ControlPlane:
    """What the control routes act on; one per serve process."""

    def __init__(self, service: Service, models, monitor: Monitor, tasks: Tasks, hub: EventHub,
                 audit: AuditLog, logs: LogBuffer, policy: AccessPolicy, fleet: FleetView):
        self.service, self.models, self.monitor, self.tasks = service, models, monitor, tasks
        self.hub, self.audit, self.logs, self.policy, self.fleet = hub, audit, logs, policy, fleet

    def record(self, request: Request, action: str, target: str | None, details: dict | None = None) -> None:
        self.audit.record(peer(request), action, target, details)


def peer(request: Request) -> Peer | None:
    return request.scope.get("state", {}).get("peer")


def plane(request: Request) -> ControlPlane:
    return request.app.state.plane


async def body(request: Request) -> dict:
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return data


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise APIError(400, f"{name} must be an integer, got {text!r}", param=name) from None
    if not low <= value <= high:
        raise APIError(400, f"{name} must be between {low} and {high}, got {value}", param=name)
    return value
