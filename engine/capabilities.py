"""Which models the engine runs: found by walking the model's layers, not from a list of architectures.

A model runs when it is a decoder-only causal LM of transformers (or the language model of a
multimodal checkpoint) whose every decoder layer mixes tokens by attention through transformers'
attention interface, with the variants the paged attention implements (full, sliding window, chunked,
sinks, softcap, any scaling, with or without RoPE), or by a recurrent mixer the engine runs on state
slots (engine.recurrent: Gated DeltaNet, Mamba-2, short convolutions), or both (Falcon-H1), or not at
all (Nemotron-H's MLP-only layers), followed by a per-token MLP or mixture of experts. Anything else is
refused naming the first missing feature and its layer, e.g. "MiniMaxForCausalLM: layer 1 is a
linear-attention (Lightning) layer, which this engine does not run yet".

Two checks: `check_config` from the config alone (the model built on the meta device: no weights,
no memory), at import and before loading, which also finds what the recurrent layers keep per
sequence (engine.state_spec); `probe_attention` once the weights are loaded, running
two tokens through the model with a recording attention function, so that what each layer really
passes to attention (its window, sinks, softcap) decides its KV cache spec.
"""

import contextlib
import inspect
import logging
from dataclasses import dataclass, replace

import torch
import transformers
from torch import nn
from transformers import AttentionInterface, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL_LM_NAMES
from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES as BASE_MODEL_NAMES

from engine.errors import ModelLoadError
from engine.kv_cache_spec import (CHUNKED_ATTENTION, FULL_ATTENTION, HYBRID, SLIDING_ATTENTION, AttentionSpec,
                                  KVCacheLayout, layer_specs_from_config)
from engine.recurrent.mixers import FORWARDS, state_layout
from engine.state_spec import StateLayout
from engine.text_model import text_causal_lm

PROBE_ATTENTION = "appliance_probe"
ATTENTION_LAYER_TYPES = {FULL_ATTENTION, SLIDING_ATTENTION, CHUNKED_ATTENTION, HYBRID}
PER_TOKEN_LAYER_TYPES = {"mlp", "moe"}  # Nemotron-H's layers that mix no tokens
# What other layer_types values mean, for the refusal, where the layer's modules do not say more.
LAYER_TYPE_WORDS = {
    "linear_attention": "a linear-attention or state-space layer",
    "mamba": "a Mamba layer",
    "conv": "a short-convolution layer",
}
# Modules that are not attention and that the engine does not run, by class name (the first that
# matches; the recurrent mixers of engine.recurrent are not looked up here), and what they are.
RECURRENT_MODULES = (
    ("GatedDeltaNet", "a linear-attention (Gated DeltaNet) layer"),
    ("LightningAttention", "a linear-attention (Lightning) layer"),
    ("LinearAttention", "a linear-attention layer"),
    ("Mamba2", "a Mamba-2 layer"),
    ("Mamba", "a Mamba layer"),
    ("ShortConv", "a short-convolution layer"),
    ("RecurrentBlock", "a recurrent (RG-LRU) layer"),
    ("CrossAttention", "a cross-attention layer"),
)
# Keywords transformers' model code passes to attention that the paged attention honours or that do
# not change attention (the engine's own metadata among them).
HONOURED_KEYWORDS = {
    "sliding_window", "s_aux", "softcap", "attention_metadata", "position_ids", "use_cache", "cache_position",
    "output_attentions", "output_router_logits", "output_hidden_states", "return_dict", "is_causal",
}


@dataclass(frozen=True)
class Architecture:
    """The class the engine builds for a checkpoint, and what the checkpoint declared."""

    declared: str  # config.architectures[0] (or the causal-LM class of its model type)
    class_name: str  # what is built: the same, or the causal LM of a multimodal checkpoint's language model
    text_config: PretrainedConfig  # the config of what is built
    over_text_model: bool = False  # class_name is a text model, built under an LM head (engine.text_model)
    states: StateLayout = StateLayout()  # what its recurrent layers keep per sequence (none: a transformer)

    @property
    def text_only(self) -> bool:
        """A multimodal checkpoint whose language model alone is loaded."""
        return self.declared != self.class_name

    def model_class(self) -> type:
        return text_causal_lm(self.class_name) if self.over_text_model else getattr(transformers, self.class_name)


def _causal_class(model_type: str) -> str | None:
    name = CAUSAL_LM_NAMES.get(model_type)
    return name if name and "ConditionalGeneration" not in name else None


def resolve_architecture(config: PretrainedConfig) -> Architecture:
    """The causal-LM class for a config: its own, or its language model's for a multimodal checkpoint."""
    architectures = getattr(config, "architectures", None) or []
    # GGUF configs carry no architectures field; the model type names the causal-LM class.
    declared = architectures[0] if architectures else CAUSAL_LM_NAMES.get(config.model_type, config.model_type)
    text_config = config.get_text_config()
    if text_config is not config:
        # The multimodal class ties (or not) its language model's head as its own config says.
        text_config.tie_word_embeddings = getattr(config, "tie_word_embeddings", text_config.tie_word_embeddings)
        text_class = _causal_class(text_config.model_type)
        if text_class is not None:
            return Architecture(declared, text_class, text_config)
        text_model = BASE_MODEL_NAMES.get(text_config.model_type)
        if text_model is None or not hasattr(transformers, text_model):
            raise ModelLoadError(f"{declared}: its language model ({text_config.model_type}) has neither a causal-LM "
                                 "nor a text model class in transformers, which this engine needs to serve its text")
        return Architecture(declared, text_model, text_config, over_text_model=True)
    if declared in CAUSAL_LM_NAMES.values() and hasattr(transformers, declared):
        if not isinstance(config, getattr(transformers, declared).config_class):
            raise ModelLoadError(f"{declared} does not go with its config's model type {config.model_type!r}; "
                                 "the config.json is inconsistent")
        return Architecture(declared, declared, config)
    raise ModelLoadError(f"{declared} is not a decoder-only causal language model (text generation) of transformers "
                         f"{transformers.__version__}; the engine serves those")


def refuse(arch: str, layer: int, what: str) -> ModelLoadError:
    return ModelLoadError(f"{arch}: layer {layer} is {what}, which this engine does not run yet")


def config_from_dict(config: dict) -> PretrainedConfig:
    """A config.json's contents as transformers' config object of its model type."""
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise ModelLoadError(f"config.json's model_type {model_type!r} is not one transformers "
                             f"{transformers.__version__} knows" if model_type else "config.json names no model_type")
    # As transformers reads a config.json: infinities are saved as {"__float__": "Infinity"} (Mamba-2's time_step_limit).
    try:
        return CONFIG_MAPPING[model_type].from_dict(PretrainedConfig._decode_special_floats(config))
    except (TypeError, ValueError) as e:  # the config class's own validation
        raise ModelLoadError(f"config.json is not a valid {model_type} config: {e}") from e


def check_config(config: PretrainedConfig) -> Architecture:
    """Whether the engine can run this model, from its config alone; raises naming the first missing
    feature and its layer."""
    arch = resolve_architecture(config)
    text = arch.text_config
    layer_types = getattr(text, "layer_types", None) or []
    with torch.device("meta"):
        model = arch.model_class()._from_config(text)
    layers = decoder_layers(model, arch.declared)
    for i, layer in enumerate(layers):
        _check_layer(arch.declared, i, layer, layer_types[i] if i < len(layer_types) else FULL_ATTENTION)
    return replace(arch, states=state_layout(layers))


def decoder_layers(model: nn.Module, arch: str) -> nn.ModuleList:
    """The model's decoder layers: the first list of as many modules as the config has layers
    (model.layers for most, transformer.h for GPT-2)."""
    count = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ModelLoadError(f"{arch}: no list of its {count} decoder layers was found in the model")


def _check_layer(arch: str, index: int, layer: nn.Module, layer_type: str) -> None:
    attention, recurrent = None, None
    for module in layer.modules():
        name = type(module).__name__
        if name in FORWARDS:
            recurrent = module
            continue
        for pattern, what in RECURRENT_MODULES:
            if pattern in name:
                raise refuse(arch, index, what)
        if attention is None and "Attention" in name and hasattr(module, "layer_idx"):
            attention = module
    if layer_type not in ATTENTION_LAYER_TYPES:
        if recurrent is None and layer_type not in PER_TOKEN_LAYER_TYPES:
            raise refuse(arch, index, LAYER_TYPE_WORDS.get(layer_type, f"a {layer_type!r} layer"))
        return
    if attention is None:
        raise refuse(arch, index, "a layer without an attention module the engine recognizes")
    if getattr(attention, "is_causal", True) is False:
        raise refuse(arch, index, "bidirectional attention (an encoder's)")
    source = inspect.getsource(type(attention).forward)
    if "ALL_ATTENTION_FUNCTIONS" not in source and "attention_interface" not in source:
        raise refuse(arch, index, f"attention ({type(attention).__name__}) that does not go through transformers' "
                                  "attention interface")


@dataclass
class AttentionCall:
    """What one layer passed to attention during the probe."""

    scaling: float | None
    keywords: dict
    key_shape: tuple[int, ...]  # [1, kv_heads, T, head_dim]
    value_shape: tuple[int, ...]


_calls: dict[int, AttentionCall] = {}  # filled by one probe at a time (loads run one at a time per process)


def _recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    _calls[module.layer_idx] = AttentionCall(scaling, {k: v for k, v in kwargs.items() if v is not None and v is not False},
                                             tuple(key.shape), tuple(value.shape))
    group = query.shape[1] // key.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(group, 1), value.repeat_interleave(group, 1), is_causal=True, scale=scaling)
    return out.transpose(1, 2), None


AttentionInterface.register(PROBE_ATTENTION, _recording_attention)


@contextlib.contextmanager
def _kernel_fallbacks_unlogged():
    """The probe runs transformers' own recurrent layers, which warn (once) that they fall back to PyTorch for want
    of causal-conv1d or fla: misleading, since the engine runs them with its own (engine.recurrent)."""
    logger = logging.getLogger("transformers.integrations.hub_kernels")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@torch.inference_mode()
def probe_attention(model: nn.Module, arch: str, device: str) -> tuple[KVCacheLayout, list[str]]:
    """Run two tokens through the loaded model, recording what each layer passes to attention: the KV
    cache layout (each layer's window as the model code passes it) and the attention features in use."""
    config = model.config
    static = layer_specs_from_config(config)
    _calls.clear()
    previous = model.config._attn_implementation
    model.set_attn_implementation(PROBE_ATTENTION)
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)
    try:  # the engine's per-step metadata must reach every layer's attention function, as the probe's marker does
        with _kernel_fallbacks_unlogged():
            model(input_ids=ids, position_ids=torch.arange(2, device=device)[None], use_cache=False,
                  attention_metadata=PROBE_ATTENTION)
    except Exception as e:  # the model's own code failed: it cannot run packed as the engine runs it
        raise ModelLoadError(f"{arch}: a two-token test forward failed ({type(e).__name__}: {e})") from e
    finally:
        model.set_attn_implementation(previous)
    calls = dict(_calls)
    _calls.clear()
    if sorted(calls) != sorted(static):
        raise ModelLoadError(f"{arch}: attention ran in layers {sorted(calls)}, but its config describes attention "
                             f"layers {sorted(static)}; the engine cannot tell which KV cache each layer needs")
    specs, features = {}, set()
    first = calls[min(calls)]
    kv_heads, head_dim = first.key_shape[1], first.key_shape[3]
    for layer, call in sorted(calls.items()):
        unknown = sorted(set(call.keywords) - HONOURED_KEYWORDS)
        if unknown:
            raise refuse(arch, layer, f"attention that asks for {', '.join(unknown)}")
        if call.keywords.get("attention_metadata") != PROBE_ATTENTION:
            raise refuse(arch, layer, "attention that does not hand the engine's per-step metadata to the attention "
                                      "function (its forward drops keyword arguments)")
        keys, values = (call.key_shape[1], call.key_shape[3]), (call.value_shape[1], call.value_shape[3])
        if keys != values:
            raise refuse(arch, layer, f"attention whose keys ({keys[0]} heads of {keys[1]}) and values ({values[0]} "
                                      f"heads of {values[1]}) differ in size (latent attention)")
        if keys != (kv_heads, head_dim):
            raise refuse(arch, layer, f"attention whose keys ({keys[0]} heads of {keys[1]}) differ from layer "
                                      f"{min(calls)}'s ({kv_heads} heads of {head_dim})")
        window = call.keywords.get("sliding_window")
        specs[layer] = AttentionSpec(sliding_window=window) if window is not None else static[layer]
        features |= _features(call, specs[layer], head_dim)
    return KVCacheLayout.from_specs(specs, kv_heads, head_dim), sorted(features)


def _features(call: AttentionCall, spec: AttentionSpec, head_dim: int) -> set[str]:
    features = {spec.describe().split(" ")[0]} if not spec.is_full else set()
    if "s_aux" in call.keywords:
        features.add("sinks")
    if "softcap" in call.keywords:
        features.add("softcap")
    if call.scaling is not None and abs(call.scaling - head_dim ** -0.5) > 1e-6:
        features.add("scaling")
    return features
