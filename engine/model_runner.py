"""Turns one scheduled batch into logits: packs the tokens, runs the model, keeps the KV cache.

The portable torch path: it runs on CPU (the reference for tests) and on CUDA.
"""

import torch

from engine.attention import ATTENTION_NAME, AttentionMetadata, PrefillChunk
from engine.config import EngineConfig
from engine.loader import LoadedModel
from engine.scheduler import ScheduledSequence


def kv_bytes_per_block(hf_config, block_size: int, dtype: torch.dtype) -> int:
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    per_token = 2 * hf_config.num_hidden_layers * hf_config.num_key_value_heads * head_dim
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
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        shape = (self.num_blocks, config.block_size, hf.num_key_value_heads, head_dim)
        self.kv_caches = [
            (torch.zeros(shape, dtype=dtype, device=self.device), torch.zeros(shape, dtype=dtype, device=self.device))
            for _ in range(hf.num_hidden_layers)
        ]
        self.model.set_attn_implementation(ATTENTION_NAME)

    @torch.inference_mode()
    def embed(self, token_ids: list[int]) -> list[float]:
        """Mean-pooled last hidden state of one prompt; uses no KV cache."""
        self.model.set_attn_implementation("sdpa")
        try:
            hidden = self.model.model(input_ids=torch.tensor([token_ids], device=self.device), use_cache=False)
        finally:
            self.model.set_attn_implementation(ATTENTION_NAME)
        return hidden.last_hidden_state[0].float().mean(0).tolist()

    def _slots(self, block_table: list[int], start: int, end: int) -> torch.Tensor:
        """Cache slots of token positions [start, end) of a sequence."""
        positions = torch.arange(start, end)
        table = torch.tensor(block_table, dtype=torch.long)
        return table[positions // self.block_size] * self.block_size + positions % self.block_size

    @torch.inference_mode()
    def execute(self, scheduled: list[ScheduledSequence]) -> torch.Tensor:
        """Logits [n, vocab] for the scheduled sequences that complete their known tokens, in order."""
        prefills = [s for s in scheduled if s.num_new_tokens > 1]
        decodes = [s for s in scheduled if s.num_new_tokens == 1]
        input_ids, positions, slot_mapping, chunks = [], [], [], []
        last_token_index = {}
        start = 0
        for s in prefills:
            seq, begin = s.seq, s.seq.num_computed_tokens
            end = begin + s.num_new_tokens
            input_ids.extend(seq.token_ids[begin:end])
            positions.extend(range(begin, end))
            slot_mapping.append(self._slots(seq.block_table, begin, end))
            table = torch.tensor(seq.block_table[: -(-end // self.block_size)], device=self.device)
            chunks.append(PrefillChunk(start, s.num_new_tokens, end, table))
            start += s.num_new_tokens
            last_token_index[id(s)] = start - 1

        decode_tables = decode_bias = None
        if decodes:
            context_lens = torch.tensor([s.seq.num_computed_tokens + 1 for s in decodes])
            max_blocks = -(-int(context_lens.max()) // self.block_size)
            tables, decode_slots = [], []
            for row, s in enumerate(decodes):
                position = s.seq.num_computed_tokens
                input_ids.append(s.seq.token_ids[position])
                positions.append(position)
                table = s.seq.block_table[: -(-(position + 1) // self.block_size)]
                tables.append(table + [0] * (max_blocks - len(table)))
                decode_slots.append(table[position // self.block_size] * self.block_size + position % self.block_size)
                last_token_index[id(s)] = start + row
            slot_mapping.append(torch.tensor(decode_slots))
            padding = torch.arange(max_blocks * self.block_size)[None, :] >= context_lens[:, None]
            bias = torch.zeros(padding.shape, dtype=self.kv_caches[0][0].dtype).masked_fill_(padding, float("-inf"))
            decode_tables = torch.tensor(tables, device=self.device)
            decode_bias = bias[:, None, None, :].to(self.device)

        meta = AttentionMetadata(
            kv_caches=self.kv_caches,
            slot_mapping=torch.cat(slot_mapping).to(self.device),
            prefills=chunks,
            decode_start=start,
            decode_block_tables=decode_tables,
            decode_bias=decode_bias,
        )
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
