"""The Triton paged-attention kernel against plain causal attention, per sequence.

Without a GPU the kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1);
on a GPU the same tests run the compiled kernel.
"""

import pytest
import torch

from engine.attention_metadata import PackedMetadata
from engine.triton_attention import decode_partitions, paged_attention_packed

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK_SIZE = 4


def reference(q, k, v, scale):
    """q [n, heads, dim] at the last n positions of k, v [ctx, kv_heads, dim]; causal."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, 1).transpose(0, 1).double()
    v = v.repeat_interleave(group, 1).transpose(0, 1).double()
    scores = q.transpose(0, 1).double() @ k.transpose(1, 2) * scale
    n, ctx = q.shape[0], k.shape[1]
    allowed = torch.ones(n, ctx, dtype=torch.bool, device=q.device).tril(ctx - n)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(0, 1)


def build_batch(shapes, num_heads, num_kv_heads, head_dim, seed=0):
    """shapes: (query_len, context_len) per sequence; blocks handed out shuffled, as a real pool is."""
    gen = torch.Generator().manual_seed(seed)
    blocks_needed = [-(-ctx // BLOCK_SIZE) for _, ctx in shapes]
    num_blocks = sum(blocks_needed) + 3
    order = torch.randperm(num_blocks, generator=gen).tolist()
    cache_shape = (num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
    key_cache = torch.randn(cache_shape, generator=gen)
    value_cache = torch.randn(cache_shape, generator=gen)
    total = sum(q for q, _ in shapes)
    q = torch.randn(total, num_heads, head_dim, generator=gen)
    tables, starts, start = [], [], 0
    for need in blocks_needed:
        tables.append(order[:need] + [0] * (max(blocks_needed) - need))
        order = order[need:]
    for query_len, _ in shapes:
        starts.append(start)
        start += query_len

    def t(values):
        return torch.tensor(values, dtype=torch.int32, device=DEVICE)

    meta = PackedMetadata(
        slot_mapping=torch.empty(0, dtype=torch.long, device=DEVICE),
        query_start=t(starts),
        query_len=t([q for q, _ in shapes]),
        context_len=t([ctx for _, ctx in shapes]),
        block_tables=t(tables),
        max_query_len=max(q for q, _ in shapes),
    )
    return q.to(DEVICE), key_cache.to(DEVICE), value_cache.to(DEVICE), meta, tables, starts


def contiguous_context(cache, table, ctx):
    return cache[torch.tensor(table, device=cache.device)].flatten(0, 1)[:ctx]


@pytest.mark.parametrize(
    "num_heads, num_kv_heads, head_dim",
    [(4, 2, 16), (9, 3, 24), (4, 4, 32)],  # GQA; a group of 3 and a head size that is no power of two; MHA
)
def test_kernel_matches_causal_attention_for_mixed_sequences(num_heads, num_kv_heads, head_dim):
    # A whole prompt, a chunk after a cached prefix, decodes over contexts that end mid-block and
    # on a block boundary, a prompt longer than one key iteration, and a padding sequence (query_len 0).
    shapes = [(7, 7), (5, 13), (1, 1), (1, 9), (1, 8), (70, 70), (0, 0)]
    q, key_cache, value_cache, meta, tables, starts = build_batch(shapes, num_heads, num_kv_heads, head_dim)
    scale = head_dim**-0.5
    out = paged_attention_packed(q, key_cache, value_cache, meta, scale)
    for (query_len, ctx), table, start in zip(shapes, tables, starts):
        if query_len == 0:
            continue
        rows = slice(start, start + query_len)
        k = contiguous_context(key_cache, table, ctx)
        v = contiguous_context(value_cache, table, ctx)
        expected = reference(q[rows], k, v, scale)
        torch.testing.assert_close(out[rows].double(), expected, atol=1e-4, rtol=1e-4)


def test_decode_only_batch_uses_the_same_rule():
    shapes = [(1, 3), (1, 17), (1, 64), (1, 65)]
    q, key_cache, value_cache, meta, tables, starts = build_batch(shapes, 8, 2, 16, seed=1)
    out = paged_attention_packed(q, key_cache, value_cache, meta, 0.25)
    for (_, ctx), table, start in zip(shapes, tables, starts):
        k = contiguous_context(key_cache, table, ctx)
        v = contiguous_context(value_cache, table, ctx)
        torch.testing.assert_close(out[start : start + 1].double(), reference(q[start : start + 1], k, v, 0.25), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("num_heads, num_kv_heads", [(8, 2), (3, 3)])
def test_split_decodes_merge_to_the_same_attention(num_heads, num_kv_heads):
    """Contexts split into 64-key partitions: shorter than one, exactly one, one key into the next,
    several with a partial last one; and a padding sequence, which the merge leaves alone."""
    shapes = [(1, 3), (1, 64), (1, 65), (1, 200), (1, 130), (0, 0)]
    q, key_cache, value_cache, meta, tables, starts = build_batch(shapes, num_heads, num_kv_heads, 16, seed=3)
    width = meta.block_tables.shape[1] * BLOCK_SIZE
    assert decode_partitions(len(shapes), num_kv_heads, width, partition_keys=64) == (4, 64)  # the path under test
    out = paged_attention_packed(q, key_cache, value_cache, meta, 0.25, partition_keys=64)
    for (query_len, ctx), table, start in zip(shapes, tables, starts):
        if query_len == 0:
            continue
        k = contiguous_context(key_cache, table, ctx)
        v = contiguous_context(value_cache, table, ctx)
        torch.testing.assert_close(out[start : start + 1].double(), reference(q[start : start + 1], k, v, 0.25), atol=1e-4, rtol=1e-4)


def test_split_decodes_merge_more_partitions_than_the_merge_reads_at_once():
    shapes = [(1, 1100), (1, 70)]  # 18 partitions of 64 keys: two chunks of 16 for the merge
    q, key_cache, value_cache, meta, tables, starts = build_batch(shapes, 2, 1, 16, seed=4)
    assert decode_partitions(2, 1, meta.block_tables.shape[1] * BLOCK_SIZE, partition_keys=64)[0] == 18
    out = paged_attention_packed(q, key_cache, value_cache, meta, 0.25, partition_keys=64)
    for (_, ctx), table, start in zip(shapes, tables, starts):
        k = contiguous_context(key_cache, table, ctx)
        v = contiguous_context(value_cache, table, ctx)
        torch.testing.assert_close(out[start : start + 1].double(), reference(q[start : start + 1], k, v, 0.25), atol=1e-4, rtol=1e-4)


def test_only_small_decode_batches_with_long_contexts_are_split():
    assert decode_partitions(1, 8, 8192) == (16, 512)  # batch 1, 8 kv heads: 8 programs would idle the GPU
    assert decode_partitions(1, 8, 131072) == (64, 2048)  # at most 64 partitions: they grow instead
    assert decode_partitions(1, 8, 130000) == (64, 2048)  # in whole 64-key iterations
    assert decode_partitions(1, 8, 512) == (0, 0)  # one partition's worth: nothing to split
    assert decode_partitions(64, 8, 8192) == (0, 0)  # 512 (sequence, kv head) programs already fill it


def test_16_bit_inputs_take_the_16_bit_path_within_its_rounding():
    """float16 (the interpreter cannot do bfloat16 dots; the GPU test covers those): the softmax
    weights are rounded to the value dtype before the second dot, so the tolerance is float16's."""
    shapes = [(7, 7), (5, 13), (1, 9), (1, 64)]
    q, key_cache, value_cache, meta, tables, starts = build_batch(shapes, 4, 2, 16, seed=2)
    q, key_cache, value_cache = q.half(), key_cache.half(), value_cache.half()
    out = paged_attention_packed(q, key_cache, value_cache, meta, 0.25)
    assert out.dtype == torch.float16
    for (query_len, ctx), table, start in zip(shapes, tables, starts):
        rows = slice(start, start + query_len)
        k = contiguous_context(key_cache, table, ctx).float()
        v = contiguous_context(value_cache, table, ctx).float()
        torch.testing.assert_close(out[rows].double(), reference(q[rows].float(), k, v, 0.25), atol=2e-3, rtol=2e-3)


def test_blocks_past_2_31_cache_elements_are_addressed_in_64_bits():
    """A small model's cache on a large GPU has more than 2**31 elements per layer; block * stride
    in 32 bits wrapped to a negative offset (a crash, or another block's keys). torch.empty keeps
    the 4 GiB caches untouched except for the two blocks written (on CPU)."""
    heads, kv_heads, dim = 2, 1, 16
    per_block = BLOCK_SIZE * kv_heads * dim
    shape = ((1 << 31) // per_block + 4, BLOCK_SIZE, kv_heads, dim)
    key_cache = torch.empty(shape, dtype=torch.float16, device=DEVICE)
    value_cache = torch.empty(shape, dtype=torch.float16, device=DEVICE)
    table = [5, shape[0] - 2]  # the second block starts past 2**31 elements
    gen = torch.Generator().manual_seed(5)
    k = torch.randn(2, *shape[1:], generator=gen).half().to(DEVICE)
    v = torch.randn(2, *shape[1:], generator=gen).half().to(DEVICE)
    key_cache[table], value_cache[table] = k, v
    q = torch.randn(1, heads, dim, generator=gen).half().to(DEVICE)

    def t(values):
        return torch.tensor(values, dtype=torch.int32, device=DEVICE)

    ctx = 2 * BLOCK_SIZE
    meta = PackedMetadata(torch.empty(0, dtype=torch.long, device=DEVICE), t([0]), t([1]), t([ctx]), t([table]), 1)
    out = paged_attention_packed(q, key_cache, value_cache, meta, 0.25)
    expected = reference(q.float(), k.flatten(0, 1).float(), v.flatten(0, 1).float(), 0.25)
    torch.testing.assert_close(out.double(), expected, atol=2e-3, rtol=2e-3)
