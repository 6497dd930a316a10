"""Engine settings in one validated dataclass; units are in the names."""

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.errors import InvalidParameter

if TYPE_CHECKING:
    import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")  # torch dtype names; strings, so that torch stays unimported
# /proc/cpuinfo flags of CPUs that compute bfloat16 natively. Elsewhere torch emulates it: on an AVX2-only
# EPYC a bfloat16 matmul measured 1.3 GFLOP/s against 50 in float32.
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
ATTENTION_BACKENDS = ("auto", "torch", "triton")
ASYNC_SCHEDULING = ("auto", "on", "off")
QUANTIZATIONS = ("int8", "int4", "fp8")  # quantize at load (engine.quantization.at_load)
KV_CACHE_DTYPES = ("auto", "fp8")  # auto: the model's dtype; fp8: e4m3 with a scale per kv head
CPU_KV_CACHE_BYTES = 2 << 30


@dataclass
class EngineConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    block_size: int = 16
    kv_cache_bytes: int | None = None  # None: on CUDA what gpu_memory_fraction leaves, on CPU 2 GiB
    num_kv_blocks: int | None = None  # overrides kv_cache_bytes (tests force preemption with it)
    gpu_memory_fraction: float = 0.85  # of the GPU's memory: weights + activation peak + KV cache
    enable_prefix_caching: bool = True
    max_model_len: int | None = None  # None: the model's own limit
    max_waiting_requests: int = 1024
    dtype: str = "auto"  # auto: bfloat16 on CUDA and on CPUs with native bfloat16, float32 elsewhere
    device: str = "cpu"
    attention_backend: str = "auto"  # auto: triton on CUDA, torch on CPU
    cuda_graphs: bool = True  # decode steps replay captured graphs (CUDA with the triton backend)
    fused_layers: bool = True  # Llama-family layers with merged projections and fused kernels (triton backend)
    # auto: on CUDA, where the host schedules the next step while the device runs this one (engine.overlap);
    # on CPU the same cores do both, so there is nothing to overlap ("on" runs it there, for tests)
    async_scheduling: str = "auto"
    # Weights quantized at load: int8 / int4 weight-only, fp8 (GPUs with fp8). None: as the checkpoint has them
    # (a pre-quantized checkpoint or a GGUF stays quantized).
    quantization: str | None = None
    kv_cache_dtype: str = "auto"  # fp8: twice the tokens in the same KV cache bytes
    # Image embeddings kept by their image's content (engine.vision): a repeated image is not encoded again
    encoder_cache_tokens: int = 8192
    # Placeholder tokens the vision tower runs over in one step (engine.scheduler); None: as vLLM, the larger of
    # max_num_batched_tokens and the largest image's placeholders (engine.vision), so that any one image fits
    max_num_encoder_tokens: int | None = None
    # A model with recurrent layers: their states kept at block boundaries for prefix caching (engine.state_snapshots),
    # each as large as a state slot and from the KV cache's budget. None: one per sequence that may run (max_num_seqs);
    # 0: none, and prefix caching is off for such a model.
    num_state_snapshots: int | None = None

    def __post_init__(self):
        for name in ("max_num_seqs", "max_num_batched_tokens", "block_size", "max_waiting_requests"):
            if getattr(self, name) < 1:
                raise InvalidParameter(name, f"{name} must be positive, got {getattr(self, name)}")
        if self.encoder_cache_tokens < 0:
            raise InvalidParameter("encoder_cache_tokens", f"encoder_cache_tokens must be 0 (off) or more, got "
                                                           f"{self.encoder_cache_tokens}")
        if self.num_state_snapshots is not None and self.num_state_snapshots < 0:
            raise InvalidParameter("num_state_snapshots", "num_state_snapshots must be 0 (no prefix caching for "
                                   f"models with recurrent layers) or more, got {self.num_state_snapshots}")
        for name in ("kv_cache_bytes", "num_kv_blocks", "max_num_encoder_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InvalidParameter(name, f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.gpu_memory_fraction <= 1:
            raise InvalidParameter(
                "gpu_memory_fraction", f"gpu_memory_fraction must be in (0, 1], got {self.gpu_memory_fraction}"
            )
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise InvalidParameter(
                "attention_backend",
                f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {self.attention_backend!r}",
            )
        if self.attention_backend == "triton" and not self.on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise InvalidParameter(
                "attention_backend",
                "the triton attention backend needs a CUDA device (tests run it on CPU with TRITON_INTERPRET=1); "
                "use attention_backend = \"auto\" or \"torch\"",
            )
        if self.async_scheduling not in ASYNC_SCHEDULING:
            raise InvalidParameter(
                "async_scheduling",
                f"async_scheduling must be one of {', '.join(ASYNC_SCHEDULING)}, got {self.async_scheduling!r}",
            )
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise InvalidParameter("quantization", f"quantization must be one of {', '.join(QUANTIZATIONS)} (or unset), "
                                                   f"got {self.quantization!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise InvalidParameter("kv_cache_dtype", f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                                                     f"got {self.kv_cache_dtype!r}")
        if self.dtype not in DTYPES:
            raise InvalidParameter("dtype", f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def resolved_attention_backend(self) -> str:
        if self.attention_backend != "auto":
            return self.attention_backend
        return "triton" if self.on_cuda else "torch"

    @property
    def overlaps_steps(self) -> bool:
        return self.async_scheduling == "on" or (self.async_scheduling == "auto" and self.on_cuda)

    @property
    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self.on_cuda or cpu_has_native_bf16() else "float32"

    @property
    def torch_dtype(self) -> "torch.dtype":
        import torch

        return getattr(torch, self.resolved_dtype)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU's flags (Linux's /proc/cpuinfo) include a native bfloat16 instruction set.

    Where the file cannot be read (the service's unit hides it with ProcSubset=pid; not Linux),
    torch's own CPUID reading answers."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return not NATIVE_BF16_CPU_FLAGS.isdisjoint(line.split(":", 1)[1].split())
    except OSError:
        import torch

        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False
