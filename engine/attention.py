"""Paged attention for packed variable-length batches, plugged into transformers' model code.

The model runs on one packed row of tokens ([1, T]) from many sequences. transformers hands each
attention layer q/k/v after RoPE; this function writes the new keys and values into the paged
cache, then attends each query over its own sequence's cached context:
- prefill chunks (several query tokens) one sequence at a time, causal with an offset;
- decode tokens (one query each) in a few groups of similar context length (less padding),
  each group at once over contexts gathered from the block tables.
Per-step metadata arrives as one AttentionMetadata object passed through model(...).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

ATTENTION_NAME = "appliance_paged"


@dataclass
class PrefillChunk:
    query_start: int
    query_len: int
    context_len: int  # tokens of the sequence in the cache after this chunk is written
    block_table: torch.Tensor  # [num_blocks] the sequence's blocks
    first_block: int | None = None  # set when those blocks are consecutive: the context is read in place


@dataclass
class DecodeGroup:
    query_start: int  # the group's decode tokens are packed together from here
    block_tables: torch.Tensor  # [num_seqs, max_blocks]; padding points at block 0
    bias: torch.Tensor | None  # [num_seqs, 1, 1, max_blocks * block_size]: 0 where real, -inf for padding
    first_block: int | None = None  # a group of one sequence whose blocks are consecutive: read in place


@dataclass
class AttentionMetadata:
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: key, value [num_blocks, block_size, kv_heads, head_dim]
    slot_mapping: torch.Tensor  # [T]: where each new token's key and value go (block * block_size + offset)
    prefills: list[PrefillChunk]
    decodes: list[DecodeGroup]


def gather_blocks(cache: torch.Tensor, block_tables: torch.Tensor, first_block: int | None = None) -> torch.Tensor:
    """[n, blocks] block ids -> [n, blocks * block_size, kv_heads, head_dim], whole blocks at a time.

    index_select over whole blocks is many times faster on CPU than per-slot advanced indexing.
    One sequence whose blocks are consecutive (first_block given; a lone request's usually are) is a
    view of the cache: nothing is copied.
    """
    num_blocks, block_size, kv_heads, head_dim = cache.shape
    if first_block is not None:
        width = block_tables.shape[1]
        return cache[first_block : first_block + width].view(1, width * block_size, kv_heads, head_dim)
    rows = cache.view(num_blocks, -1).index_select(0, block_tables.flatten())
    return rows.view(block_tables.shape[0], block_tables.shape[1] * block_size, kv_heads, head_dim)


def _attend_prefill(q, k_new, v_new, key_cache, value_cache, chunk: PrefillChunk, scaling):
    """q [heads, query_len, dim] -> [query_len, heads, dim], causal over the sequence's context.

    k_new, v_new [kv_heads, query_len, dim] are this chunk's own keys and values: when the chunk
    is the whole context they are used as they are, otherwise the context comes from the cache.
    """
    num_heads = q.shape[0]
    if chunk.query_len == chunk.context_len:
        k, v = k_new, v_new
    else:
        k = gather_blocks(key_cache, chunk.block_table[None], chunk.first_block)[0, : chunk.context_len].transpose(0, 1)
        v = gather_blocks(value_cache, chunk.block_table[None], chunk.first_block)[0, : chunk.context_len].transpose(0, 1)
    group = num_heads // k.shape[0]
    # 4-D inputs with repeated kv heads take SDPA's fast CPU kernels (3-D or enable_gqa fall back to math).
    k = k.repeat_interleave(group, 0)[None]
    v = v.repeat_interleave(group, 0)[None]
    if chunk.query_len == chunk.context_len:
        o = F.scaled_dot_product_attention(q[None], k, v, is_causal=True, scale=scaling)
    else:
        # Query i sits at position context_len - query_len + i and sees keys up to it.
        allowed = torch.ones(chunk.query_len, chunk.context_len, dtype=torch.bool, device=q.device)
        allowed = allowed.tril(chunk.context_len - chunk.query_len)
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(~allowed, float("-inf"))
        o = F.scaled_dot_product_attention(q[None], k, v, attn_mask=bias, scale=scaling)
    return o[0].transpose(0, 1)


def _attend_decode(q, key_cache, value_cache, group: DecodeGroup, scaling):
    """q [heads, num_decodes, dim] -> [num_decodes, heads, dim], one query token per sequence."""
    num_heads, num_decodes, head_dim = q.shape
    num_kv_heads = key_cache.shape[2]
    # Query heads sharing a kv head become that head's rows: no kv repeat needed.
    q = q.transpose(0, 1).reshape(num_decodes, num_kv_heads, num_heads // num_kv_heads, head_dim)
    k = gather_blocks(key_cache, group.block_tables, group.first_block).transpose(1, 2)
    v = gather_blocks(value_cache, group.block_tables, group.first_block).transpose(1, 2)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=group.bias, scale=scaling)
    return o.reshape(num_decodes, num_heads, head_dim)


def write_kv_cache(meta, layer_idx: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This step's keys and values [1, kv_heads, T, dim] into the layer's paged cache (one
    index_copy_ per cache, at meta.slot_mapping); returns the layer's (key, value) cache."""
    if meta is None:
        raise RuntimeError("paged attention needs attention_metadata; the engine's model runner passes it")
    key_cache, value_cache = meta.kv_caches[layer_idx]
    slots_view = (-1, key_cache.shape[2], key_cache.shape[3])
    key_cache.view(slots_view).index_copy_(0, meta.slot_mapping, key[0].transpose(0, 1))
    value_cache.view(slots_view).index_copy_(0, meta.slot_mapping, value[0].transpose(0, 1))
    return key_cache, value_cache


def attention_chunk_size(module: torch.nn.Module) -> int | None:
    """Chunked local attention (Llama 4's "chunked_attention" layers: a query sees the keys of its own
    chunk of attention_chunk_size tokens). The model code passes no argument for it (its mask carries
    it), so it is read off the layer's config."""
    config = getattr(module, "config", None)
    layer_types = getattr(config, "layer_types", None)
    if not layer_types or layer_types[module.layer_idx] != "chunked_attention":
        return None
    return config.attention_chunk_size


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    attention_metadata: AttentionMetadata | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    meta = attention_metadata
    key_cache, value_cache = write_kv_cache(meta, module.layer_idx, key, value)
    q = query[0]  # [heads, T, dim]
    out = torch.empty(q.shape[1], q.shape[0], q.shape[2], dtype=q.dtype, device=q.device)
    for chunk in meta.prefills:
        end = chunk.query_start + chunk.query_len
        rows = slice(chunk.query_start, end)
        out[rows] = _attend_prefill(q[:, rows], key[0, :, rows], value[0, :, rows], key_cache, value_cache, chunk, scaling)
    for group in meta.decodes:
        end = group.query_start + group.block_tables.shape[0]
        out[group.query_start : end] = _attend_decode(q[:, group.query_start : end], key_cache, value_cache, group, scaling)
    return out.unsqueeze(0), None


AttentionInterface.register(ATTENTION_NAME, paged_attention)
