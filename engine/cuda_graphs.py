"""CUDA graphs for decode steps (the triton backend on CUDA).

A decode step launches a few hundred small kernels; at batch 1 launching them costs more than
running them. Each batch size in BATCH_SIZES is captured once, after the KV cache exists, and a
step with n single-token sequences replays the smallest captured size >= n. The graphs read their
inputs from fixed buffers that each replay fills (one slot mapping and block table per KV cache
group); rows past n are padding: query length 0 (the attention kernel skips them) and their keys
written to the null block, which no sequence owns.
If capture fails the engine logs why and decodes without graphs.
"""

import logging

import torch

from engine.block_manager import blocks_for
from engine.attention_metadata import PackedMetadata, PackedStep

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


class DecodeGraphs:
    def __init__(self, runner, sizes: list[int], padding_block: int):
        device = runner.device
        self.runner = runner
        self.sizes = sizes
        self.padding_block = padding_block
        self.padding_slot = padding_block * runner.block_size
        largest = sizes[-1]
        self.input_ids = torch.zeros(largest, dtype=torch.long, device=device)
        self.positions = torch.zeros(largest, dtype=torch.long, device=device)
        groups = len(runner.layout.groups)
        self.slot_mapping = [torch.full((largest,), self.padding_slot, dtype=torch.long, device=device)
                             for _ in range(groups)]
        self.query_start = torch.arange(largest, dtype=torch.int32, device=device)
        self.query_len = torch.zeros(largest, dtype=torch.int32, device=device)
        self.context_len = torch.zeros(largest, dtype=torch.int32, device=device)
        width = blocks_for(runner.max_model_len, runner.block_size)
        self.block_tables = [torch.zeros(largest, width, dtype=torch.int32, device=device) for _ in range(groups)]
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    @classmethod
    def capture(cls, runner, padding_block: int) -> "DecodeGraphs | None":
        max_num_seqs = runner.config.max_num_seqs
        sizes = [b for b in BATCH_SIZES if b < max_num_seqs] + [max_num_seqs]
        graphs = cls(runner, sizes, padding_block)
        try:
            graphs._capture_all()
        except RuntimeError as e:
            log.warning("CUDA graph capture failed, decoding without graphs: %s", e)
            return None
        log.info("captured CUDA graphs for decode batch sizes %s", ", ".join(map(str, sizes)))
        return graphs

    def _metadata(self, batch_size: int) -> PackedStep:
        n = batch_size
        groups = [PackedMetadata(slots[:n], self.query_start[:n], self.query_len[:n], self.context_len[:n], tables[:n],
                                 max_query_len=1)
                  for slots, tables in zip(self.slot_mapping, self.block_tables)]
        runner = self.runner
        return PackedStep(runner.kv_caches, runner.placement, groups, runner.layout.specs())

    @torch.inference_mode()
    def _capture_all(self) -> None:
        # Capture runs the real kernels: every row gets one token of context in the spare block.
        self.query_len.fill_(1)
        self.context_len.fill_(1)
        for tables in self.block_tables:
            tables[:, 0] = self.padding_block
        pool = None
        for size in reversed(self.sizes):  # largest first: the smaller graphs reuse its memory pool
            meta = self._metadata(size)
            self.runner.forward(self.input_ids[:size], self.positions[:size], meta, 0)  # compile, settle allocations
            torch.cuda.synchronize(self.runner.device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.logits[size] = self.runner.forward(self.input_ids[:size], self.positions[:size], meta, 0)
            pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize(self.runner.device)
        self.query_len.zero_()
        self.context_len.zero_()

    def fits(self, step: PackedStep) -> bool:
        tables = step.groups[0].block_tables
        return (
            step.max_query_len == 1
            and tables.shape[0] <= self.sizes[-1]
            and tables.shape[1] <= self.block_tables[0].shape[1]
        )

    def replay(self, input_ids: torch.Tensor, positions: torch.Tensor, step: PackedStep) -> torch.Tensor:
        """Logits [n, vocab] for n decode tokens, packed as the runner packs them."""
        n = input_ids.shape[0]
        size = next(b for b in self.sizes if b >= n)
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        first = step.groups[0]
        self.query_len[:n].copy_(first.query_len)
        self.query_len[n:size].zero_()
        self.context_len[:n].copy_(first.context_len)
        self.context_len[n:size].zero_()
        for meta, slots, tables in zip(step.groups, self.slot_mapping, self.block_tables):
            slots[:n].copy_(meta.slot_mapping)
            slots[n:size].fill_(self.padding_slot)
            tables[:n, : meta.block_tables.shape[1]].copy_(meta.block_tables)
        self.graphs[size].replay()
        return self.logits[size][:n]
