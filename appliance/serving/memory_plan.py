"""What a model needs in memory before it loads, and whether that fits next to the models already loaded.

Needs = weights (bytes on disk scaled from the stored dtype to the serving one: every expert of a
mixture of experts; a multimodal checkpoint's language model only) + the KV cache the engine will
allocate (its layers grouped as the engine groups them: a sliding-window layer holds its window) + an
activation peak (the largest step's hidden states and logits). Free = on a
GPU what the device has free, on CPU the RAM available, capped by `pool_memory_bytes` less what the
loaded models were planned to use. A model that does not fit is refused with these numbers, before
anything is allocated.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
GIB = 1 << 30


@dataclass(frozen=True)
class Needs:
    weights: int
    kv_cache: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations

    def to_dict(self) -> dict:
        return {"weights_bytes": self.weights, "kv_cache_bytes": self.kv_cache,
                "activations_bytes": self.activations, "total_bytes": self.total}


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def model_config(path: Path) -> dict:
    config = path / "config.json"
    return json.loads(config.read_text()) if config.is_file() else {}


# Where multimodal checkpoints keep their language model's tensors (engine.loader loads only those).
TEXT_TENSOR_PREFIXES = ("model.language_model.", "language_model.", "lm_head.")


def weight_bytes(path: Path, multimodal: bool) -> int:
    """Bytes of the weights the engine loads: every file's, or for a multimodal checkpoint only its language
    model's tensors (from the safetensors headers: the vision tower stays on disk)."""
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not multimodal:
        return sum(f.stat().st_size for f in files)
    total = 0
    for f in files:
        with f.open("rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        total += sum(t["data_offsets"][1] - t["data_offsets"][0] for name, t in header.items()
                     if name != "__metadata__" and name.startswith(TEXT_TENSOR_PREFIXES))
    return total


def needs(path: Path, engine_config, kv_context: int) -> Needs:
    """What loading the model at `path` with `engine_config` (an engine.EngineConfig) will take."""
    from engine.kv_cache_spec import layout_from_config

    config = model_config(path)
    text = config.get("text_config") or config  # a multimodal checkpoint serves its language model
    stored = DTYPE_BYTES.get(str(config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or "float32"), 4)
    serving = DTYPE_BYTES.get(engine_config.resolved_dtype, 4)
    weights = weight_bytes(path, text is not config) * serving // stored  # every expert of a MoE model counts
    block = layout_from_config(text).block_bytes(engine_config.block_size, serving) if text else 0
    if engine_config.num_kv_blocks is not None:
        kv = block * (engine_config.num_kv_blocks + 1)
    else:
        kv = engine_config.kv_cache_bytes or default_kv_bytes(text, engine_config, kv_context)
    hidden = text.get("hidden_size", 0)
    intermediate = text.get("intermediate_size", 4 * hidden)
    step_tokens = engine_config.max_num_batched_tokens
    activations = (step_tokens * (4 * hidden + 2 * intermediate) * serving
                   + engine_config.max_num_seqs * text.get("vocab_size", 0) * 4)  # float32 logits
    return Needs(weights, kv, activations)


def default_kv_bytes(config: dict, engine_config, kv_context: int) -> int:
    """On a GPU enough for max_num_seqs sequences of kv_context tokens (or the model's limit, if
    shorter), so that several models share it, each holding what its layers keep (a sliding window
    layer only its window); on CPU the engine's own default."""
    from engine.config import CPU_KV_CACHE_BYTES
    from engine.kv_cache_spec import blocks_per_sequence, layout_from_config

    if not engine_config.on_cuda:
        return CPU_KV_CACHE_BYTES
    context = min(kv_context, engine_config.max_model_len or config.get("max_position_embeddings") or kv_context)
    layout = layout_from_config(config)
    blocks = blocks_per_sequence(layout.specs(), engine_config.block_size, context, engine_config.max_num_batched_tokens)
    block = layout.block_bytes(engine_config.block_size, DTYPE_BYTES.get(engine_config.resolved_dtype, 4))
    return (engine_config.max_num_seqs * blocks + 1) * block


def free_memory_bytes(device: str) -> int | None:
    """Free GPU memory, or the RAM available; None where the kernel does not say (the unit's
    ProcSubset=pid hides /proc/meminfo)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info(torch.device(device))[0]
    import psutil

    try:
        return psutil.virtual_memory().available
    except OSError:
        return None


def ram_bytes() -> int:
    """The machine's physical memory (sysconf: needs no /proc)."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Plan:
    """Where the pool's memory goes: what each loaded model was planned to use, and what is free."""

    budget: int | None  # pool_memory_bytes, if set
    used: dict[str, int]  # model name → planned bytes
    device_free: int  # what the device (or RAM) has free now

    @property
    def free(self) -> int:
        if self.budget is None:
            return self.device_free
        return max(0, min(self.device_free, self.budget - sum(self.used.values())))

    def refusal(self, name: str, need: Needs, evictable: list[str]) -> str | None:
        """None when `need` fits; else the message that says by how much it does not, and what to do."""
        if need.total <= self.free:
            return None
        hint = f"unload {' or '.join(evictable)}" if evictable else "unload a model"
        return (f"{name} needs {gib(need.total)} (weights {gib(need.weights)}, KV cache {gib(need.kv_cache)}, "
                f"activations {gib(need.activations)}), {gib(self.free)} free; {hint} or lower its kv_cache_bytes "
                f"([models.{name}] in config.toml)")

    def to_dict(self) -> dict:
        return {"budget_bytes": self.budget, "used_bytes": self.used, "free_bytes": self.free,
                "device_free_bytes": self.device_free}
