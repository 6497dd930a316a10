"""Paged attention for packed variable-length batches, plugged into transformers' model code.

The model runs on one packed row of tokens ([1, T]) from many sequences. transformers hands each
attention layer q/k/v after RoPE; this function writes the new keys and values into the paged
cache, then attends each query over the part of its own sequence's context the layer sees:
- prefill chunks (several query tokens) one sequence at a time, causal with an offset;
- decode tokens (one query each) in a few groups of similar context length (less padding),
  each group at once over contexts gathered from the block tables.
A layer's KV cache group (engine.kv_cache_spec) says which blocks hold its keys and what it sees:
the whole context, a sliding window or its chunk; only the visible blocks are read. Learned sinks
(gpt-oss) and logit softcapping (Gemma 2) take an explicit softmax; everything else goes through SDPA.
Per-step metadata arrives as one AttentionMetadata object passed through model(...).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from engine.attention_metadata import AttentionMetadata, DecodeGroup, PrefillChunk

ATTENTION_NAME = "appliance_paged"


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


@dataclass(frozen=True)
class Softmax:
    """What a layer adds to plain scaled-dot-product attention."""

    scale: float | None
    softcap: float | None = None
    sinks: torch.Tensor | None = None  # learned logits, one per query head, that join each row's softmax (no value)

    @property
    def is_plain(self) -> bool:
        return self.softcap is None and self.sinks is None

    def shaped(self, *shape: int) -> "Softmax":
        """With the sinks viewed to broadcast over the scores' rows ([..., rows, 1])."""
        return self if self.sinks is None else Softmax(self.scale, self.softcap, self.sinks.view(*shape))


def attend(q, k, v, bias: torch.Tensor | None, softmax: Softmax, is_causal: bool = False) -> torch.Tensor:
    """q [..., heads, q_len, dim] over k, v [..., heads, k_len, dim]; bias additive (0 / -inf) or None."""
    if softmax.is_plain:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=is_causal, scale=softmax.scale)
    scale = softmax.scale if softmax.scale is not None else q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softmax.softcap is not None:  # as Gemma 2: tanh-squashed before the mask
        scores = torch.tanh(scores / softmax.softcap) * softmax.softcap
    if is_causal:
        bias = torch.zeros(scores.shape[-2:], dtype=scores.dtype, device=scores.device).masked_fill_(
            torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).triu_(1), float("-inf"))
    if bias is not None:
        scores = scores + bias
    if softmax.sinks is None:
        return torch.matmul(torch.softmax(scores, dim=-1), v)
    # gpt-oss: each head's sink logit joins the softmax's denominator, then is dropped.
    sinks = softmax.sinks.to(scores.dtype).expand(*scores.shape[:-1], 1)
    combined = torch.cat([scores, sinks], dim=-1)
    combined = combined - combined.amax(dim=-1, keepdim=True)
    probs = torch.softmax(combined, dim=-1)[..., :-1]
    return torch.matmul(probs, v)


def _attend_prefill(q, k_new, v_new, key_cache, value_cache, chunk: PrefillChunk, softmax: Softmax):
    """q [heads, query_len, dim] -> [query_len, heads, dim], causal (and windowed) over the sequence's context.

    k_new, v_new [kv_heads, query_len, dim] are this chunk's own keys and values: when the chunk
    is the whole context they are used as they are, otherwise the context comes from the cache.
    """
    num_heads = q.shape[0]
    whole = chunk.query_len == chunk.context_len
    if whole:
        k, v = k_new, v_new
    else:
        length = chunk.context_len - chunk.context_start
        k = gather_blocks(key_cache, chunk.block_table[None], chunk.first_block)[0, :length].transpose(0, 1)
        v = gather_blocks(value_cache, chunk.block_table[None], chunk.first_block)[0, :length].transpose(0, 1)
    group = num_heads // k.shape[0]
    # 4-D inputs with repeated kv heads take SDPA's fast CPU kernels (3-D or enable_gqa fall back to math).
    k = k.repeat_interleave(group, 0)[None]
    v = v.repeat_interleave(group, 0)[None]
    o = attend(q[None], k, v, chunk.mask, softmax.shaped(1, num_heads, 1, 1), is_causal=chunk.mask is None)
    return o[0].transpose(0, 1)


def _attend_decode(q, key_cache, value_cache, group: DecodeGroup, softmax: Softmax):
    """q [heads, num_decodes, dim] -> [num_decodes, heads, dim], one query token per sequence."""
    num_heads, num_decodes, head_dim = q.shape
    num_kv_heads = key_cache.shape[2]
    # Query heads sharing a kv head become that head's rows: no kv repeat needed.
    q = q.transpose(0, 1).reshape(num_decodes, num_kv_heads, num_heads // num_kv_heads, head_dim)
    k = gather_blocks(key_cache, group.block_tables, group.first_block).transpose(1, 2)
    v = gather_blocks(value_cache, group.block_tables, group.first_block).transpose(1, 2)
    o = attend(q, k, v, group.bias, softmax.shaped(1, num_kv_heads, num_heads // num_kv_heads, 1))
    return o.reshape(num_decodes, num_heads, head_dim)


def write_kv_cache(kv_caches, cache_index: int, slot_mapping: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """This step's keys and values [1, kv_heads, T, dim] into cache tensor `cache_index` (one index_copy_
    per cache, at slot_mapping); returns that (key, value) cache."""
    key_cache, value_cache = kv_caches[cache_index]
    slots_view = (-1, key_cache.shape[2], key_cache.shape[3])
    key_cache.view(slots_view).index_copy_(0, slot_mapping, key[0].transpose(0, 1))
    value_cache.view(slots_view).index_copy_(0, slot_mapping, value[0].transpose(0, 1))
    return key_cache, value_cache


def layer_softmax(scaling: float | None, kwargs: dict) -> Softmax:
    """The softmax a layer asks for through the keywords transformers' model code passes."""
    sinks = kwargs.get("s_aux")
    return Softmax(scaling, kwargs.get("softcap"), sinks.detach() if sinks is not None else None)


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
    if meta is None:
        raise RuntimeError("paged attention needs attention_metadata; the engine's model runner passes it")
    group_index, cache_index = meta.placement[module.layer_idx]
    group = meta.groups[group_index]
    key_cache, value_cache = write_kv_cache(meta.kv_caches, cache_index, group.slot_mapping, key, value)
    softmax = layer_softmax(scaling, kwargs)
    q = query[0]  # [heads, T, dim]
    out = torch.empty(q.shape[1], q.shape[0], q.shape[2], dtype=q.dtype, device=q.device)
    for chunk in group.prefills:
        rows = slice(chunk.query_start, chunk.query_start + chunk.query_len)
        out[rows] = _attend_prefill(q[:, rows], key[0, :, rows], value[0, :, rows], key_cache, value_cache, chunk, softmax)
    for decodes in group.decodes:
        out[decodes.rows] = _attend_decode(q[:, decodes.rows], key_cache, value_cache, decodes, softmax)
    return out.unsqueeze(0), None


AttentionInterface.register(ATTENTION_NAME, paged_attention)
