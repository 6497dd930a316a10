"""The control listener: JSON over HTTP on a Unix socket, for the CLI and the TUI.

Every request's peer (SO_PEERCRED, see appliance.peer) is checked before routing; every change is
written to the audit log with the peer's uid and user name. Handlers are thin: parse, call the
key store / model store / hot swap, answer. Errors are APIError, rendered as {"error": {...}}.
"""

import asyncio
import json
from datetime import datetime

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from appliance.errors import APIError
from appliance.keys.records import UPDATABLE
from appliance.ops.health import load_report
from appliance.control.fleet_routes import fleet_routes
from appliance.control.model_routes import model_routes
from appliance.control.peer import AccessPolicy
from appliance.control.plane import ControlPlane, body, int_param, plane

KEY_FIELDS = UPDATABLE  # what a key record may be given; the key store owns the list


# -- status and events ---------------------------------------------------------------------------
async def status(request: Request) -> Response:
    return JSONResponse(plane(request).monitor.snapshot())


async def history(request: Request) -> Response:
    seconds = int_param(request, "seconds", 900, 1, 24 * 3600)
    return JSONResponse({"snapshots": plane(request).monitor.snapshots(seconds)})


async def events(request: Request) -> Response:
    control = plane(request)

    async def stream():
        first = control.monitor.snapshot()
        yield f"event: snapshot\ndata: {json.dumps(first)}\n\n"
        async for event, data in control.hub.subscribe():
            yield f"event: {event}\ndata: {json.dumps(data)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# -- keys ----------------------------------------------------------------------------------------
def key_fields(data: dict, creating: bool) -> dict:
    unknown = set(data) - set(KEY_FIELDS)
    if unknown:
        raise APIError(400, f"unknown field(s) {', '.join(sorted(unknown))}; expected {', '.join(KEY_FIELDS)}")
    fields = dict(data)
    if "expires_at" in fields and fields["expires_at"] is not None:
        try:
            fields["expires_at"] = datetime.fromisoformat(str(fields["expires_at"]).replace("Z", "+00:00"))
        except ValueError:
            raise APIError(400, f"expires_at must be an ISO-8601 time, got {data['expires_at']!r}",
                           param="expires_at") from None
    if creating and "name" not in fields:
        raise APIError(400, "name is required: who or what the key is for", param="name")
    return fields


async def key_store_call(fn, *args, **kwargs):
    from appliance.keys.records import KeyNotFound

    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except KeyNotFound as e:
        raise APIError(404, f"{e}; list keys with `appliance keys list`") from None
    except ValueError as e:
        raise APIError(400, str(e)) from None


def key_dict(record, usage_today=None) -> dict:
    out = record.to_dict()
    if usage_today is not None:
        out["usage_today"] = usage_today
    return out


async def list_keys(request: Request) -> Response:
    keys = plane(request).service.keys

    def read():
        today = keys.usage_today()
        rows = []
        for record in keys.list():
            used = today.get(record.id)
            counts = (used.requests, used.prompt_tokens, used.completion_tokens) if used else (0, 0, 0)
            rows.append(key_dict(record, dict(zip(("requests", "prompt_tokens", "completion_tokens"), counts))))
        return rows

    return JSONResponse({"keys": await key_store_call(read)})


async def create_key(request: Request) -> Response:
    control = plane(request)
    fields = key_fields(await body(request), creating=True)
    name = fields.pop("name")
    record, api_key = await key_store_call(control.service.keys.create, name, **fields)
    control.record(request, "key.create", record.id, {"name": record.name})
    return JSONResponse({"key": key_dict(record), "api_key": api_key}, status_code=201)


async def update_key(request: Request) -> Response:
    control = plane(request)
    key_id = request.path_params["key_id"]
    fields = key_fields(await body(request), creating=False)
    if not fields:
        raise APIError(400, f"nothing to change: give at least one of {', '.join(KEY_FIELDS)}")
    record = await key_store_call(control.service.keys.update, key_id, **fields)
    control.record(request, "key.update", key_id, {k: str(v) if isinstance(v, datetime) else v for k, v in fields.items()})
    return JSONResponse(key_dict(record))


async def revoke_key(request: Request) -> Response:
    control = plane(request)
    key_id = request.path_params["key_id"]
    record = await key_store_call(control.service.keys.revoke, key_id)
    control.record(request, "key.revoke", key_id, {"name": record.name})
    return JSONResponse(key_dict(record))


async def key_usage(request: Request) -> Response:
    keys = plane(request).service.keys
    key_id = request.path_params["key_id"]
    days = int_param(request, "days", 30, 1, 3660)
    if await key_store_call(keys.get, key_id) is None:
        raise APIError(404, f"no key with id {key_id!r}; list keys with `appliance keys list`")
    usage = await key_store_call(keys.usage, key_id, days)
    return JSONResponse({"key_id": key_id, "days": [d.to_dict() for d in usage]})


async def get_task(request: Request) -> Response:
    task = plane(request).tasks.get(request.path_params["task_id"])
    if task is None:
        raise APIError(404, f"no task {request.path_params['task_id']!r} (finished tasks are kept for a while only)")
    return JSONResponse(task.to_dict())


# -- health, logs, audit -------------------------------------------------------------------------
async def health(request: Request) -> Response:
    service = plane(request).service
    ready, body_ = service.readiness.ready()
    report = await asyncio.to_thread(load_report, service.config.state_dir)
    return JSONResponse({"report": report, "ready": ready, "ready_reasons": body_["reasons"]})


async def logs(request: Request) -> Response:
    after = int_param(request, "after", 0, 0, 2**62)
    limit = int_param(request, "limit", 200, 1, 2000)
    return JSONResponse(plane(request).logs.since(after, limit))


async def cost(request: Request) -> Response:
    """Cost per million tokens over the last hour, today and 30 days: overall, per model, per key."""
    return JSONResponse(plane(request).service.cost.summary(detail=True))


async def audit(request: Request) -> Response:
    limit = int_param(request, "limit", 100, 1, 10_000)
    return JSONResponse({"entries": await asyncio.to_thread(plane(request).audit.recent, limit)})


# -- the app -------------------------------------------------------------------------------------
class PeerCheck:
    """Refuse any request whose peer the access policy does not admit (even if the socket mode allows it)."""

    def __init__(self, app, policy: AccessPolicy):
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refusal = self.policy.refusal(scope.get("state", {}).get("peer"))
            if refusal is not None:
                await APIError(403, refusal).to_response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def on_api_error(request: Request, exc: APIError) -> Response:
    return exc.to_response()


def build_control_app(control: ControlPlane) -> Starlette:
    routes = [
        Route("/v1/status", status),
        Route("/v1/history", history),
        Route("/v1/events", events),
        Route("/v1/keys", list_keys),
        Route("/v1/keys", create_key, methods=["POST"]),
        Route("/v1/keys/{key_id}", update_key, methods=["PATCH"]),
        Route("/v1/keys/{key_id}/revoke", revoke_key, methods=["POST"]),
        Route("/v1/keys/{key_id}/usage", key_usage),
        *model_routes(),
        *fleet_routes(),
        Route("/v1/tasks/{task_id}", get_task),
        Route("/v1/health", health),
        Route("/v1/logs", logs),
        Route("/v1/audit", audit),
        Route("/v1/cost", cost),
    ]
    app = Starlette(routes=routes, exception_handlers={APIError: on_api_error})
    app.state.plane = control
    app.add_middleware(PeerCheck, policy=control.policy)
    return app
