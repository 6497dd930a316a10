"""Load a causal LM and its tokenizer: a Hugging Face folder, a GGUF file, or dummy weights.

Every failure becomes a ModelLoadError that names the file and what to do.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL_LM_NAMES

from engine.errors import ModelLoadError
from engine.kv_cache_spec import KVCacheLayout, layer_specs_from_config

# Architectures whose attention our paged attention function reproduces exactly
# (plain causal attention, RoPE applied by the model code, no softcap, no sliding window).
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Phi3ForCausalLM",
    "GemmaForCausalLM",
}


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    tokenizer: object | None
    config: PretrainedConfig
    architecture: str

    @property
    def layout(self) -> KVCacheLayout:
        return KVCacheLayout.from_specs(layer_specs_from_config(self.config))


def check_architecture(config: PretrainedConfig) -> str:
    architectures = getattr(config, "architectures", None) or []
    # GGUF configs carry no architectures field; the model type names the causal-LM class.
    arch = architectures[0] if architectures else CAUSAL_LM_NAMES.get(config.model_type, config.model_type)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"architecture {arch} is not supported; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        )
    if getattr(config, "use_sliding_window", False) or (
        getattr(config, "sliding_window", None) and arch != "MistralForCausalLM"
    ):
        raise ModelLoadError(f"{arch} with sliding-window attention is not supported")
    return arch


def _build(config: PretrainedConfig, dtype: torch.dtype) -> torch.nn.Module:
    arch = check_architecture(config)
    model_cls = getattr(transformers, arch)
    with torch.device("meta"):
        model = model_cls(config)
    model = model.to_empty(device="cpu").to(dtype)
    return model


def load_dummy(config: PretrainedConfig, dtype: torch.dtype, device: str, seed: int = 0) -> LoadedModel:
    """Random weights from a config: for benchmarks and tests that need no real model."""
    arch = check_architecture(config)
    torch.manual_seed(seed)
    with torch.device(device):
        model = getattr(transformers, arch)._from_config(config, dtype=dtype)
    model.eval()
    return LoadedModel(f"dummy-{config.model_type}", model, None, config, arch)


def _load_folder(path: Path, dtype: torch.dtype, device: str) -> LoadedModel:
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path} has no config.json; is it a Hugging Face model folder?")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}/config.json could not be read: {e}") from e
    arch = check_architecture(config)
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"{path} has no *.safetensors weights")
    try:
        model = getattr(transformers, arch).from_pretrained(path, dtype=dtype, device_map=device)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # transformers raises many kinds for corrupt files
        raise ModelLoadError(f"could not load the model in {path}: {type(e).__name__}: {e}") from e
    model.eval()
    return LoadedModel(path.name, model, tokenizer, config, arch)


def _load_gguf(path: Path, dtype: torch.dtype, device: str) -> LoadedModel:
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
        arch = check_architecture(config)
        # GGUF loading logs a progress bar per tensor; keep service logs readable.
        logging.getLogger("transformers").setLevel(logging.ERROR)
        # Passing the config saves from_pretrained parsing the file's metadata again (seconds each time).
        model = getattr(transformers, arch).from_pretrained(
            path.parent, gguf_file=path.name, config=config, dtype=dtype, device_map=device
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"could not load the GGUF file {path}: {type(e).__name__}: {e}") from e
    model.eval()
    return LoadedModel(path.stem, model, tokenizer, config, arch)


def load_model(source: str | Path | PretrainedConfig, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LoadedModel:
    """Load from a model folder, a .gguf file, or (given a config) with dummy weights."""
    if isinstance(source, PretrainedConfig):
        return load_dummy(source, dtype, device)
    path = Path(source)
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist; give a model folder or a .gguf file")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf; give a model folder or a .gguf file")
        return _load_gguf(path, dtype, device)
    return _load_folder(path, dtype, device)


def convert_gguf_to_folder(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF once into a safetensors folder that loads quickly."""
    loaded = _load_gguf(gguf, torch.float32, "cpu")
    # A model loaded from GGUF is not directly save_pretrained-able: rebuild it from config + weights.
    model = _build(loaded.config, torch.float32)
    model.load_state_dict(loaded.model.state_dict(), strict=True)
    model.tie_weights()
    model.config.architectures = [loaded.architecture]
    model.generation_config = loaded.model.generation_config
    target.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(target)
    loaded.tokenizer.save_pretrained(target)
