"""The fused Triton kernels against the transformers code they replace.

float16 must match transformers bit for bit (the kernels round where it rounds), silu to the last
place (its exp is not torch's); float32 to float32 precision. bfloat16 is not compared here: Triton's interpreter truncates when it casts to
bfloat16 (a GPU rounds to nearest), so the interpreter cannot say what the GPU computes.
Without a GPU the kernels run in Triton's interpreter (tests/conftest.py).
"""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from engine.fused_kernels import rms_norm, rotary_and_write_kv, silu_and_mul

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def assert_matches(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    if ours.dtype == torch.float16:
        assert torch.equal(ours, theirs)
    else:
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def randn(*shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("hidden", [96, 128])  # padded to a power of two, and not
def test_rms_norm_is_llama_rms_norm(dtype, hidden):
    norm = LlamaRMSNorm(hidden, eps=1e-5).to(DEVICE, dtype)
    with torch.no_grad():
        norm.weight.copy_(randn(hidden, seed=1))
    x = randn(1, 7, hidden, dtype=dtype) * 3
    out = rms_norm(x, norm.weight, norm.variance_epsilon)
    assert out.shape == x.shape
    assert_matches(out, norm(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("width", [40, 1500])  # one masked program per row; several programs per row
def test_silu_and_mul_is_silu_of_gate_times_up(dtype, width):
    gate_up = randn(1, 5, 2 * width, dtype=dtype) * 4
    gate, up = gate_up[..., :width], gate_up[..., width:]
    out = silu_and_mul(gate_up)
    assert out.shape == (1, 5, width)
    expected = F.silu(gate) * up
    if dtype == torch.float16:
        # one unit in silu's last place, scaled by up: two in the product's
        torch.testing.assert_close(out, expected, rtol=2**-9, atol=2**-14)
        assert (out != expected).float().mean() < 0.02
    else:
        assert_matches(out, expected)


def rope(positions: list[int], head_dim: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, head_dim] laid out as transformers' rotary embedding returns them."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    freqs = torch.tensor(positions).float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(DEVICE, dtype), emb.sin().to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_heads, num_kv_heads, head_dim", [(6, 2, 24), (4, 4, 32), (3, 1, 16)])
def test_rotary_and_write_kv_rotates_queries_in_place_and_writes_keys_and_values_to_their_slots(
    dtype, num_heads, num_kv_heads, head_dim
):
    positions = [0, 5, 17, 3, 40]
    slots = torch.tensor([9, 2, 30, 14, 21], device=DEVICE)  # scattered, as block tables make them
    num_tokens = len(positions)
    qkv = randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype)
    q, k, v = (part.view(num_tokens, -1, head_dim) for part in qkv.clone().split(
        [num_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1))
    cos, sin = rope(positions, head_dim, dtype)
    # transformers' layout: [batch, heads, tokens, dim], cos/sin [batch, tokens, dim]
    q_expected, k_expected = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None])
    cache_shape = (8, 4, num_kv_heads, head_dim)  # 32 slots
    key_cache = torch.full(cache_shape, 7.0, dtype=dtype, device=DEVICE)
    value_cache = torch.full(cache_shape, 7.0, dtype=dtype, device=DEVICE)

    queries = rotary_and_write_kv(qkv, cos, sin, slots, key_cache, value_cache, num_heads, num_kv_heads)

    assert queries.data_ptr() == qkv.data_ptr()  # a view of the projection's output, rotated in place
    assert_matches(queries, q_expected[0].transpose(0, 1))
    key_slots = key_cache.view(-1, num_kv_heads, head_dim)
    value_slots = value_cache.view(-1, num_kv_heads, head_dim)
    assert_matches(key_slots[slots], k_expected[0].transpose(0, 1))
    assert torch.equal(value_slots[slots], v)
    untouched = torch.ones(32, dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    assert (key_slots[untouched] == 7).all() and (value_slots[untouched] == 7).all()
    assert torch.equal(qkv[:, num_heads * head_dim:], torch.cat([k, v], dim=1).flatten(1))  # keys, values left as they were


def test_rotary_and_write_kv_refuses_an_odd_head_dim():
    qkv = torch.zeros(1, 3 * 5)
    cache = torch.zeros(1, 4, 1, 5)
    with pytest.raises(ValueError, match="even head_dim"):
        rotary_and_write_kv(qkv, torch.zeros(1, 5), torch.zeros(1, 5), torch.zeros(1, dtype=torch.long), cache, cache, 1, 1)
