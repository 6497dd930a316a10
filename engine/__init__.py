"""The inference engine: continuous batching, paged KV cache and prefix caching on transformers models.

A library: no HTTP, no appliance imports. The names below are loaded on first use (PEP 562), so
`import engine.scheduler` or `from engine import SamplingParams` does not pull in torch.
"""

import importlib
import logging

# transformers imports torchao when it is installed; torchao then logs a warning for each of its CUDA
# extensions this machine cannot load, and torch warns that torchao registers its enums the old way, at
# every start. They say nothing about the engine's models.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

_EXPORTS = {
    "AsyncEngine": "engine.async_engine",
    "DuplicateRequest": "engine.errors",
    "Engine": "engine.engine",
    "EngineConfig": "engine.config",
    "EngineError": "engine.errors",
    "EngineStats": "engine.outputs",
    "InvalidParameter": "engine.errors",
    "ModelLoadError": "engine.errors",
    "NoModelLoaded": "engine.errors",
    "PromptTooLong": "engine.errors",
    "QueueFull": "engine.errors",
    "RequestOutput": "engine.outputs",
    "SamplingParams": "engine.sampling_params",
    "StructuredOutput": "engine.sampling_params",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
