"""What a model needs in memory before it loads, and whether that fits next to the models already loaded.

Needs = weights (bytes on disk scaled from the stored dtype to the serving one: every expert of a
mixture of experts; a multimodal checkpoint's language model only, or with its vision tower where the
engine runs its images (engine.vision); a pre-quantized checkpoint's as
stored; with `quantization` the decoder's linear layers at their packed size; a folder with only a
config.json: its parameters counted on the meta device) + the KV cache the engine will allocate (its
layers grouped as the engine groups them: a sliding-window layer holds its window; one byte a value
with kv_cache_dtype = "fp8") + the state slots of a hybrid model's recurrent layers (one per sequence
that may run: engine.state_spec) and their snapshots for prefix caching (num_state_snapshots, by default
as many, each a slot's size: engine.state_snapshots) + an activation peak (the largest step's hidden
states and logits; for a model whose images the engine runs, its encoder cache's image embeddings too).
The engine's kv_cache_bytes holds the KV cache, the state slots and the snapshots together. Free = on a
GPU what the device has free, on CPU the RAM available, capped by `pool_memory_bytes` less what the
loaded models were planned to use. A model that does not fit is refused with these numbers, before
anything is allocated.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
# Bytes a weight takes packed (engine.quantization): int8 and fp8 one, plus a scale per output channel; int4 half,
# plus a bfloat16 scale and zero per group of 32.
PACKED_BYTES_PER_WEIGHT = {"int8": 1.0, "fp8": 1.0, "int4": 0.5 + 4 / 32}
GIB = 1 << 30


@dataclass(frozen=True)
class Needs:
    weights: int
    kv_cache: int
    activations: int
    states: int = 0  # the state slots of recurrent layers and their snapshots

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.states + self.activations

    @property
    def cache(self) -> int:
        """What the engine's kv_cache_bytes must be to allocate this KV cache and these state slots and snapshots."""
        return self.kv_cache + self.states

    def to_dict(self) -> dict:
        return {"weights_bytes": self.weights, "kv_cache_bytes": self.kv_cache, "state_bytes": self.states,
                "activations_bytes": self.activations, "total_bytes": self.total}


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def model_config(path: Path) -> dict:
    config = path / "config.json"
    return json.loads(config.read_text()) if config.is_file() else {}


# Where multimodal checkpoints keep their language model's tensors (engine.loader loads only those).
TEXT_TENSOR_PREFIXES = ("model.language_model.", "language_model.", "lm_head.")


def weight_bytes(path: Path, multimodal: bool) -> int:
    """Bytes of the weights the engine loads: every file's, or for a multimodal checkpoint loaded as text only its
    language model's tensors (from the safetensors headers: the vision tower stays on disk)."""
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


def linear_weights(config: dict) -> int:
    """Weights in the decoder layers' linear layers, which quantization packs (experts' excepted: they stay float)."""
    hidden = config.get("hidden_size", 0)
    heads = config.get("num_attention_heads", 1) or 1
    head_dim = config.get("head_dim") or hidden // heads
    kv_heads = config.get("num_key_value_heads") or heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    experts = config.get("num_local_experts") or config.get("num_experts")
    mlp = 0 if experts else 3 * hidden * config.get("intermediate_size", 4 * hidden)
    return config.get("num_hidden_layers", 0) * (attention + mlp)


def needs(path: Path, engine_config, kv_context: int) -> Needs:
    """What loading the model at `path` with `engine_config` (an engine.EngineConfig) will take."""
    from engine.config import CPU_KV_CACHE_BYTES
    from engine.kv_cache_spec import layout_from_config
    from engine.state_spec import StateLayout, state_slots_for, state_snapshots_for
    from engine.vision import loads_vision, vectors_per_placeholder

    config = model_config(path)
    text = config.get("text_config") or config  # a multimodal checkpoint serves its language model
    architecture = model_architecture(path) if config else None
    stored = DTYPE_BYTES.get(str(config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or "float32"), 4)
    serving = DTYPE_BYTES.get(engine_config.resolved_dtype, 4)
    # every expert of a MoE model counts; a multimodal checkpoint's vision tower where the engine loads it
    vision = text is not config and loads_vision(config.get("model_type"), path)
    on_disk = weight_bytes(path, text is not config and not vision)
    if not on_disk and architecture is not None:  # a config.json alone: what its parameters take at the stored dtype
        on_disk = parameter_count(architecture) * stored
    weights = on_disk if "quantization_config" in config else on_disk * serving // stored
    if engine_config.quantization in PACKED_BYTES_PER_WEIGHT:
        linear = linear_weights(text)
        weights -= int(linear * (serving - PACKED_BYTES_PER_WEIGHT[engine_config.quantization]))
    layout = layout_from_config(architecture.text_config) if architecture is not None else None
    block = layout.block_bytes(engine_config.block_size, kv_value_bytes(engine_config)) if layout else 0
    recurrent = architecture.states if architecture is not None else StateLayout()
    rows = (state_slots_for(engine_config.max_num_seqs, recurrent)
            + state_snapshots_for(engine_config.num_state_snapshots, engine_config.max_num_seqs, recurrent,
                                  engine_config.enable_prefix_caching))
    states = rows * recurrent.bytes_per_slot(serving)
    if engine_config.num_kv_blocks is not None:
        kv = block * (engine_config.num_kv_blocks + 1)
    elif engine_config.kv_cache_bytes is not None or not engine_config.on_cuda:
        # As the engine sizes it (engine.model_runner): the state slots and snapshots first, the null block and the
        # rest in blocks.
        budget = (engine_config.kv_cache_bytes or CPU_KV_CACHE_BYTES) - states
        kv = block * (max(1, budget // block - 1) + 1) if block else 0
    else:
        kv = default_kv_bytes(architecture.text_config, engine_config, kv_context) if architecture is not None else 0
    hidden = text.get("hidden_size", 0)
    intermediate = text.get("intermediate_size", 4 * hidden)
    step_tokens = engine_config.max_num_batched_tokens
    activations = (step_tokens * (4 * hidden + 2 * intermediate) * serving
                   + engine_config.max_num_seqs * text.get("vocab_size", 0) * 4)  # float32 logits
    if vision:  # the encoder cache: up to encoder_cache_tokens image embeddings (and deepstack features) of its width
        activations += engine_config.encoder_cache_tokens * vectors_per_placeholder(config) * hidden * serving
    return Needs(weights, kv, activations, states)


def model_architecture(path: Path):
    """What the engine builds from the folder's config.json (engine.capabilities.Architecture): its language model's
    config, whose layers give the KV cache groups, and its recurrent layers' states. Read by transformers' config
    class, as the loader reads it (Nemotron-H's config.json names its layers in a pattern only the class reads)."""
    from transformers import AutoConfig

    from engine.capabilities import check_config

    return check_config(AutoConfig.from_pretrained(path))


def parameter_count(architecture) -> int:
    """Parameters of the model the engine builds, counted on the meta device (no memory, no weights)."""
    import torch

    with torch.device("meta"):
        model = architecture.model_class()._from_config(architecture.text_config)
    return sum(p.numel() for p in model.parameters())


def default_kv_bytes(config, engine_config, kv_context: int) -> int:
    """On a GPU enough for max_num_seqs sequences of kv_context tokens (or the model's limit, if
    shorter), so that several models share it, each holding what its layers keep (a sliding window
    layer only its window). config: the language model's transformers config."""
    from engine.kv_cache_spec import blocks_per_sequence, layout_from_config

    limit = getattr(config, "max_position_embeddings", None)
    context = min(kv_context, engine_config.max_model_len or limit or kv_context)
    layout = layout_from_config(config)
    blocks = blocks_per_sequence(layout.specs(), engine_config.block_size, context, engine_config.max_num_batched_tokens)
    block = layout.block_bytes(engine_config.block_size, kv_value_bytes(engine_config))
    return (engine_config.max_num_seqs * blocks + 1) * block


def kv_value_bytes(engine_config) -> int:
    """Bytes of one key or value element in the KV cache: one with kv_cache_dtype = "fp8", else the serving dtype's."""
    return 1 if engine_config.kv_cache_dtype == "fp8" else DTYPE_BYTES.get(engine_config.resolved_dtype, 4)


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
        states = f", state slots and snapshots {gib(need.states)}" if need.states else ""
        return (f"{name} needs {gib(need.total)} (weights {gib(need.weights)}, KV cache {gib(need.kv_cache)}{states}, "
                f"activations {gib(need.activations)}), {gib(self.free)} free; {hint} or lower its kv_cache_bytes "
                f"([models.{name}] in config.toml)")

    def to_dict(self) -> dict:
        return {"budget_bytes": self.budget, "used_bytes": self.used, "free_bytes": self.free,
                "device_free_bytes": self.device_free}
