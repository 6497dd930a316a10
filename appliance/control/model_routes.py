"""The control socket's model routes: the store (list, pull, import, delete) and the pool (load next to the
others or in place of one, unload, pin)."""

import asyncio
import time
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from appliance.control.plane import body, peer, plane
from appliance.errors import APIError
from appliance.serving.hot_swap import SwapError, hot_swap
from appliance.serving.pool import ModelPool, PoolError


async def store_call(fn, *args, **kwargs):
    from appliance.models.store import ModelStoreError

    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except ModelStoreError as e:
        raise APIError(e.status, e.message) from None


async def list_models(request: Request) -> Response:
    control = plane(request)
    pool = control.service.pool
    infos = await store_call(control.models.list)
    models = [{**info.to_dict(), **pool_entry(pool, info.name)} for info in infos]
    stored = {info.name for info in infos}
    models += [{"name": m.name, "path": str(m.path), **pool_entry(pool, m.name)}  # served from a path, not the store
               for m in pool.resident.values() if m.name not in stored]
    task = control.tasks.running()
    plan = await asyncio.to_thread(pool.plan)
    return JSONResponse({"models": models, "loaded": pool.active.name if pool.active else None,
                         "default": pool.default, "resident": sorted(pool.resident),
                         "memory": plan.to_dict(), "load_on_demand": pool.config.load_on_demand,
                         "task": task.to_dict() if task else None})


def pool_entry(pool: ModelPool, name: str) -> dict:
    """A model's place in the pool: resident, loading, on_demand (loads on a request) or stored; pinned, idle."""
    served = pool.resident.get(name)
    if served is not None:
        state = "resident"
    elif name in pool.loads:
        state = "loading"
    else:
        state = "on_demand" if pool.config.load_on_demand else "stored"
    planned = pool.planned.get(name)
    idle = round(time.monotonic() - served.last_used, 1) if served is not None else None
    execution = served.engine.stats().execution if served is not None else None
    return {"loaded": served is not None, "state": state, "default": name == pool.default,
            "weights": execution.get("weights") if execution else None,
            "weight_bytes": execution.get("weight_bytes") if execution else None,
            "kv_cache_dtype": execution.get("kv_cache_dtype") if execution else None,
            "pinned": name in pool.pinned, "idle_s": idle,
            "evictable": served is not None and served in pool.evictable(),
            "memory": planned.to_dict() if planned is not None else None, "load_error": pool.load_errors.get(name)}


def start_task(request: Request, kind: str, target: str, work) -> Response:
    control = plane(request)
    running = control.tasks.running(kind)  # one of each kind at a time: a long pull must not block a swap
    if running is not None:
        raise APIError(409, f"{running.kind} of {running.target} is still running ({running.id}); "
                            "wait for it to finish")
    who = peer(request)
    task = control.tasks.start(kind, target, who.user if who else None, work)
    return JSONResponse(task.to_dict(), status_code=202)


async def pull_model(request: Request) -> Response:
    control = plane(request)
    data = await body(request)
    repo = data.get("repo")
    if not isinstance(repo, str) or "/" not in repo:
        raise APIError(400, "repo must be a Hugging Face repository id such as HuggingFaceTB/SmolLM2-135M-Instruct",
                       param="repo")
    revision = data.get("revision") or "main"

    async def work(progress):
        info = await store_call(control.models.pull, repo, revision, data.get("name"), progress)
        return info.to_dict()

    response = start_task(request, "pull", f"{repo}@{revision}", work)
    control.record(request, "model.pull", repo, {"revision": revision, "name": data.get("name")})
    return response


async def import_model(request: Request) -> Response:
    control = plane(request)
    data = await body(request)
    path = data.get("path")
    if not isinstance(path, str) or not path:
        raise APIError(400, "path must name a model folder or a .gguf file on the server", param="path")

    async def work(progress):
        info = await store_call(control.models.import_path, Path(path), data.get("name"), progress)
        return info.to_dict()

    response = start_task(request, "import", path, work)
    control.record(request, "model.import", path, {"name": data.get("name")})
    return response


async def delete_model(request: Request) -> Response:
    control = plane(request)
    name = request.path_params["name"]
    await store_call(control.models.delete, name, control.service.pool.loaded_names)
    control.record(request, "model.delete", name)
    return JSONResponse({"deleted": name})


async def load_model(request: Request) -> Response:
    """Load a stored model next to the others, or (with "replace") in place of one: a hot swap."""
    control = plane(request)
    name = request.path_params["name"]
    replace = (await body(request)).get("replace")
    if replace is not None and not isinstance(replace, str):
        raise APIError(400, "replace must name the loaded model the new one replaces", param="replace")
    info = await store_call(control.models.get, name)
    pool = control.service.pool
    if name in pool.resident:
        raise APIError(409, f"{name} is already loaded")
    if replace is not None and replace not in pool.resident:
        raise APIError(404, f"{replace} is not loaded, so it cannot be replaced; loaded: {', '.join(sorted(pool.resident))}",
                       param="replace")

    async def swap(progress):
        try:
            result = await hot_swap(control.service, name, info.path, progress, replace)
        except SwapError as e:
            raise RuntimeError(e.message) from None
        if pool.default == name:
            pool.remember_loaded(name)
        return result

    async def add(progress):
        started = time.monotonic()
        progress({"stage": "loading", "fraction": 0.1, "message": f"loading {name} next to "
                  f"{', '.join(sorted(pool.resident)) or 'nothing'}"})
        try:
            await pool.add(name)
        except PoolError as e:
            raise RuntimeError(e.message) from None
        progress({"stage": "done", "fraction": 1.0, "message": f"{name} loaded"})
        return {"loaded": name, "previous": None, "mode": "added", "seconds": round(time.monotonic() - started, 2)}

    response = start_task(request, "load", name, swap if replace is not None else add)
    control.record(request, "model.load", name, {"replace": replace} if replace else None)
    return response


async def unload_model(request: Request) -> Response:
    """Drain a loaded model's requests and stop it (not the default: replace that one instead)."""
    control = plane(request)
    name = request.path_params["name"]
    pool = control.service.pool
    if name not in pool.resident:
        raise APIError(404, f"{name} is not loaded; loaded: {', '.join(sorted(pool.resident)) or 'nothing'}")
    if name == pool.default:
        raise APIError(409, f"{name} is the default model (requests without a known model, /ready and the canary "
                            f"use it): load another with --replace {name} instead")

    async def work(progress):
        progress({"stage": "draining", "fraction": 0.1, "message": f"waiting for the requests on {name}"})
        await pool.unload(name, reason="unloaded by an operator")
        return {"unloaded": name}

    response = start_task(request, "unload", name, work)
    control.record(request, "model.unload", name)
    return response


async def pin_model(request: Request) -> Response:
    """Pin (never evicted) or unpin a model until the service restarts; [models.NAME] pinned keeps it."""
    control = plane(request)
    name = request.path_params["name"]
    pinned = (await body(request)).get("pinned", True)
    if not isinstance(pinned, bool):
        raise APIError(400, "pinned must be true or false", param="pinned")
    pool = control.service.pool
    if name not in pool.resident and not pool.stored(name):
        raise APIError(404, f"no model {name!r} is loaded or stored")
    (pool.pinned.add if pinned else pool.pinned.discard)(name)
    control.record(request, "model.pin" if pinned else "model.unpin", name)
    return JSONResponse({"name": name, "pinned": pinned})


def model_routes() -> list[Route]:
    return [
        Route("/v1/models", list_models),
        Route("/v1/models/pull", pull_model, methods=["POST"]),
        Route("/v1/models/import", import_model, methods=["POST"]),
        Route("/v1/models/{name}", delete_model, methods=["DELETE"]),
        Route("/v1/models/{name}/load", load_model, methods=["POST"]),
        Route("/v1/models/{name}/unload", unload_model, methods=["POST"]),
        Route("/v1/models/{name}/pin", pin_model, methods=["POST"]),
    ]
