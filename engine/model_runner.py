"""Turns one scheduled batch into logits: packs the tokens, runs the model, keeps the KV cache.

The portable torch path: it runs on CPU (the reference for tests) and on CUDA.
"""

import torch

from engine.attention import ATTENTION_NAME, AttentionMetadata, DecodeGroup, PrefillChunk
from engine.block_manager import blocks_for
from engine.config import EngineConfig
from engine.loader import LoadedModel
from engine.scheduler import ScheduledSequence

# Decode attention gathers each group's contexts padded to its longest: a new group starts when a
# context is shorter than this fraction of the group's longest (at most MAX_DECODE_GROUPS groups).
DECODE_GROUP_FILL = 0.75
MAX_DECODE_GROUPS = 4


def head_dim(hf_config) -> int:
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


def kv_bytes_per_block(hf_config, block_size: int, dtype: torch.dtype) -> int:
    per_token = 2 * hf_config.num_hidden_layers * hf_config.num_key_value_heads * head_dim(hf_config)
    return per_token * block_size * dtype.itemsize


class ModelRunner:
    def __init__(self, loaded: LoadedModel, config: EngineConfig):
        self.model = loaded.model
        self.device = torch.device(config.device)
        self.block_size = config.block_size
        hf = loaded.config
        dtype = config.torch_dtype
        self.num_blocks = config.num_kv_blocks or max(
            1, config.kv_cache_bytes // kv_bytes_per_block(hf, config.block_size, dtype)
        )
        shape = (self.num_blocks, config.block_size, hf.num_key_value_heads, head_dim(hf))
        self.kv_caches = [
            (torch.zeros(shape, dtype=dtype, device=self.device), torch.zeros(shape, dtype=dtype, device=self.device))
            for _ in range(hf.num_hidden_layers)
        ]
        self.model.set_attn_implementation(ATTENTION_NAME)
        self.dtype = dtype

    @torch.inference_mode()
    def embed(self, token_ids: list[int]) -> list[float]:
        """Mean-pooled last hidden state of one prompt; uses no KV cache."""
        self.model.set_attn_implementation("sdpa")
        try:
            hidden = self.model.model(input_ids=torch.tensor([token_ids], device=self.device), use_cache=False)
        finally:
            self.model.set_attn_implementation(ATTENTION_NAME)
        return hidden.last_hidden_state[0].float().mean(0).tolist()

    def _slot(self, block_table: list[int], position: int) -> int:
        return block_table[position // self.block_size] * self.block_size + position % self.block_size

    def _decode_groups(self, decodes: list[ScheduledSequence]) -> list[list[ScheduledSequence]]:
        """Decodes sorted by context length, cut where padding to the group's longest would waste a lot."""
        groups: list[list[ScheduledSequence]] = []
        for s in sorted(decodes, key=lambda s: s.seq.num_computed_tokens, reverse=True):
            starts_group = not groups or (
                len(groups) < MAX_DECODE_GROUPS
                and s.seq.num_computed_tokens < DECODE_GROUP_FILL * groups[-1][0].seq.num_computed_tokens
            )
            if starts_group:
                groups.append([s])
            else:
                groups[-1].append(s)
        return groups

    def _prepare(self, scheduled: list[ScheduledSequence]):
        """Packed input ids and positions, attention metadata, and each sequence's last row."""
        input_ids, positions, slots, chunks, groups = [], [], [], [], []
        last_row = {}
        for s in scheduled:
            if s.num_new_tokens == 1:
                continue
            seq, begin = s.seq, s.seq.num_computed_tokens
            end = begin + s.num_new_tokens
            chunks.append(PrefillChunk(len(input_ids), s.num_new_tokens, end, torch.tensor(
                seq.block_table[: blocks_for(end, self.block_size)], device=self.device)))
            input_ids.extend(seq.token_ids[begin:end])
            positions.extend(range(begin, end))
            slots.extend(self._slot(seq.block_table, p) for p in range(begin, end))
            last_row[id(s)] = len(input_ids) - 1
        for group in self._decode_groups([s for s in scheduled if s.num_new_tokens == 1]):
            context_lens = [s.seq.num_computed_tokens + 1 for s in group]
            max_blocks = blocks_for(context_lens[0], self.block_size)
            start, tables = len(input_ids), []
            for s in group:
                seq, position = s.seq, s.seq.num_computed_tokens
                table = seq.block_table[: blocks_for(position + 1, self.block_size)]
                tables.append(table + [0] * (max_blocks - len(table)))
                input_ids.append(seq.token_ids[position])
                positions.append(position)
                slots.append(self._slot(table, position))
                last_row[id(s)] = len(input_ids) - 1
            groups.append(DecodeGroup(start, torch.tensor(tables, device=self.device), self._padding_bias(context_lens, max_blocks * self.block_size)))
        meta = AttentionMetadata(self.kv_caches, torch.tensor(slots, device=self.device), chunks, groups)
        return input_ids, positions, meta, last_row

    def _padding_bias(self, context_lens: list[int], width: int) -> torch.Tensor | None:
        """-inf over the width gathered slots past each context; None when no slot is padding."""
        if all(n == width for n in context_lens):
            return None
        padding = torch.arange(width)[None, :] >= torch.tensor(context_lens)[:, None]
        bias = torch.zeros(padding.shape, dtype=self.dtype).masked_fill_(padding, float("-inf"))
        return bias[:, None, None, :].to(self.device)

    @torch.inference_mode()
    def execute(self, scheduled: list[ScheduledSequence]) -> torch.Tensor:
        """Logits [n, vocab] for the scheduled sequences that complete their known tokens, in order."""
        input_ids, positions, meta, last_token_index = self._prepare(scheduled)
        keep = [last_token_index[id(s)] for s in scheduled if s.completes_prompt]
        if not keep:
            keep = [0]  # the model needs at least one row; the caller expects none
        output = self.model(
            input_ids=torch.tensor([input_ids], device=self.device),
            position_ids=torch.tensor([positions], device=self.device),
            attention_metadata=meta,
            use_cache=False,
            logits_to_keep=torch.tensor(keep, device=self.device),
        )
        logits = output.logits[0]
        return logits if any(s.completes_prompt for s in scheduled) else logits[:0]
