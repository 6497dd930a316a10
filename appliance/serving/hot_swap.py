"""Hot swap: replace the served model while requests keep flowing.

Where both models fit in memory the new one loads while the old one serves; at the switch new
requests go to the new model and the old one finishes its in-flight requests (bounded by a
timeout) before it is stopped. Where they do not fit, new requests queue while the old model
drains, unloads and the new one loads. A load that fails leaves the old model serving (reloading
it in the sequential case) and the task reports why.
"""

import asyncio
import json
import logging
import time
from pathlib import Path

from collections.abc import Callable

from appliance.serving.served_model import ServedModel, drain_requests
from appliance.serving.service import Service

Progress = Callable[[dict], None]  # called with {"stage", "fraction", "message"} as the swap advances

log = logging.getLogger("appliance.hot_swap")

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


class SwapError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def new_engine_config(service: Service, overlap: bool):
    """The engine.EngineConfig for the incoming model."""
    config = service.pool.engine_config()
    old = service.pool.active
    if overlap and old is not None and config.on_cuda and config.kv_cache_bytes is None and config.num_kv_blocks is None:
        # Sized from free memory next to the old model, the new cache would get only what the old
        # one leaves, for good: it gets the old model's size instead.
        config.kv_cache_bytes = old.engine.kv_cache_bytes
    return config


def model_bytes_needed(path: Path, engine_config) -> int:
    """Weights at the serving dtype plus the KV cache the new engine (its EngineConfig) will allocate."""
    from engine.config import CPU_KV_CACHE_BYTES

    config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    stored = DTYPE_BYTES.get(str(config.get("dtype") or config.get("torch_dtype") or "float32"), 4)
    serving = DTYPE_BYTES.get(engine_config.resolved_dtype, 4)
    files = path.glob("*.safetensors") if path.is_dir() else [path]
    weights = sum(f.stat().st_size for f in files) * serving // stored
    if engine_config.num_kv_blocks is None:
        return weights + (engine_config.kv_cache_bytes or CPU_KV_CACHE_BYTES)
    layers = config.get("num_hidden_layers", 0)
    heads = config.get("num_key_value_heads") or config.get("num_attention_heads", 0)
    head_dim = config.get("head_dim") or config.get("hidden_size", 0) // max(1, config.get("num_attention_heads", 1))
    return weights + 2 * layers * heads * head_dim * engine_config.block_size * engine_config.num_kv_blocks * serving


def free_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    import psutil

    return psutil.virtual_memory().available


def can_overlap(service: Service, path: Path) -> bool:
    mode = service.config.swap_mode
    if mode != "auto":
        return mode == "overlap"
    needed = model_bytes_needed(path, new_engine_config(service, overlap=True))
    return needed * 1.2 < free_memory_bytes(service.config.engine.device)  # headroom for activations


async def hot_swap(service: Service, name: str, path: Path, progress: Progress) -> dict:
    """Make `name` (a model folder at `path`) the served model; see the module docstring."""
    pool = service.pool
    if pool.swap is not None:
        raise SwapError(409, f"a model load is already in progress ({pool.swap.target}); wait for it to finish")
    if service.readiness.draining:
        raise SwapError(503, "the service is shutting down")
    old = pool.active
    if old is not None and old.name == name:
        raise SwapError(409, f"{name} is already the loaded model")
    sequential = old is not None and not await asyncio.to_thread(can_overlap, service, path)
    pool.begin_swap(name, sequential)
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
            await asyncio.to_thread(old.stop)
        progress({"stage": "loading", "fraction": 0.1,
                  "message": f"loading {name}" + (f" while {old.name} serves" if old and not sequential else "")})
        try:
            new = await _load_and_check(service, name, path, progress, new_engine_config(service, not sequential))
        except Exception as e:
            if sequential:
                progress({"stage": "restoring", "message": f"{name} failed to load; reloading {old.name}"})
                await _restore(service, old)
            raise SwapError(400, f"{name} could not be loaded, {old.name if old else 'nothing'} keeps serving: {e}") from None
        pool.switch_to(new)
        service.readiness.passed()
        log.info("hot swap: now serving %s", name)
        if not sequential and old is not None:
            progress({"stage": "draining", "fraction": 0.9, "message": f"{name} serves new requests; waiting for "
                      f"{len(old.inflight)} in-flight requests on {old.name}"})
            ended = await drain_requests(old, timeout, f"the model {old.name} was replaced and the swap's drain "
                                                       "timeout ended this request; retry", admitted=True)
            old.retire()
            await asyncio.to_thread(old.stop)
            pool.stopped(old)
        progress({"stage": "done", "fraction": 1.0, "message": f"serving {name}"})
        return {"loaded": name, "previous": old.name if old else None, "mode": "sequential" if sequential else "overlap",
                "ended_early": ended, "seconds": round(time.monotonic() - started, 2)}
    finally:
        pool.end_swap()


async def _load_and_check(service: Service, name: str, path: Path, progress: Progress, config) -> ServedModel:
    new = await asyncio.to_thread(ServedModel.load, name, path, config)
    progress({"stage": "canary", "fraction": 0.8, "message": f"{name} loaded; checking it generates"})
    error = await service.readiness.canary(new)
    if error is not None:
        await asyncio.to_thread(new.stop)
        raise RuntimeError(f"it loaded but a test generation failed: {error}")
    return new


async def _restore(service: Service, old: ServedModel) -> None:
    try:
        served = await asyncio.to_thread(ServedModel.load, old.name, old.path, service.pool.engine_config(), old.aliases)
    except Exception as e:
        service.pool.fail(f"reloading {old.name} after a failed swap: {e}")
        log.error("hot swap: %s", service.pool.load_error)
        raise
    service.pool.restored(served)
