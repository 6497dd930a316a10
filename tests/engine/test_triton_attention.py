"""The Triton paged-attention kernel against plain causal attention, per sequence, and against
transformers' eager attention for each layer variant (sliding window, chunks, sinks, softcap).

Without a GPU the kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1);
on a GPU the same tests run the compiled kernel.
"""

import dataclasses

import pytest
import torch
from transformers import Gemma2Config, GptOssConfig, Llama4TextConfig
from transformers.masking_utils import chunked_causal_mask_function, sliding_window_causal_mask_function
from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention, Gemma2RotaryEmbedding
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssAttention, GptOssRotaryEmbedding
from transformers.models.llama4.modeling_llama4 import Llama4TextAttention, Llama4TextRotaryEmbedding

from engine.attention_metadata import PackedMetadata, PackedStep
from engine.kv_cache_spec import layer_specs_from_config
from engine.triton_attention import ATTENTION_NAME, decode_partitions, paged_attention_packed

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK_SIZE = 4


def reference(q, k, v, scale, sliding_window=None, attention_chunk_size=None, s_aux=None, softcap=None, spans=()):
    """q [n, heads, dim] at the last n positions of k, v [ctx, kv_heads, dim], in float64, as
    transformers' eager attention computes it: scores scaled, softcapped (gemma2), masked causally
    and by masking_utils' sliding_window_overlay (k > p - W) and chunked_overlay (k // C == p // C),
    the sinks' logits joined to the softmax and dropped after it (gpt_oss). spans: images [start, end)
    whose positions see each other both ways (gemma3), within the window (as the engine's torch path)."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, 1).transpose(0, 1).double()
    v = v.repeat_interleave(group, 1).transpose(0, 1).double()
    scores = q.transpose(0, 1).double() @ k.transpose(1, 2) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    n, ctx = q.shape[0], k.shape[1]
    q_position = torch.arange(ctx - n, ctx, device=q.device)[:, None]
    k_position = torch.arange(ctx, device=q.device)[None, :]
    allowed = k_position <= q_position
    for start, end in spans:
        allowed |= (q_position >= start) & (q_position < end) & (k_position >= start) & (k_position < end)
    if sliding_window is not None:
        allowed &= k_position > q_position - sliding_window
    if attention_chunk_size is not None:
        allowed &= k_position // attention_chunk_size == q_position // attention_chunk_size
    scores = scores.masked_fill(~allowed, float("-inf"))
    if s_aux is not None:
        scores = torch.cat([scores, s_aux.double().view(-1, 1, 1).expand(-1, n, 1)], dim=-1)
    weights = scores.softmax(-1)
    if s_aux is not None:
        weights = weights[..., :-1]
    return (weights @ v).transpose(0, 1)


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


def first_visible_key(position, sliding_window=None, attention_chunk_size=None, **_):
    first = 0 if sliding_window is None else max(0, position - sliding_window + 1)
    return first if attention_chunk_size is None else max(first, position // attention_chunk_size * attention_chunk_size)


def free_blocks_before_the_window(key_cache, value_cache, meta, shapes, tables, variant) -> PackedMetadata:
    """What the engine does for a sliding layer: blocks wholly before a sequence's first visible key
    are freed and their table entries point at a shared placeholder block, filled here with NaN so
    that any load of one poisons the output."""
    used = {b for (_, ctx), table in zip(shapes, tables) for b in table[: -(-ctx // BLOCK_SIZE)]}
    placeholder = min(set(range(key_cache.shape[0])) - used)
    key_cache[placeholder] = float("nan")
    value_cache[placeholder] = float("nan")
    freed = meta.block_tables.clone()
    for seq, (query_len, ctx) in enumerate(shapes):
        first = first_visible_key(ctx - query_len, **variant)
        freed[seq, : first // BLOCK_SIZE] = placeholder
    return dataclasses.replace(meta, block_tables=freed)


def check_variant(shapes, num_heads, num_kv_heads, head_dim, variant, seed, dtype=torch.float32, tolerance=1e-4,
                  **launch):
    q, key_cache, value_cache, meta, tables, starts = build_batch(shapes, num_heads, num_kv_heads, head_dim, seed)
    q, key_cache, value_cache = q.to(dtype), key_cache.to(dtype), value_cache.to(dtype)
    variant = dict(variant)
    if variant.pop("sinks", False):  # gpt-oss's sinks are a parameter of the model's dtype, large enough to matter
        variant["s_aux"] = (2 * torch.randn(num_heads, generator=torch.Generator().manual_seed(seed))).to(DEVICE, dtype)
    freed = free_blocks_before_the_window(key_cache, value_cache, meta, shapes, tables, variant)
    scale = 0.3  # not head_dim ** -0.5: Gemma's query_pre_attn_scalar passes its own
    out = paged_attention_packed(q, key_cache, value_cache, freed, scale, **launch, **variant)
    for (query_len, ctx), table, start in zip(shapes, tables, starts):
        if query_len == 0:
            continue
        rows = slice(start, start + query_len)
        k = contiguous_context(key_cache, table, ctx).float()
        v = contiguous_context(value_cache, table, ctx).float()
        expected = reference(q[rows].float(), k, v, scale, **variant)
        torch.testing.assert_close(out[rows].double(), expected, atol=tolerance, rtol=tolerance)


VARIANTS = {
    "window under a block": dict(sliding_window=3),
    "window not a multiple of the block": dict(sliding_window=6),
    "window past every context": dict(sliding_window=1000),
    "sinks": dict(sinks=True),
    "softcap": dict(softcap=0.5),  # small enough to bend these scores
    "gpt-oss: window and sinks": dict(sliding_window=6, sinks=True),
    "gemma 2: window and softcap": dict(sliding_window=8, softcap=0.5),
    "llama 4: chunks": dict(attention_chunk_size=8),
    "chunks not a multiple of the block": dict(attention_chunk_size=6),
}


@pytest.mark.parametrize("variant", VARIANTS.values(), ids=VARIANTS.keys())
def test_each_layer_variant_matches_eager_attention_in_a_mixed_batch(variant):
    """Query heads 3 a kv head, a head size that is no power of two. A whole prompt; a chunk after a
    cached prefix; decodes; a prompt of three query tiles (later tiles start their key loop past 0);
    a prefill chunk of 20 over 70 cached tokens; a padding sequence."""
    shapes = [(7, 7), (5, 13), (1, 1), (1, 9), (1, 8), (70, 70), (20, 90), (0, 0)]
    check_variant(shapes, 9, 3, 24, variant, seed=6)


IMAGE_SPANS = [  # (query_len, context_len) and the images [start, end) whose positions see each other both ways
    ((20, 20), [(5, 13)]),  # a whole prompt
    ((12, 30), [(20, 26), (26, 29)]),  # a chunk after a cached prefix, two images back to back
    ((1, 9), []),  # a decode beside them
    ((70, 70), [(14, 40), (60, 70)]),  # an image across a query tile's end (tiles of 21 rows), one that ends the chunk
    ((8, 8), []),  # a prompt without images
]


@pytest.mark.parametrize("variant", [{}, dict(sliding_window=6)], ids=["full", "window under an image"])
def test_image_placeholders_see_each_other_both_ways(variant):
    """Gemma 3: a query in an image sees the image's later keys too (packed metadata's last_key), causal elsewhere;
    with a sliding window narrower than an image, the window still bounds what each query sees, as the torch path's
    masks do."""
    shapes = [shape for shape, _ in IMAGE_SPANS]
    q, key_cache, value_cache, meta, tables, starts = build_batch(shapes, 9, 3, 24, seed=9)
    last_key = []
    for (query_len, ctx), spans in IMAGE_SPANS:
        positions = list(range(ctx - query_len, ctx))
        last_key += [next((end - 1 for start, end in spans if start <= p < end), p) for p in positions]
    meta = dataclasses.replace(meta, last_key=torch.tensor(last_key, dtype=torch.int32, device=DEVICE))
    out = paged_attention_packed(q, key_cache, value_cache, meta, 0.3, **variant)
    causal = paged_attention_packed(q, key_cache, value_cache, dataclasses.replace(meta, last_key=None), 0.3, **variant)
    for ((query_len, ctx), spans), table, start in zip(IMAGE_SPANS, tables, starts):
        rows = slice(start, start + query_len)
        k = contiguous_context(key_cache, table, ctx)
        v = contiguous_context(value_cache, table, ctx)
        expected = reference(q[rows], k, v, 0.3, spans=spans, **variant)
        torch.testing.assert_close(out[rows].double(), expected, atol=1e-4, rtol=1e-4)
        assert torch.equal(out[rows], causal[rows]) == (not spans)  # decisive: the images change what they see


# Windows and chunks wider than a 16-key partition, narrower than the longest context.
SPLIT_VARIANTS = {
    "window not a multiple of the block": dict(sliding_window=42),
    "window past every context": dict(sliding_window=1000),
    "sinks": dict(sinks=True),
    "softcap": dict(softcap=0.5),
    "gpt-oss: window and sinks": dict(sliding_window=42, sinks=True),
    "gemma 2: window and softcap": dict(sliding_window=40, softcap=0.5),
    "llama 4: chunks": dict(attention_chunk_size=24),
}


@pytest.mark.parametrize("variant", SPLIT_VARIANTS.values(), ids=SPLIT_VARIANTS.keys())
def test_each_layer_variant_matches_eager_attention_in_split_decodes(variant):
    """Decodes split into 16-key partitions of their visible keys only (the merge adds a sink once);
    contexts shorter than one partition, of exactly one, past two, and long; a padding sequence."""
    shapes = [(1, 3), (1, 16), (1, 37), (1, 130), (0, 0)]
    q_heads, kv_heads = 8, 2
    width = -(-130 // BLOCK_SIZE) * BLOCK_SIZE
    visible = min([width] + [variant[k] for k in ("sliding_window", "attention_chunk_size") if k in variant])
    assert decode_partitions(len(shapes), kv_heads, visible, partition_keys=16)[0] > 1  # the path under test
    check_variant(shapes, q_heads, kv_heads, 16, variant, seed=7, partition_keys=16)


def test_window_and_sinks_in_16_bit_stay_within_its_rounding():
    """gpt-oss runs in 16 bits: sinks of the model's dtype, read into the float32 softmax."""
    shapes = [(7, 7), (5, 13), (1, 9), (1, 64)]
    check_variant(shapes, 4, 2, 16, dict(sliding_window=6, sinks=True), seed=8, dtype=torch.float16, tolerance=2e-3)


LAYER_SHAPE = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_hidden_layers=1,
                   vocab_size=128, intermediate_size=64)
# (config, attention class, rotary embedding class, the layer's mask function as masking_utils builds it)
LAYERS = {
    "gpt_oss: window and sinks": (
        GptOssConfig(**LAYER_SHAPE, sliding_window=5, layer_types=["sliding_attention"], num_local_experts=2),
        GptOssAttention, GptOssRotaryEmbedding, sliding_window_causal_mask_function(5)),
    "gemma2: window, softcap, query_pre_attn_scalar": (
        Gemma2Config(**LAYER_SHAPE, sliding_window=6, layer_types=["sliding_attention"], attn_logit_softcapping=1.0,
                     query_pre_attn_scalar=40),
        Gemma2Attention, Gemma2RotaryEmbedding, sliding_window_causal_mask_function(6)),
    "llama4: chunked attention": (
        Llama4TextConfig(**LAYER_SHAPE, attention_chunk_size=4, no_rope_layers=[1], intermediate_size_mlp=64),
        Llama4TextAttention, Llama4TextRotaryEmbedding, chunked_causal_mask_function(4, torch.zeros(1, dtype=torch.long))),
}


@pytest.mark.parametrize("name", LAYERS)
def test_transformers_layers_hand_the_kernel_their_variant(name):
    """A real transformers attention layer run through the triton attention function gives what the
    same layer gives in eager mode with transformers' own mask: its keyword arguments (s_aux, softcap,
    scaling) and its KV cache group's spec (the window or Llama 4's chunks, from its config) reach the kernel."""
    config, attention_class, rotary_class, mask_function = LAYERS[name]
    torch.manual_seed(0)
    layer = attention_class(config, 0).eval().to(DEVICE)
    if hasattr(layer, "sinks"):
        torch.nn.init.normal_(layer.sinks, std=2.0)  # an uninitialised parameter until a checkpoint fills it
    n = 11
    hidden = torch.randn(1, n, config.hidden_size, device=DEVICE)
    positions = torch.arange(n, device=DEVICE)
    rotary = rotary_class(config).to(DEVICE)(hidden, positions[None])
    allowed = mask_function(0, 0, positions[:, None].cpu(), positions[None, :].cpu()).to(DEVICE)
    mask = torch.zeros(1, 1, n, n, device=DEVICE).masked_fill(~allowed, float("-inf"))
    with torch.no_grad():
        config._attn_implementation = "eager"
        expected = layer(hidden, position_embeddings=rotary, attention_mask=mask)[0]
        config._attn_implementation = ATTENTION_NAME
        num_blocks = -(-n // BLOCK_SIZE) + 1
        cache = torch.zeros(num_blocks, BLOCK_SIZE, config.num_key_value_heads, config.head_dim, device=DEVICE)
        table = list(range(num_blocks - 1, 0, -1))  # not in order, as a real pool hands them out
        slots = torch.tensor([table[i // BLOCK_SIZE] * BLOCK_SIZE + i % BLOCK_SIZE for i in range(n)], device=DEVICE)

        def t(values):
            return torch.tensor(values, dtype=torch.int32, device=DEVICE)

        meta = PackedMetadata(slots, t([0]), t([n]), t([n]), t([table]), n)
        step = PackedStep([(cache, cache.clone())], {0: (0, 0)}, [meta], [layer_specs_from_config(config)[0]])
        out = layer(hidden, position_embeddings=rotary, attention_mask=None, attention_metadata=step)[0]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
