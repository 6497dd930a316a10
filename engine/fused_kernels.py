"""Triton kernels that do in one launch what transformers' Llama code does in several (the CUDA path).

A decode step is bound by reading the weights, but transformers' decoder layer also launches some
forty small kernels (RMSNorm alone is seven), and at batch 1 those launches cost as much as the
weights. These kernels each replace a run of them, with the same arithmetic and roundings:
- rms_norm: RMSNorm of each row, as LlamaRMSNorm (float32 statistics, weight applied in the input dtype);
- silu_and_mul: silu(gate) * up over the merged gate/up projection's output;
- rotary_and_write_kv: RoPE on the queries (in place) and keys of the merged q/k/v projection's
  output, with the rotated keys and the values written straight into the paged KV cache.
Products of two 16-bit numbers are exact in float32, so rounding where transformers rounds gives
its results bit for bit (exp in silu aside, which may differ in the last place).

Like engine.triton_attention they run on CUDA, and on CPU only under TRITON_INTERPRET=1.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, weight_ptr, out_ptr, stride_x, stride_out, eps, HIDDEN: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    valid = cols < HIDDEN
    x = tl.load(x_ptr + row * stride_x + cols, mask=valid, other=0.0).to(tl.float32)
    variance = tl.sum(x * x, 0) / HIDDEN
    normed = (x * tl.rsqrt(variance + eps)).to(out_ptr.dtype.element_ty)
    weight = tl.load(weight_ptr + cols, mask=valid, other=0.0)
    out = weight.to(tl.float32) * normed.to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, out.to(out_ptr.dtype.element_ty), mask=valid)


def rms_norm_constants(hidden: int) -> dict:
    """Launch constants: a program normalises one whole row."""
    block = triton.next_power_of_2(hidden)
    return dict(HIDDEN=hidden, BLOCK=block, num_warps=min(16, max(1, block // 512)))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., hidden] -> RMSNorm(x) * weight, in x's dtype."""
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(rows)
    _rms_norm_kernel[(rows.shape[0],)](
        rows, weight, out, rows.stride(0), out.stride(0), eps, **rms_norm_constants(rows.shape[1]),
    )
    return out.view(x.shape)


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, WIDTH: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = cols < WIDTH
    gate = tl.load(x_ptr + row * stride_x + cols, mask=valid, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + WIDTH + cols, mask=valid, other=0.0).to(tl.float32)
    # As torch's silu (x / (1 + e^-x)), rounded to the input dtype before the product as transformers does.
    activated = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * stride_out + cols, (activated * up).to(out_ptr.dtype.element_ty), mask=valid)


def silu_and_mul_constants(width: int) -> dict:
    return dict(WIDTH=width, BLOCK=min(1024, triton.next_power_of_2(width)))


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2 * width] (gate then up) -> silu(gate) * up [..., width]."""
    rows = x.reshape(-1, x.shape[-1])
    width = rows.shape[1] // 2
    out = torch.empty(rows.shape[0], width, dtype=x.dtype, device=x.device)
    constants = silu_and_mul_constants(width)
    _silu_and_mul_kernel[(rows.shape[0], triton.cdiv(width, constants["BLOCK"]))](
        rows, out, rows.stride(0), out.stride(0), **constants,
    )
    return out.view(*x.shape[:-1], width)


@triton.jit
def _rounded(x, dtype):
    return x.to(dtype).to(tl.float32)


@triton.jit
def _rotate(x_ptr, x_offsets, cos_first, sin_first, cos_second, sin_second, mask, HALF: tl.constexpr):
    """The two halves of each head at x_offsets (first half) rotated as transformers' apply_rotary_pos_emb
    does it, rounding each product and sum to the input dtype where it does: (x * cos) + (rotate_half(x) * sin)."""
    dtype = x_ptr.dtype.element_ty
    x1 = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + x_offsets + HALF, mask=mask, other=0.0).to(tl.float32)
    first = _rounded(x1 * cos_first, dtype) + _rounded(-x2 * sin_first, dtype)
    second = _rounded(x2 * cos_second, dtype) + _rounded(x1 * sin_second, dtype)
    return first, second


@triton.jit
def _rotary_and_write_kv_kernel(
    qkv_ptr, cos_ptr, sin_ptr, slots_ptr, k_cache_ptr, v_cache_ptr,
    stride_qkv, stride_cos, stride_sin, stride_cache_slot, stride_cache_head,
    NUM_HEADS: tl.constexpr,
    NUM_KV_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEADS_PAD: tl.constexpr,  # the larger head count, rounded up to a power of two
    HALF_PAD: tl.constexpr,  # HEAD_DIM // 2 rounded up to a power of two
):
    token = tl.program_id(0)
    HALF: tl.constexpr = HEAD_DIM // 2
    heads = tl.arange(0, HEADS_PAD)
    dims = tl.arange(0, HALF_PAD)
    dim_valid = dims < HALF
    row = qkv_ptr + token * stride_qkv
    cos_first = tl.load(cos_ptr + token * stride_cos + dims, mask=dim_valid, other=0.0).to(tl.float32)[None, :]
    cos_second = tl.load(cos_ptr + token * stride_cos + HALF + dims, mask=dim_valid, other=0.0).to(tl.float32)[None, :]
    sin_first = tl.load(sin_ptr + token * stride_sin + dims, mask=dim_valid, other=0.0).to(tl.float32)[None, :]
    sin_second = tl.load(sin_ptr + token * stride_sin + HALF + dims, mask=dim_valid, other=0.0).to(tl.float32)[None, :]
    head_offsets = heads[:, None] * HEAD_DIM + dims[None, :]

    q_mask = (heads < NUM_HEADS)[:, None] & dim_valid[None, :]
    q1, q2 = _rotate(row, head_offsets, cos_first, sin_first, cos_second, sin_second, q_mask, HALF)
    tl.store(row + head_offsets, q1.to(qkv_ptr.dtype.element_ty), mask=q_mask)
    tl.store(row + head_offsets + HALF, q2.to(qkv_ptr.dtype.element_ty), mask=q_mask)

    kv_mask = (heads < NUM_KV_HEADS)[:, None] & dim_valid[None, :]
    k_offsets = NUM_HEADS * HEAD_DIM + head_offsets
    k1, k2 = _rotate(row, k_offsets, cos_first, sin_first, cos_second, sin_second, kv_mask, HALF)
    slot = tl.load(slots_ptr + token)
    cache_offsets = slot * stride_cache_slot + heads[:, None] * stride_cache_head + dims[None, :]
    tl.store(k_cache_ptr + cache_offsets, k1.to(k_cache_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(k_cache_ptr + cache_offsets + HALF, k2.to(k_cache_ptr.dtype.element_ty), mask=kv_mask)
    v_offsets = (NUM_HEADS + NUM_KV_HEADS) * HEAD_DIM + head_offsets
    v1 = tl.load(row + v_offsets, mask=kv_mask, other=0.0)
    v2 = tl.load(row + v_offsets + HALF, mask=kv_mask, other=0.0)
    tl.store(v_cache_ptr + cache_offsets, v1.to(v_cache_ptr.dtype.element_ty), mask=kv_mask)
    tl.store(v_cache_ptr + cache_offsets + HALF, v2.to(v_cache_ptr.dtype.element_ty), mask=kv_mask)


def rotary_constants(num_heads: int, num_kv_heads: int, head_dim: int) -> dict:
    return dict(
        NUM_HEADS=num_heads,
        NUM_KV_HEADS=num_kv_heads,
        HEAD_DIM=head_dim,
        HEADS_PAD=triton.next_power_of_2(max(num_heads, num_kv_heads)),
        HALF_PAD=triton.next_power_of_2(head_dim // 2),
    )


def rotary_and_write_kv(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot_mapping: torch.Tensor,
    key_cache: torch.Tensor, value_cache: torch.Tensor, num_heads: int, num_kv_heads: int,
) -> torch.Tensor:
    """qkv [T, (heads + 2 * kv_heads) * head_dim], cos and sin [T, head_dim]: rotates the queries in
    place, writes the rotated keys and the values to their slots; returns the queries [T, heads, head_dim]."""
    num_tokens = qkv.shape[0]
    head_dim = key_cache.shape[-1]
    if head_dim % 2 or qkv.stride(1) != 1 or cos.stride(1) != 1 or sin.stride(1) != 1:
        raise ValueError("rotary_and_write_kv needs an even head_dim and rows contiguous in their last dimension")
    if not key_cache.is_contiguous() or value_cache.stride() != key_cache.stride():
        raise ValueError("rotary_and_write_kv needs contiguous key and value caches of one layout (slot = block * block_size + offset)")
    _rotary_and_write_kv_kernel[(num_tokens,)](
        qkv, cos, sin, slot_mapping, key_cache, value_cache,
        qkv.stride(0), cos.stride(0), sin.stride(0), key_cache.stride(1), key_cache.stride(2),
        **rotary_constants(num_heads, num_kv_heads, head_dim),
    )
    return qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
