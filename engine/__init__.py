"""The inference engine: continuous batching, paged KV cache and prefix caching on transformers models.

A library: no HTTP, no appliance imports.
"""

from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from engine.engine import Engine, EngineStats, RequestOutput
from engine.errors import (
    DuplicateRequest,
    EngineError,
    InvalidParameter,
    ModelLoadError,
    NoModelLoaded,
    PromptTooLong,
    QueueFull,
)
from engine.sampling_params import SamplingParams

__all__ = [
    "AsyncEngine",
    "DuplicateRequest",
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineStats",
    "InvalidParameter",
    "ModelLoadError",
    "NoModelLoaded",
    "PromptTooLong",
    "QueueFull",
    "RequestOutput",
    "SamplingParams",
]
