"""Load a causal LM and its tokenizer: a Hugging Face folder, a GGUF file, or dummy weights.

Which models load is decided by engine.capabilities (the model's layers, not a list of names). A
multimodal checkpoint of a family whose images the engine runs (engine.vision), with its processor,
loads whole: the multimodal class, its language model and LM head then put under the text model's
causal-LM class (sharing the modules, no copy), its vision tower kept beside. Any other multimodal
checkpoint loads its language model only: the text model's causal-LM class, its weights renamed from
where the multimodal class keeps them, the vision weights left on disk. Mixture-of-
experts layers run the fastest experts implementation transformers offers on the device; recurrent
mixers get the engine's packed forward (engine.recurrent).

Every failure becomes a ModelLoadError that names the file and what to do.
"""

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from engine.capabilities import Architecture, check_config, decoder_layers, probe_attention
from engine.errors import ModelLoadError
from engine.kv_cache_spec import KVCacheLayout
from engine.recurrent.mixers import use_engine_forwards
from engine.state_spec import StateLayout
from engine.vision import Vision, loads_vision
from engine.quantization import checkpoint
from engine.quantization.weights import WeightFormat, pack_weights

# Where multimodal checkpoints keep their language model's weights: transformers 5 saves
# model.language_model.* (Idefics3's: model.text_model.*) and lm_head.*; checkpoints saved by transformers 4 (most on the hub) keep
# language_model.model.* and language_model.lm_head.*.
TEXT_WEIGHTS = {
    r"^model\.language_model\.": "model.",
    r"^model\.text_model\.": "model.",  # Idefics3 and SmolVLM
    r"^language_model\.model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
}


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    tokenizer: object | None
    config: PretrainedConfig  # the language model's (a multimodal checkpoint's text config)
    architecture: str  # what the checkpoint declares
    layout: KVCacheLayout  # which KV cache group each attention layer writes (engine.kv_cache_spec)
    attention_features: list[str] = field(default_factory=list)  # "sliding", "sinks", "softcap", ...
    experts: str | None = None  # the experts implementation of MoE layers; None for a dense model
    text_only: bool = False  # a multimodal checkpoint whose language model alone is loaded
    weights: WeightFormat | None = None  # how the weights are packed in memory (engine.quantization)
    states: StateLayout = StateLayout()  # what its recurrent layers keep per sequence (engine.state_spec)
    vision: Vision | None = None  # a multimodal checkpoint's vision side, where the engine runs its images


@dataclass(frozen=True)
class Weights:
    """How the loaded weights are to be packed: quantized at load, as the GGUF was, or as the checkpoint is."""

    quantization: str | None = None  # "int8", "int4", "fp8": quantize at load
    gguf: Path | None = None
    stored: str | None = None  # a pre-quantized checkpoint's format, e.g. "GPTQ int4 g128"


def _finish(name: str, model: torch.nn.Module, tokenizer, arch: Architecture, device: str, weights: Weights,
            vision: Vision | None = None) -> LoadedModel:
    """The weights packed, the capability probe, the experts implementation and the recurrent layers' forwards,
    on the loaded weights."""
    model.eval()
    packed = pack_weights(model, weights.quantization, device, model.dtype, weights.gguf, weights.stored)
    experts = choose_experts_implementation(model, device)
    layout, features = probe_attention(model, arch.declared, device)
    states = use_engine_forwards(decoder_layers(model, arch.declared))
    return LoadedModel(name, model, tokenizer, model.config, arch.declared, layout, features, experts,
                       arch.text_only and vision is None, packed, states, vision)


def choose_experts_implementation(model: torch.nn.Module, device: str) -> str | None:
    """grouped_mm (one grouped GEMM over all experts: transformers' default where torch has it, on CUDA
    and on CPU) for models built on transformers' experts interface; their own loop for the rest."""
    if not any("expert" in type(m).__name__.lower() for m in model.modules()):
        return None
    # transformers' experts interface marks the modules it dispatches (use_experts_implementation)
    if not any(hasattr(m, "has_gate") and hasattr(m, "is_transposed") for m in model.modules()):
        return "the model's own"
    if not type(model)._can_set_experts_implementation():  # built on the interface, from transformers' default
        return model.config._experts_implementation
    try:
        model.set_experts_implementation("grouped_mm")
    except (ValueError, ImportError):
        model.set_experts_implementation("eager")
    return model.config._experts_implementation


def load_dummy(config: PretrainedConfig, dtype: torch.dtype, device: str, seed: int = 0,
               quantization: str | None = None) -> LoadedModel:
    """Random weights from a config: for benchmarks and tests that need no real model."""
    arch = check_config(config)
    torch.manual_seed(seed)
    with torch.device(device):
        model = arch.model_class()._from_config(arch.text_config, dtype=dtype)
    return _finish(f"dummy-{arch.text_config.model_type}", model, None, arch, device, Weights(quantization))


def _from_pretrained(arch: Architecture, path: Path, dtype: torch.dtype, device: str, **kwargs):
    if arch.text_only:
        kwargs["key_mapping"] = TEXT_WEIGHTS
        kwargs["config"] = arch.text_config
    return arch.model_class().from_pretrained(path, dtype=dtype, device_map=device, **kwargs)


def _with_vision(arch: Architecture, path: Path, dtype: torch.dtype, device: str, tokenizer,
                 **kwargs) -> tuple[torch.nn.Module, Vision]:
    """The multimodal class loaded whole: the text model's causal LM over its language model and head, and the
    vision side. The vision tower is no submodule of the causal LM: the engine's attention, quantization and
    probes walk the language model alone."""
    multimodal = getattr(transformers, arch.declared).from_pretrained(path, dtype=dtype, device_map=device, **kwargs)
    with torch.device("meta"):
        model = arch.model_class()._from_config(multimodal.config.get_text_config(), dtype=dtype)
    decoder = multimodal.get_decoder()  # its language model (Idefics3's text_model); Llama 4's is a whole causal LM
    model.model = decoder.model if hasattr(decoder, "lm_head") else decoder
    model.lm_head = multimodal.get_output_embeddings()
    model.generation_config = multimodal.generation_config
    return model, Vision.load(path, multimodal, tokenizer)


def _load_folder(path: Path, dtype: torch.dtype, device: str, quantization: str | None = None) -> LoadedModel:
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} has no config.json; is it a Hugging Face model folder?")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}/config.json could not be read: {e}") from e
    arch = check_config(config)
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"{path} has no *.safetensors weights")
    quantized, stored = checkpoint.prepare(config)  # a pre-quantized checkpoint loads through the engine's quantizer
    vision = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path) if any(path.glob("tokenizer*")) else None
        if arch.text_only and loads_vision(config.model_type, path):
            model, vision = _with_vision(arch, path, dtype, device, tokenizer, **quantized)
        else:
            model = _from_pretrained(arch, path, dtype, device, **quantized)
    except Exception as e:  # transformers raises many kinds for corrupt files
        raise ModelLoadError(f"could not load the model in {path}: {type(e).__name__}: {e}") from e
    return _finish(path.name, model, tokenizer, arch, device, Weights(quantization, stored=stored), vision)


def _load_gguf(path: Path, dtype: torch.dtype, device: str, quantization: str | None = None,
               keep_packing: bool = True) -> LoadedModel:
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        arch = check_config(config)
        # GGUF loading logs a progress bar per tensor; keep service logs readable.
        logging.getLogger("transformers").setLevel(logging.ERROR)
        # Passing the config saves from_pretrained parsing the file's metadata again (seconds each time).
        model = _from_pretrained(arch, path.parent, dtype, device, gguf_file=path.name, config=config)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"could not load the GGUF file {path}: {type(e).__name__}: {e}") from e
    return _finish(path.stem, model, tokenizer, arch, device,
                   Weights(quantization, gguf=path if keep_packing and quantization is None else None))


def load_model(source: str | Path | PretrainedConfig, dtype: torch.dtype = torch.float32, device: str = "cpu",
               quantization: str | None = None) -> LoadedModel:
    """Load from a model folder, a .gguf file, or (given a config) with dummy weights; quantization: "int8",
    "int4" or "fp8" to quantize at load (a GGUF otherwise stays as quantized as the engine runs it)."""
    if isinstance(source, PretrainedConfig):
        return load_dummy(source, dtype, device, quantization=quantization)
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist; give a model folder or a .gguf file")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf; give a model folder or a .gguf file")
        return _load_gguf(path, dtype, device, quantization)
    return _load_folder(path, dtype, device, quantization)


def convert_gguf_to_folder(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF once into a safetensors folder that loads quickly."""
    loaded = _load_gguf(gguf, torch.float32, "cpu", keep_packing=False)
    # A model loaded from GGUF is not directly save_pretrained-able: rebuild it from config + weights. The folder's
    # weights are dequantized: the GGUF's quantization_config (transformers puts it on the config) is not written.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = type(loaded.model)(config)
    model = model.to_empty(device="cpu").to(torch.float32)
    model.load_state_dict(loaded.model.state_dict(), strict=True)
    model.tie_weights()
    model.config.architectures = [loaded.architecture]
    model.generation_config = loaded.model.generation_config
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    loaded.tokenizer.save_pretrained(target)
