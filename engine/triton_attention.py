"""Paged attention as one Triton kernel per layer for a whole packed batch (the CUDA path).

Every sequence in the step is a run of query tokens at the end of its context: a prefill chunk
(after any cached prefix) or a single decode token. One rule covers both: query i of a sequence
with query_len q and context_len c sits at position c - q + i and sees keys 0..c-q+i. A program
takes one sequence's tile of query tokens for one kv head; the query heads sharing that kv head
are rows of the same tile, so each key and value is read once for all of them. Keys and values
come straight from the paged cache through the block table (no gather copy, no padding), with an
online softmax in float32.

Each layer's variant of attention, as transformers' model code asks for it per layer:
- a sliding window W: the query at position p sees keys p - W < k <= p;
- chunked local attention (Llama 4) of C keys: the query at p sees keys in its own chunk, k // C == p // C;
- learned sinks (gpt-oss): one logit per query head in the softmax's denominator, with no value;
- a logit softcap (Gemma 2): scores become softcap * tanh(scores * scale / softcap) before masking;
- image placeholders that attend to each other both ways (Gemma 3): a query in an image also sees the
  image's later keys, up to the last key it sees as the packed metadata gives it per query (a prefill
  chunk holds such an image whole, so those keys are in the cache when the layer runs).
The engine frees a sliding layer's blocks once they leave the window and points their block-table
entries at a shared placeholder, so no key before a query's first visible one is ever loaded: a
tile's key loop starts at its first query's first visible key, and split decodes partition only
the visible keys.

Decode batches with few (sequence, kv head) pairs split each context into partitions of
PARTITION_KEYS keys, one program each, and a second kernel merges the partial softmaxes (as
flash-decoding and vLLM's paged attention v2 do): at batch 1 an 8-kv-head model would otherwise
read a long context with 8 programs, on a GPU with over a hundred multiprocessors.

Runs on CUDA. On CPU it runs only under TRITON_INTERPRET=1 (set before this module is imported),
which is how the tests check it against the portable torch path.
"""

import torch
import triton
import triton.language as tl
from transformers import AttentionInterface

from engine.attention import Softmax, layer_softmax, write_kv_cache
from engine.attention_metadata import PackedMetadata, PackedStep
from engine.kv_cache_spec import AttentionSpec

ATTENTION_NAME = "appliance_paged_triton"

# Query rows per program: decode tiles hold one token's heads (tl.dot needs at least 16 rows);
# prefill tiles hold several tokens so keys are reused across them.
DECODE_ROWS = 16
PREFILL_ROWS = 64
KEYS_PER_ITERATION = 64
PARTITION_KEYS = 512  # keys per program when a decode batch is split (more past MAX_PARTITIONS of them)
MAX_PARTITIONS = 64  # bounds the partial results' memory for 128k-token contexts
SPLIT_BELOW_PROGRAMS = 512  # split decode batches with fewer (sequence, kv head) programs than this
MERGE_CHUNK = 16  # partitions the merge reads at a time


@triton.jit
def _first_visible_key(position, window, chunk):
    """The first key a query at `position` sees: within its sliding window, within its chunk."""
    first = tl.where(window > 0, tl.maximum(position - window + 1, 0), 0)
    return tl.where(chunk > 0, tl.maximum(first, position // tl.maximum(chunk, 1) * tl.maximum(chunk, 1)), first)


@triton.jit
def _tanh(x):
    # From exp (tl has no tanh; libdevice's differs between the GPU and the interpreter); saturates to ±1.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _paged_attention_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr,
    block_tables_ptr, query_start_ptr, query_len_ptr, context_len_ptr,
    partial_acc_ptr, partial_max_ptr, partial_sum_ptr,  # split decodes: [S, heads, partitions(, dims)] float32
    sinks_ptr,  # [heads]: read only with HAS_SINKS
    last_key_ptr,  # [T]: the last key each query sees; read only with HAS_LAST_KEY (else its own position)
    scale, softcap,
    window, chunk,  # keys a query sees: its last `window` (0: all), within its `chunk`-key chunk (0: no chunks)
    partition_keys, num_partitions,  # split decodes: keys per program (axis 1 numbers partitions), how many
    stride_q_token, stride_q_head,
    stride_o_token, stride_o_head,
    stride_cache_block, stride_cache_slot, stride_cache_head,
    stride_table,
    NUM_HEADS: tl.constexpr,
    GROUP: tl.constexpr,  # query heads per kv head
    TILE_Q: tl.constexpr,  # query tokens per program
    BLOCK_M: tl.constexpr,  # TILE_Q * GROUP rounded up to a power of two
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,  # tokens per KV-cache block
    BLOCK_N: tl.constexpr,  # keys per loop iteration
    DOT_PRECISION: tl.constexpr,  # "ieee" for float32 (exact, as the torch path), "tf32" otherwise (ignored for 16-bit)
    SPLIT: tl.constexpr,  # a split decode batch: partial results for the merge kernel
    HAS_SINKS: tl.constexpr,  # (not read when SPLIT: the merge adds the sink)
    SOFTCAP: tl.constexpr,
    HAS_LAST_KEY: tl.constexpr,  # (never with SPLIT: images are prefilled)
):
    seq = tl.program_id(0)
    tile = 0 if SPLIT else tl.program_id(1)
    kv_head = tl.program_id(2)
    query_len = tl.load(query_len_ptr + seq)
    if tile * TILE_Q >= query_len:
        return
    query_start = tl.load(query_start_ptr + seq)
    context_len = tl.load(context_len_ptr + seq)

    rows = tl.arange(0, BLOCK_M)
    q_token = tile * TILE_Q + rows // GROUP
    q_head = kv_head * GROUP + rows % GROUP
    row_valid = (rows < TILE_Q * GROUP) & (q_token < query_len)
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_valid = dims < HEAD_DIM
    q_offsets = (query_start + q_token)[:, None] * stride_q_token + q_head[:, None] * stride_q_head + dims[None, :]
    q = tl.load(q_ptr + q_offsets, mask=row_valid[:, None] & dim_valid[None, :], other=0.0)
    q_position = context_len - query_len + q_token
    q_first_key = _first_visible_key(q_position, window, chunk)
    if HAS_LAST_KEY:
        q_last_key = tl.load(last_key_ptr + query_start + q_token, mask=row_valid, other=-1)
    else:
        q_last_key = q_position

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    if HAS_SINKS and not SPLIT:  # the sink starts the running softmax: its logit, exp(0) in the sum
        m_i = tl.load(sinks_ptr + q_head, mask=row_valid, other=float("-inf")).to(tl.float32)
        l_i = tl.where(row_valid, 1.0, 0.0)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    # Keys past this tile's last query, and before its first query's first visible key, are masked
    # for every row (first visible keys never decrease with the position): loop over those between.
    num_keys = context_len - query_len + tl.minimum((tile + 1) * TILE_Q, query_len)
    if HAS_LAST_KEY:  # an image's query sees past the tile's last position
        num_keys = tl.maximum(num_keys, tl.max(q_last_key, 0) + 1)
    first_key = _first_visible_key(context_len - query_len + tile * TILE_Q, window, chunk)
    if SPLIT:
        first_key += tl.program_id(1) * partition_keys
        if first_key >= num_keys:
            return  # the merge leaves out partitions past the context
        num_keys = tl.minimum(num_keys, first_key + partition_keys)
    key_index = tl.arange(0, BLOCK_N)
    for start in range(first_key, num_keys, BLOCK_N):
        k_position = start + key_index
        k_valid = k_position < num_keys
        # int64: block * stride_cache_block passes 2**31 in a large cache (a small model on a big GPU).
        block = tl.load(block_tables_ptr + seq * stride_table + k_position // BLOCK_SIZE, mask=k_valid, other=0).to(tl.int64)
        cache_offsets = block * stride_cache_block + (k_position % BLOCK_SIZE) * stride_cache_slot + kv_head * stride_cache_head
        # An fp8 cache (kv_cache_dtype = "fp8") is widened to the queries' dtype; otherwise a no-op.
        k = tl.load(
            k_cache_ptr + cache_offsets[None, :] + dims[:, None], mask=k_valid[None, :] & dim_valid[:, None], other=0.0
        ).to(q.dtype)
        scores = tl.dot(q, k, input_precision=DOT_PRECISION) * scale
        if SOFTCAP:
            scores = softcap * _tanh(scores / softcap)
        allowed = (k_position[None, :] <= q_last_key[:, None]) & (k_position[None, :] >= q_first_key[:, None])
        allowed = allowed & k_valid[None, :]
        scores = tl.where(allowed, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        # A padding row may have no allowed key yet: keep its exponent finite (it is never stored).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(scores - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_cache_ptr + cache_offsets[:, None] + dims[None, :], mask=k_valid[:, None] & dim_valid[None, :], other=0.0
        ).to(q.dtype)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    if SPLIT:  # unnormalised, with its running max and sum, for the merge
        partial = (seq * NUM_HEADS + q_head) * num_partitions + tl.program_id(1)
        tl.store(partial_max_ptr + partial, m_i, mask=row_valid)
        tl.store(partial_sum_ptr + partial, l_i, mask=row_valid)
        tl.store(partial_acc_ptr + partial[:, None] * HEAD_DIM_PAD + dims[None, :], acc, mask=row_valid[:, None])
        return
    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    out_offsets = (query_start + q_token)[:, None] * stride_o_token + q_head[:, None] * stride_o_head + dims[None, :]
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & dim_valid[None, :])


@triton.jit
def _merge_partitions_kernel(
    partial_acc_ptr, partial_max_ptr, partial_sum_ptr, out_ptr,
    query_start_ptr, query_len_ptr, context_len_ptr, sinks_ptr,
    window, chunk,
    partition_keys, num_partitions,
    stride_o_token, stride_o_head,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    CHUNK: tl.constexpr,  # partitions read at a time
    HAS_SINKS: tl.constexpr,
):
    """One decode token's head: the partitions' softmaxes rescaled to their common max and summed
    (with the head's sink, once)."""
    seq = tl.program_id(0)
    head = tl.program_id(1)
    if tl.load(query_len_ptr + seq) == 0:
        return
    context_len = tl.load(context_len_ptr + seq)
    visible = context_len - _first_visible_key(context_len - 1, window, chunk)
    used = tl.minimum(tl.cdiv(visible, partition_keys), num_partitions)
    base = (seq * NUM_HEADS + head) * num_partitions
    parts = tl.arange(0, CHUNK)
    total_max = tl.full([], float("-inf"), tl.float32)
    if HAS_SINKS:
        sink = tl.load(sinks_ptr + head).to(tl.float32)
        total_max = tl.maximum(total_max, sink)
    for start in range(0, used, CHUNK):
        m = tl.load(partial_max_ptr + base + start + parts, mask=start + parts < used, other=float("-inf"))
        total_max = tl.maximum(total_max, tl.max(m, 0))
    dims = tl.arange(0, HEAD_DIM_PAD)
    total = tl.zeros([], tl.float32)
    if HAS_SINKS:
        total = tl.exp(sink - total_max)
    acc = tl.zeros([HEAD_DIM_PAD], tl.float32)
    for start in range(0, used, CHUNK):
        valid = start + parts < used
        m = tl.load(partial_max_ptr + base + start + parts, mask=valid, other=float("-inf"))
        weight = tl.where(valid, tl.exp(m - total_max), 0.0)
        total += tl.sum(tl.load(partial_sum_ptr + base + start + parts, mask=valid, other=0.0) * weight, 0)
        rows = (base + start + parts)[:, None] * HEAD_DIM_PAD + dims[None, :]
        acc += tl.sum(tl.load(partial_acc_ptr + rows, mask=valid[:, None], other=0.0) * weight[:, None], 0)
    token = tl.load(query_start_ptr + seq)
    tl.store(out_ptr + token * stride_o_token + head * stride_o_head + dims, (acc / total).to(out_ptr.dtype.element_ty),
             mask=dims < HEAD_DIM)


def decode_partitions(num_seqs: int, num_kv_heads: int, max_context: int,
                      partition_keys: int = PARTITION_KEYS) -> tuple[int, int]:
    """(partitions, keys per partition) a decode batch's contexts are split into; (0, 0): not split.
    From shapes known on the host (max_context is the block tables' width in tokens): no device sync.
    Past MAX_PARTITIONS partitions grow instead, in whole key iterations."""
    partitions = triton.cdiv(max_context, partition_keys)
    if partitions < 2 or num_seqs * num_kv_heads >= SPLIT_BELOW_PROGRAMS:
        return 0, 0
    if partitions > MAX_PARTITIONS:
        partition_keys = triton.cdiv(triton.cdiv(max_context, MAX_PARTITIONS), KEYS_PER_ITERATION) * KEYS_PER_ITERATION
        partitions = triton.cdiv(max_context, partition_keys)
    return partitions, partition_keys


def kernel_constants(num_heads: int, num_kv_heads: int, head_dim: int, block_size: int, max_query_len: int,
                     dtype: torch.dtype, split: bool = False, sinks: bool = False, softcap: bool = False,
                     last_key: bool = False) -> dict:
    """The kernel's compile-time constants for a batch of this shape (one compiled variant each)."""
    group = num_heads // num_kv_heads
    tile_q = max(1, (DECODE_ROWS if max_query_len == 1 else PREFILL_ROWS) // group)
    return dict(
        NUM_HEADS=num_heads,
        GROUP=group,
        TILE_Q=tile_q,
        BLOCK_M=max(16, triton.next_power_of_2(tile_q * group)),
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_SIZE=block_size,
        BLOCK_N=KEYS_PER_ITERATION,
        DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
        SPLIT=split,
        HAS_SINKS=sinks,
        SOFTCAP=softcap,
        HAS_LAST_KEY=last_key,
    )


def paged_attention_packed(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, meta: PackedMetadata, scale: float,
    partition_keys: int = PARTITION_KEYS, *, sliding_window: int | None = None, attention_chunk_size: int | None = None,
    s_aux: torch.Tensor | None = None, softcap: float | None = None,
) -> torch.Tensor:
    """q [T, heads, dim] -> [T, heads, dim]: each sequence's queries over its cached context, as the
    layer asks: its sliding window, its attention chunks (Llama 4), its sinks [heads] (gpt-oss), its
    logit softcap (Gemma 2); None for each it does not use. Where meta.last_key is given, a query sees keys up to its
    entry there (images whose placeholders see each other) rather than up to its own position."""
    _, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, _ = key_cache.shape
    num_seqs, table_width = meta.block_tables.shape
    window, chunk = sliding_window or 0, attention_chunk_size or 0
    num_partitions = 0
    if meta.max_query_len == 1:
        # A decode sees at most its window's (or chunk's) keys: only those are partitioned.
        visible = min([table_width * block_size] + [n for n in (window, chunk) if n])
        num_partitions, partition_keys = decode_partitions(num_seqs, num_kv_heads, visible, partition_keys)
    last_key = meta.last_key if meta.last_key is not None and not num_partitions else None
    constants = kernel_constants(num_heads, num_kv_heads, head_dim, block_size, meta.max_query_len, q.dtype,
                                 split=num_partitions > 0, sinks=s_aux is not None, softcap=bool(softcap),
                                 last_key=last_key is not None)
    sinks = q if s_aux is None else s_aux.contiguous()  # q: a placeholder, not read
    last_key = q if last_key is None else last_key  # likewise
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if num_partitions:
        partial = (num_seqs, num_heads, num_partitions)
        partial_acc = torch.empty(*partial, constants["HEAD_DIM_PAD"], dtype=torch.float32, device=q.device)
        partial_max = torch.empty(partial, dtype=torch.float32, device=q.device)
        partial_sum = torch.empty(partial, dtype=torch.float32, device=q.device)
        grid = (num_seqs, num_partitions, num_kv_heads)
    else:
        partial_acc = partial_max = partial_sum = out  # not read: the kernel writes the output itself
        grid = (num_seqs, triton.cdiv(max(meta.max_query_len, 1), constants["TILE_Q"]), num_kv_heads)
    _paged_attention_kernel[grid](
        q, key_cache, value_cache, out,
        meta.block_tables, meta.query_start, meta.query_len, meta.context_len,
        partial_acc, partial_max, partial_sum,
        sinks, last_key,
        scale, softcap or 0.0,
        window, chunk,
        partition_keys, num_partitions,
        q.stride(0), q.stride(1),
        out.stride(0), out.stride(1),
        key_cache.stride(0), key_cache.stride(1), key_cache.stride(2),
        meta.block_tables.stride(0),
        **constants,
    )
    if num_partitions:
        _merge_partitions_kernel[(num_seqs, num_heads)](
            partial_acc, partial_max, partial_sum, out,
            meta.query_start, meta.query_len, meta.context_len, sinks,
            window, chunk,
            partition_keys, num_partitions,
            out.stride(0), out.stride(1),
            NUM_HEADS=num_heads, HEAD_DIM=head_dim, HEAD_DIM_PAD=constants["HEAD_DIM_PAD"], CHUNK=MERGE_CHUNK,
            HAS_SINKS=s_aux is not None,
        )
    return out


def triton_paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    attention_metadata: PackedStep | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    meta, spec, caches = attention_metadata.for_layer(module.layer_idx)
    key_cache, value_cache = write_kv_cache([caches], 0, meta.slot_mapping, key, value)
    q = query[0].transpose(0, 1).contiguous()  # [T, heads, dim]
    return paged_attention_layer(q, key_cache, value_cache, meta, spec, layer_softmax(scaling, kwargs)).unsqueeze(0), None


def paged_attention_layer(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, meta: PackedMetadata,
                          spec: AttentionSpec, softmax: Softmax) -> torch.Tensor:
    """One layer's attention over its KV cache group as the group's spec and the layer's softmax ask."""
    scale = softmax.scale if softmax.scale is not None else q.shape[-1] ** -0.5
    return paged_attention_packed(q, key_cache, value_cache, meta, scale, sliding_window=spec.sliding_window,
                                  attention_chunk_size=spec.attention_chunk, s_aux=softmax.sinks,
                                  softcap=softmax.softcap)


AttentionInterface.register(ATTENTION_NAME, triton_paged_attention)
