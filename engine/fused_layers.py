"""Llama-family decoder layers rebuilt for the triton backend: fewer, larger kernels per layer.

fuse_layers swaps, in place, each layer's attention, MLP and RMSNorms for modules that hold the
same weights merged where one matrix product can do the work of several: q, k and v projections
become one qkv projection, gate and up one gate_up projection. With the kernels of
engine.fused_kernels a layer is then eleven launches (transformers' code: about forty):
  norm, qkv, rotary + KV write, attention, o_proj, add, norm, gate_up, silu * up, down, add.

The kernels run only for the triton backend's packed batches; any other call (the torch backend
the runner falls back to, or embeddings through SDPA) takes the path transformers' own layers
take, on the merged weights, so a fused model stays correct everywhere.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from engine.fused_kernels import rms_norm, rotary_and_write_kv, silu_and_mul
from engine.attention import Softmax
from engine.attention_metadata import PackedStep
from engine.triton_attention import paged_attention_layer

# Same layer structure as Llama: q/k/v/o projections (biases allowed), RoPE, a SiLU-gated MLP,
# RMSNorm as LlamaRMSNorm. Qwen3 (q/k norms), Gemma (1 + weight norms, GELU) and Phi-3 (already
# merged projections) keep transformers' layers.
FUSABLE_MODEL_TYPES = {"llama", "mistral", "qwen2"}


def _merged_linear(parts: list[nn.Linear]) -> nn.Linear:
    """One Linear whose output is the parts' outputs side by side."""
    first = parts[0]
    weight = torch.cat([p.weight for p in parts])
    merged = nn.Linear(first.in_features, weight.shape[0], bias=first.bias is not None, device="meta")
    merged.weight = nn.Parameter(weight, requires_grad=False)
    if first.bias is not None:
        merged.bias = nn.Parameter(torch.cat([p.bias for p in parts]), requires_grad=False)
    return merged


class FusedRMSNorm(nn.Module):
    """transformers' RMSNorm as one kernel; the module itself is the torch equivalent."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm
        self.use_kernels = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.use_kernels:
            return rms_norm(hidden_states, self.norm.weight, self.norm.variance_epsilon)
        return self.norm(hidden_states)


class FusedMLP(nn.Module):
    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.gate_up_proj = _merged_linear([mlp.gate_proj, mlp.up_proj])
        self.down_proj = mlp.down_proj
        self.use_kernels = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if self.use_kernels:
            return self.down_proj(silu_and_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class FusedAttention(nn.Module):
    def __init__(self, attention: nn.Module, config):
        super().__init__()
        self.config = config
        self.layer_idx = attention.layer_idx
        self.head_dim = attention.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.num_key_value_groups = attention.num_key_value_groups
        self.scaling = attention.scaling
        self.is_causal = True
        self.sliding_window = getattr(attention, "sliding_window", getattr(config, "sliding_window", None))
        self.qkv_proj = _merged_linear([attention.q_proj, attention.k_proj, attention.v_proj])
        self.o_proj = attention.o_proj
        self.use_kernels = True

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, past_key_values=None, **kwargs):
        qkv = self.qkv_proj(hidden_states)
        step = kwargs.get("attention_metadata")
        if self.use_kernels and isinstance(step, PackedStep):
            meta, spec, (key_cache, value_cache) = step.for_layer(self.layer_idx)
            cos, sin = position_embeddings
            q = rotary_and_write_kv(qkv[0], cos[0], sin[0], meta.slot_mapping, key_cache, value_cache,
                                    self.num_heads, self.num_kv_heads)
            out = paged_attention_layer(q, key_cache, value_cache, meta, spec, Softmax(self.scaling))
            return self.o_proj(out.view(hidden_states.shape[0], out.shape[0], -1)), None
        return self._unfused_forward(qkv, position_embeddings, attention_mask, past_key_values, **kwargs)

    def _unfused_forward(self, qkv, position_embeddings, attention_mask, past_key_values, **kwargs):
        """What transformers' Llama attention does after its three projections."""
        input_shape = qkv.shape[:-1]
        sizes = [self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.num_kv_heads * self.head_dim]
        query, key, value = (
            part.view(*input_shape, -1, self.head_dim).transpose(1, 2) for part in qkv.split(sizes, dim=-1)
        )
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)
        attention = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation]
        out, weights = attention(self, query, key, value, attention_mask, dropout=0.0, scaling=self.scaling,
                                 sliding_window=self.sliding_window, **kwargs)
        return self.o_proj(out.reshape(*input_shape, -1).contiguous()), weights


def can_fuse(model: nn.Module) -> bool:
    config = model.config
    return (
        config.model_type in FUSABLE_MODEL_TYPES
        and config.hidden_act == "silu"
        and not getattr(config, "mlp_bias", False)
        and (getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads) % 2 == 0
    )


@torch.no_grad()
def fuse_layers(model: nn.Module) -> bool:
    """Rebuild the model's decoder layers and final norm in place; False (and nothing changed) for
    an architecture these modules do not reproduce."""
    if not can_fuse(model):
        return False
    decoder = model.model
    for layer in decoder.layers:
        layer.self_attn = FusedAttention(layer.self_attn, model.config)
        layer.mlp = FusedMLP(layer.mlp)
        layer.input_layernorm = FusedRMSNorm(layer.input_layernorm)
        layer.post_attention_layernorm = FusedRMSNorm(layer.post_attention_layernorm)
    decoder.norm = FusedRMSNorm(decoder.norm)
    return True


def use_fused_kernels(model: nn.Module, on: bool) -> None:
    """Switch the fused modules between the Triton kernels and their torch equivalents."""
    for module in model.modules():
        if isinstance(module, (FusedRMSNorm, FusedMLP, FusedAttention)):
            module.use_kernels = on
