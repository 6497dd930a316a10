"""What one step tells the attention layers: per KV cache group, where new keys go and what each query reads.

Built by engine.packing from the scheduled sequences, passed through model(...) as one object, and read
by the attention function of each layer for its own group (engine.kv_cache_spec), and by the recurrent
layers for their state slots (its `recurrent` field). The torch path's
metadata lists prefill chunks and decode groups; the triton path's is flat tensors for one kernel.
"""

from dataclasses import dataclass

import torch

from engine.kv_cache_spec import AttentionSpec
from engine.recurrent.metadata import RecurrentMetadata


@dataclass
class PrefillChunk:
    query_start: int
    query_len: int
    context_len: int  # tokens of the sequence in the cache after this chunk is written
    block_table: torch.Tensor  # [num_blocks] the blocks holding positions context_start..context_len
    context_start: int = 0  # first position those blocks hold: 0, or where a window's first block starts
    first_block: int | None = None  # set when those blocks are consecutive: the context is read in place
    mask: torch.Tensor | None = None  # [query_len, context_len - context_start] additive; None: the whole context, causal


@dataclass
class DecodeGroup:
    rows: slice | torch.Tensor  # the group's decode tokens in the packed batch
    block_tables: torch.Tensor  # [num_seqs, max_blocks] the visible blocks; padding points at the null block
    bias: torch.Tensor | None  # [num_seqs, 1, 1, max_blocks * block_size]: 0 where visible, -inf elsewhere
    first_block: int | None = None  # a group of one sequence whose blocks are consecutive: read in place


@dataclass
class GroupMetadata:
    """One KV cache group's view of the step (torch path)."""

    slot_mapping: torch.Tensor  # [T]: where each new token's key and value go (block * block_size + offset)
    prefills: list[PrefillChunk]
    decodes: list[DecodeGroup]


@dataclass
class AttentionMetadata:
    """The torch path's step."""

    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]  # cache tensor j: key, value [blocks, block_size, kv_heads, dim]
    placement: dict[int, tuple[int, int]]  # layer -> (group, cache tensor)
    groups: list[GroupMetadata]
    recurrent: RecurrentMetadata | None = None  # for a model with recurrent layers (engine.recurrent)


@dataclass
class PackedMetadata:
    """One KV cache group's view of the step (triton path): every sequence a run of query rows."""

    slot_mapping: torch.Tensor  # [T] int64: where each new token's key and value go
    query_start: torch.Tensor  # [S] int32: first packed row of each sequence
    query_len: torch.Tensor  # [S] int32: its new tokens this step (0: a padding sequence)
    context_len: torch.Tensor  # [S] int32: its tokens in the cache once this step's are written
    block_tables: torch.Tensor  # [S, max_blocks] int32: this group's blocks (the null block where freed)
    max_query_len: int  # host-side, so launching needs no device sync
    # [T] int32: the last key each query sees where some see past their own position (an image's placeholders that
    # attend to each other both ways, engine.prompt_images: up to the image's last); None: each its own position
    last_key: torch.Tensor | None = None


@dataclass
class PackedStep:
    """The triton path's step."""

    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
    placement: dict[int, tuple[int, int]]
    groups: list[PackedMetadata]
    specs: list[AttentionSpec]
    recurrent: RecurrentMetadata | None = None  # for a model with recurrent layers (engine.recurrent)

    @property
    def max_query_len(self) -> int:
        return self.groups[0].max_query_len

    def for_layer(self, layer: int) -> tuple[PackedMetadata, AttentionSpec, tuple[torch.Tensor, torch.Tensor]]:
        group, cache = self.placement[layer]
        return self.groups[group], self.specs[group], self.kv_caches[cache]
