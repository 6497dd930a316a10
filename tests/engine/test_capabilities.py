"""Which models the engine runs is decided by their layers; a refusal names the first missing feature and its layer."""

import logging
import re

import pytest
import torch
from transformers import AutoConfig, Gemma3TextConfig, GptOssConfig

from engine.capabilities import check_config, config_from_dict
from engine.errors import ModelLoadError
from engine.kv_cache_spec import AttentionSpec, layout_from_config
from engine.loader import load_dummy
from tests.engine.architectures import build

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2)


def small_config(model_type: str, **extra):
    config = AutoConfig.for_model(model_type, **SMALL, **extra)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]
    return config


@pytest.mark.parametrize("model_type, refusal", [
    ("minimax", "MiniMaxForCausalLM: layer 1 is a linear-attention (Lightning) layer"),
    ("mamba", "MambaForCausalLM: layer 0 is a Mamba layer"),
    ("jamba", "JambaForCausalLM: layer 0 is a Mamba layer"),
    ("recurrent_gemma", "RecurrentGemmaForCausalLM: layer 0 is a recurrent (RG-LRU) layer"),
    ("bert", "BertLMHeadModel: layer 0 is bidirectional attention (an encoder's)"),
    ("mpt", "MptForCausalLM: layer 0 is attention (MptAttention) that does not go through transformers' attention "
            "interface"),
])
def test_layers_the_engine_cannot_run_are_refused_by_name_and_layer(model_type, refusal):
    with pytest.raises(ModelLoadError, match="^" + re.escape(f"{refusal}, which this engine does not run yet") + "$"):
        check_config(small_config(model_type))


@pytest.mark.parametrize("model_type, states", [
    ("qwen3_next", "3 Gated DeltaNet layers"),  # 3 linear-attention layers, then full attention
    ("qwen3_5_moe_text", "3 Gated DeltaNet layers"),
    ("nemotron_h", "1 Mamba-2 layer"),  # the class's default pattern: Mamba-2, MoE, attention, MLP
    ("granitemoehybrid", "4 Mamba-2 layers"),
    ("falcon_h1", "4 Mamba-2 layers"),  # attention and a Mamba-2 mixer side by side in each layer
    ("lfm2", "3 short convolution layers"),
])
def test_hybrid_models_are_admitted_with_the_state_their_recurrent_layers_keep(model_type, states):
    extra = {"layer_types": ["conv", "conv", "full_attention", "conv"]} if model_type == "lfm2" else {}  # as LFM2's
    architecture = check_config(small_config(model_type, **extra))
    assert architecture.states.describe() == states
    assert all(spec.conv_kernel > 1 for _, spec in architecture.states.layers)
    assert all(bool(spec.recurrent_shape) == (model_type != "lfm2") for _, spec in architecture.states.layers)


def test_models_that_are_not_causal_lms_or_lack_a_text_class_are_refused():
    with pytest.raises(ModelLoadError, match="T5ForConditionalGeneration is not a decoder-only causal language model"):
        check_config(config_from_dict({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}))
    with pytest.raises(ModelLoadError, match="MllamaForConditionalGeneration: its language model .mllama_text_model. has "
                                             "neither a causal-LM nor a text model class"):
        check_config(config_from_dict({"model_type": "mllama", "architectures": ["MllamaForConditionalGeneration"]}))
    with pytest.raises(ModelLoadError, match="model_type 'no-such-model' is not one transformers"):
        config_from_dict({"model_type": "no-such-model"})


def test_attention_that_drops_the_engines_metadata_is_refused_at_load():
    """StableLM's attention does not pass keyword arguments on: the probe's marker never reaches it."""
    with pytest.raises(ModelLoadError, match="StableLmForCausalLM: layer 0 is attention that does not hand the "
                                             "engine's per-step metadata to the attention function"):
        load_dummy(small_config("stablelm"), torch.float32, "cpu")


def test_latent_attention_is_refused_at_load_naming_the_sizes():
    """DeepSeek's multi-head latent attention: keys of 24 (16 + 8 RoPE) and values of 16 per head."""
    config = AutoConfig.for_model("deepseek_v3", **{**SMALL, "num_key_value_heads": 4}, moe_intermediate_size=32,
                                  q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                                  v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1)
    config.architectures = ["DeepseekV3ForCausalLM"]
    with pytest.raises(ModelLoadError, match=re.escape("DeepseekV3ForCausalLM: layer 0 is attention whose keys (4 heads "
                                                       "of 24) and values (4 heads of 16) differ in size")):
        load_dummy(config, torch.float32, "cpu")


def test_the_probe_reads_each_layers_window_sinks_and_experts():
    config = GptOssConfig(**SMALL, sliding_window=8, num_local_experts=4, num_experts_per_tok=2, head_dim=16)
    loaded = load_dummy(config, torch.float32, "cpu")
    assert [g.spec for g in loaded.layout.groups] == [AttentionSpec(), AttentionSpec(sliding_window=8)]
    assert [g.layers for g in loaded.layout.groups] == [(1, 3), (0, 2)]  # gpt-oss alternates, sliding first
    assert loaded.attention_features == ["sinks", "sliding"]
    assert loaded.experts == "grouped_mm"
    assert (loaded.layout.kv_heads, loaded.layout.head_dim) == (2, 16)


def test_the_probe_of_a_hybrid_logs_no_kernel_fallback():
    """transformers warns (once a process) that its recurrent layers fall back to PyTorch for want of causal-conv1d
    or fla. The probe runs them; the engine never does (engine.recurrent): an operator is not told to install them."""
    logged = []
    handler = logging.Handler()
    handler.emit = logged.append
    logger = logging.getLogger("transformers.integrations.hub_kernels")
    logging.Logger.warning_once.cache_clear()  # transformers' memory of what it warned about
    logger.addHandler(handler)
    try:
        load_dummy(build("qwen3_5").config, torch.float32, "cpu")
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in logged] == []


def test_gemma3_27b_layout_groups_its_62_layers_in_tens():
    """Gemma 3 27B: 52 sliding (window 1024) and 10 full layers -> one full group and six sliding groups
    of ten (the last of two), all drawing from one pool."""
    config = Gemma3TextConfig(num_hidden_layers=62, sliding_window=1024, num_key_value_heads=16, head_dim=128)
    layout = layout_from_config(config)
    assert layout.describe() == "1 full + 6 sliding window 1024 groups of 10 layers"
    assert sorted(layer for g in layout.groups for layer in g.layers) == list(range(62))
    assert layout.block_bytes(16, 2) == 2 * 10 * 16 * 128 * 16 * 2
