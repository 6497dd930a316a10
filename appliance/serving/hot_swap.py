"""Hot swap: replace the served model while requests keep flowing.

Where both models fit in memory the new one loads while the old one serves; at the switch new
requests go to the new model and the old one finishes its in-flight requests (bounded by a
timeout) before it is stopped. Where they do not fit, new requests queue while the old model
drains, unloads and the new one loads. A load that fails leaves the old model serving (reloading
it in the sequential case) and the task reports why.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from appliance.serving import memory_plan
from appliance.serving.served_model import ServedModel, drain_requests
from appliance.serving.service import Service

Progress = Callable[[dict], None]  # called with {"stage", "fraction", "message"} as the swap advances

log = logging.getLogger("appliance.hot_swap")

class SwapError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def new_engine_config(service: Service, name: str, old: ServedModel | None, overlap: bool):
    """The engine.EngineConfig for the incoming model."""
    config = service.pool.engine_config(name)
    if overlap and old is not None and config.on_cuda and config.kv_cache_bytes is None and config.num_kv_blocks is None:
        # Replacing a model, the new one gets the old one's cache size unless its own is configured.
        config.kv_cache_bytes = old.engine.kv_cache_bytes
    return config


def can_overlap(service: Service, name: str, path: Path, old: ServedModel) -> bool:
    mode = service.config.swap_mode
    if mode != "auto":
        return mode == "overlap"
    config = new_engine_config(service, name, old, overlap=True)
    need = memory_plan.needs(path, config, service.config.kv_context)
    return service.pool.plan().refusal(name, need, []) is None


async def hot_swap(service: Service, name: str, path: Path, progress: Progress, replace: str | None = None) -> dict:
    """Make `name` (a model folder at `path`) serve in place of `replace` (default: the default
    model); see the module docstring."""
    pool = service.pool
    if pool.swap is not None:
        raise SwapError(409, f"a model load is already in progress ({pool.swap.target}); wait for it to finish")
    if service.readiness.draining:
        raise SwapError(503, "the service is shutting down")
    replace = replace or pool.default
    old = pool.resident.get(replace) if replace is not None else None
    if replace is not None and old is None and pool.state == "ready":
        raise SwapError(404, f"{replace} is not loaded; `appliance models list` shows what is")
    if name in pool.resident or name in pool.loads:
        raise SwapError(409, f"{name} is already {'loaded' if name in pool.resident else 'loading'}")
    sequential = old is not None and not await asyncio.to_thread(can_overlap, service, name, path, old)
    pool.begin_swap(name, old, sequential)
    timeout = service.config.swap_drain_timeout_s
    started = time.monotonic()
    ended = 0
    try:
        if sequential:
            progress({"stage": "draining", "fraction": 0.05, "message": f"not enough memory for both models: "
                      f"new requests wait while {old.name} finishes {len(old.inflight)} in-flight requests"})
            ended = await drain_requests(old, timeout, f"the model {old.name} is being replaced and the swap's "
                                                       "drain timeout ended this request; retry", admitted=True)
            pool.take_down(old)
            await pool.stop_model(old)
            pool.stopped(old)
        progress({"stage": "loading", "fraction": 0.1,
                  "message": f"loading {name}" + (f" while {old.name} serves" if old and not sequential else "")})
        try:
            new = await _load_and_check(service, name, path, progress, new_engine_config(service, name, old, not sequential))
        except Exception as e:
            if sequential:
                progress({"stage": "restoring", "message": f"{name} failed to load; reloading {old.name}"})
                await _restore(service, old)
            raise SwapError(400, f"{name} could not be loaded, {old.name if old else 'nothing'} keeps serving: "
                                 f"{getattr(e, 'message', e)}") from None
        pool.switch_to(new, old)
        if new.name == pool.default:
            service.readiness.passed()
        log.info("hot swap: %s serves in place of %s", name, old.name if old else "nothing")
        if not sequential and old is not None:
            progress({"stage": "draining", "fraction": 0.9, "message": f"{name} serves new requests; waiting for "
                      f"{len(old.inflight)} in-flight requests on {old.name}"})
            ended = await drain_requests(old, timeout, f"the model {old.name} was replaced and the swap's drain "
                                                       "timeout ended this request; retry", admitted=True)
            old.retire()
            await pool.stop_model(old)
            pool.stopped(old)
        progress({"stage": "done", "fraction": 1.0, "message": f"serving {name}"})
        return {"loaded": name, "previous": old.name if old else None, "mode": "sequential" if sequential else "overlap",
                "ended_early": ended, "seconds": round(time.monotonic() - started, 2)}
    finally:
        pool.end_swap()


async def _load_and_check(service: Service, name: str, path: Path, progress: Progress, config) -> ServedModel:
    new = await service.pool.load(name, path, set(service.config.model_settings(name).aliases), config)
    progress({"stage": "canary", "fraction": 0.8, "message": f"{name} loaded; checking it generates"})
    error = await service.readiness.canary(new)
    if error is not None:
        await service.pool.stop_model(new)
        raise RuntimeError(f"it loaded but a test generation failed: {error}")
    return new


async def _restore(service: Service, old: ServedModel) -> None:
    try:
        served = await service.pool.load(old.name, old.path, old.aliases)
    except Exception as e:
        service.pool.fail(f"reloading {old.name} after a failed swap: {e}")
        log.error("hot swap: %s", service.pool.load_error)
        raise
    service.pool.restored(served)
