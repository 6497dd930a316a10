"""Engine settings in one validated dataclass; units are in the names."""

from dataclasses import dataclass

import torch

from engine.errors import InvalidParameter

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EngineConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    kv_cache_bytes: int = 2 << 30
    num_kv_blocks: int | None = None  # overrides kv_cache_bytes (tests force preemption with it)
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # None: the model's own limit
    max_waiting_requests: int = 1024
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self):
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "kv_cache_bytes", "max_waiting_requests"):
            if getattr(self, name) < 1:
                raise InvalidParameter(name, f"{name} must be positive, got {getattr(self, name)}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise InvalidParameter("num_kv_blocks", f"num_kv_blocks must be positive, got {self.num_kv_blocks}")
        if self.dtype not in DTYPES:
            raise InvalidParameter("dtype", f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]
