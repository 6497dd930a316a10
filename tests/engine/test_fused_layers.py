"""fuse_layers rebuilds Llama-family layers without changing what the model computes.

The model is run here through transformers' own forward with SDPA (no paged cache): the fused
attention then takes its unfused path on the merged weights, and the norms and the MLP run their
Triton kernels (interpreted without a GPU) or, switched off, their torch equivalents. The paged,
fully fused path is checked through the engine in test_triton_backend.py.
"""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GemmaConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

from engine.fused_layers import FusedAttention, FusedMLP, FusedRMSNorm, fuse_layers, use_fused_kernels

SHAPE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128)


def build(config) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():
        for p in model.parameters():  # biases and norm weights too: zeros and ones would hide mistakes
            p.copy_(torch.randn(p.shape) * 0.2)
    return model


@torch.inference_mode()
def logits(model, input_ids) -> torch.Tensor:
    return model(input_ids=input_ids, use_cache=False).logits


@pytest.mark.parametrize("config", [
    LlamaConfig(**SHAPE),
    Qwen2Config(**SHAPE),  # q/k/v biases
    MistralConfig(**SHAPE, head_dim=24),  # head_dim not hidden / heads
], ids=["llama", "qwen2", "mistral"])
def test_fused_model_computes_what_the_original_computes(config):
    original = build(config)
    fused = copy.deepcopy(original)
    input_ids = torch.randint(0, SHAPE["vocab_size"], (1, 11), generator=torch.Generator().manual_seed(1))
    expected = logits(original, input_ids)

    assert fuse_layers(fused)

    layer = fused.model.layers[0]
    assert isinstance(layer.self_attn, FusedAttention) and isinstance(layer.mlp, FusedMLP)
    assert isinstance(fused.model.norm, FusedRMSNorm) and isinstance(layer.input_layernorm, FusedRMSNorm)
    # The weights are merged, not copied beside the originals.
    assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in original.parameters())
    assert not hasattr(layer.self_attn, "q_proj") and not hasattr(layer.mlp, "gate_proj")
    torch.testing.assert_close(logits(fused, input_ids), expected, rtol=1e-5, atol=1e-5)
    use_fused_kernels(fused, False)
    torch.testing.assert_close(logits(fused, input_ids), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", [
    Qwen3Config(**SHAPE),  # q and k norms
    GemmaConfig(**SHAPE, head_dim=16),  # (1 + weight) norms, GELU
    LlamaConfig(**SHAPE, mlp_bias=True),
], ids=["qwen3", "gemma", "llama-mlp-bias"])
def test_layers_the_fused_modules_do_not_reproduce_are_left_alone(config):
    model = build(config)
    before = [type(m) for m in model.modules()]
    assert not fuse_layers(model)
    assert [type(m) for m in model.modules()] == before
