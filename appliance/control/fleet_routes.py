"""The control socket's fleet routes: this box joins a gateway, leaves it, and (where a gateway runs) the fleet's view.

Join registers the box with the gateway (smg's admin API) with a fleet-probe key of its own, made
in the shared key store and allowed nothing but GET /v1/models (smg probes a box with it, and
would use it for a client that sent no key). Leave takes the box out of the rotation and lets its
requests finish: /ready turns 503, the gateway deregisters it (no new request is routed here from
that moment, so none is refused or retried), in-flight requests run to the end (up to
drain_timeout_s), then the probe key is revoked. A rolling upgrade is leave → upgrade → join, one
box at a time. While a box is in a fleet its gateway's address is exempt from the failed-key
lock-out (serving/lockout.py says why).
"""

import asyncio
import logging
import socket
import time
from datetime import datetime, timezone

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from appliance.control.plane import body, plane
from appliance.errors import APIError
from appliance.fleet.gateway_api import GatewayAPI, GatewayError
from appliance.fleet.membership import (Membership, forget_membership, load_membership, resolve_addresses,
                                        save_membership)

log = logging.getLogger("appliance.fleet")
JOIN_TIMEOUT_S = 30.0


async def gateway_call(fn, *args):
    try:
        return await asyncio.to_thread(fn, *args)
    except GatewayError as e:
        raise APIError(502, str(e)) from None


def text_field(data: dict, name: str, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise APIError(400, f"{name} is required (a non-empty string)", param=name)
    return value.strip()


async def fleet_status(request: Request) -> Response:
    control = plane(request)
    config = control.service.config
    membership = load_membership(config.state_dir)
    view = await asyncio.to_thread(control.fleet.read)
    return JSONResponse({"membership": membership.public() if membership else None,
                         "leaving": control.service.readiness.leaving, "gateway": view})


async def join(request: Request) -> Response:
    control = plane(request)
    service, config = control.service, control.service.config
    data = await body(request)
    gateway_url = text_field(data, "gateway_url")
    admin_key = text_field(data, "admin_key")
    worker_url = text_field(data, "worker_url")
    timeout_s = data.get("timeout_s", JOIN_TIMEOUT_S)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= 600:
        raise APIError(400, f"timeout_s must be a number of seconds from 1 to 600, got {timeout_s!r}", param="timeout_s")
    if service.keys is None or not service.keys.shared:
        raise APIError(400, "a fleet shares its keys: set keys_database_url (PostgreSQL) on every box first; "
                            "`appliance keys migrate --to URL` copies this box's keys there")
    before = load_membership(config.state_dir)
    host = socket.gethostname()
    try:
        probe, secret = await asyncio.to_thread(service.keys.create, f"fleet-probe {host}", purpose="fleet-probe")
    except service.keys.database_errors as e:
        raise APIError(503, f"the key store's database cannot be reached ({type(e).__name__}); join once it answers "
                            "(appliance health shows it)", retry_after_s=config.retry_after_s) from None
    api = GatewayAPI(gateway_url, admin_key)
    worker_id = None
    try:
        existing = await gateway_call(api.find, worker_url)
        if existing is not None:  # registered before (a restart, or join run twice): again, with the new key
            await gateway_call(api.remove_worker, existing["id"], worker_url)
        labels = {"appliance_host": host, "appliance_metrics": metrics_url(config, worker_url)}
        worker_id = await gateway_call(api.add_worker, worker_url, secret, labels)
        service.readiness.stop_leaving()
        await gateway_call(api.wait_registered, worker_url, float(timeout_s))
    except APIError:
        if worker_id is not None:  # not left registered with a key about to be revoked
            await asyncio.to_thread(_quietly, api.remove_worker, worker_id, worker_url)
        await asyncio.to_thread(service.keys.revoke, probe.id)
        raise
    finally:
        api.close()
    if before is not None and before.probe_key_id != probe.id:
        await asyncio.to_thread(service.keys.revoke, before.probe_key_id)
    addresses = await asyncio.to_thread(resolve_addresses, gateway_url)
    membership = Membership(gateway_url, worker_url, worker_id, probe.id, admin_key,
                            datetime.now(timezone.utc).isoformat(timespec="seconds"), addresses)
    save_membership(config.state_dir, membership)
    service.lockout.set_exempt(addresses)
    control.record(request, "fleet.join", gateway_url, {"worker_url": worker_url, "probe_key": probe.id})
    return JSONResponse({"membership": membership.public()})


async def leave(request: Request) -> Response:
    control = plane(request)
    service, config = control.service, control.service.config
    membership = load_membership(config.state_dir)
    if membership is None:
        raise APIError(409, "this box is not in a fleet (no fleet.json in the state folder): nothing to leave")
    started = time.monotonic()
    service.readiness.start_leaving()
    with GatewayAPI(membership.gateway_url, membership.admin_key) as api:
        registered = await gateway_call(api.find, membership.worker_url)
        if registered is not None:
            await gateway_call(api.remove_worker, registered["id"], membership.worker_url)
    in_flight = await service.wait_idle(config.drain_timeout_s)
    try:
        await asyncio.to_thread(service.keys.revoke, membership.probe_key_id)
    except service.keys.database_errors:  # it can do nothing but list models; `appliance keys revoke` later
        log.warning("fleet leave: the probe key %s could not be revoked now (the key store's database does not "
                    "answer)", membership.probe_key_id)
    forget_membership(config.state_dir)
    service.lockout.set_exempt(())
    control.record(request, "fleet.leave", membership.gateway_url, {"in_flight": in_flight})
    return JSONResponse({"left": membership.gateway_url, "in_flight_at_leave": in_flight,
                         "still_in_flight": service.requests_in_flight(),
                         "seconds": round(time.monotonic() - started, 3)})


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except GatewayError as e:
        log.warning("fleet join: %s", e)


def metrics_url(config, worker_url: str) -> str:
    """Where the gateway box may read this box's metrics (the Fleet screen): its metrics listener."""
    from urllib.parse import urlsplit

    host = config.metrics_host
    if host in ("0.0.0.0", "::"):
        host = urlsplit(worker_url).hostname or host
    return f"http://{host}:{config.metrics_port}/metrics" if config.metrics_port else ""


def fleet_routes() -> list[Route]:
    return [
        Route("/v1/fleet", fleet_status),
        Route("/v1/fleet/join", join, methods=["POST"]),
        Route("/v1/fleet/leave", leave, methods=["POST"]),
    ]
