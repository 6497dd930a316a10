"""One scheduled batch packed into a row of tokens, with what each KV cache group's attention reads.

The token ids and positions are packed once: prefill chunks in schedule order, then decode tokens
sorted by position, longest context first. Per KV cache group (engine.kv_cache_spec) come the slots
the new keys go to and, for the torch path, what each query reads: a prefill chunk's visible blocks
and its mask (where an image's placeholders attend to each other both ways, engine.prompt_images, each
of them also sees the image's later ones), and decode groups of similar visible length (less padding);
for the triton path, the group's block tables (and, where an image's placeholders see each other, the
last key each query sees). Groups of one spec share the geometry (windows, masks, cuts); only their
block ids differ.

Per sequence only its Python lists are read; positions, slots and block tables are numpy arrays
built whole (at batch 256 the per-token Python arithmetic was most of a step's host time).

For a model with recurrent layers, both paths add which rows are whose and each sequence's state slot
(engine.recurrent.metadata).
"""

from dataclasses import dataclass

import numpy as np
import torch

from engine.attention_metadata import (AttentionMetadata, DecodeGroup, GroupMetadata, PackedMetadata, PackedStep,
                                       PrefillChunk)
from engine.block_manager import NULL_BLOCK, blocks_for
from engine.kv_cache_spec import AttentionSpec
from engine.overlap import to_device
from engine.recurrent.metadata import RecurrentMetadata, RecurrentPrefill
from engine.recurrent.states import RecurrentStates
from engine.scheduler import ScheduledSequence

# Decode attention gathers each group's contexts padded to its longest: a new group starts when a
# context is shorter than this fraction of the group's longest (at most MAX_DECODE_GROUPS groups).
DECODE_GROUP_FILL = 0.75
MAX_DECODE_GROUPS = 4


def first_visible(spec: AttentionSpec, positions: np.ndarray) -> np.ndarray:
    """AttentionSpec.first_visible over an array of positions."""
    if spec.sliding_window is not None:
        return np.maximum(positions - spec.sliding_window + 1, 0)
    if spec.attention_chunk is not None:
        return positions - positions % spec.attention_chunk
    return np.zeros_like(positions)


def first_of_consecutive(table: list[int]) -> int | None:
    """The first block when the table is a run of consecutive blocks, else None."""
    if not table or table[-1] - table[0] != len(table) - 1 or table != list(range(table[0], table[-1] + 1)):
        return None
    return table[0]


@dataclass
class _Decodes:
    """The decode tokens of a step, in packed order, and their positions."""

    seqs: list[ScheduledSequence]
    positions: np.ndarray
    first_row: int


class BatchPacker:
    def __init__(self, specs: list[AttentionSpec], block_size: int, device: torch.device, dtype: torch.dtype):
        self.specs = specs
        self.block_size = block_size
        self.device = device
        self.dtype = dtype

    def _slots(self, table: list[int], positions: np.ndarray) -> np.ndarray:
        """Cache slots (block * block_size + offset) of a sequence's positions."""
        blocks = np.asarray(table[int(positions[0]) // self.block_size: int(positions[-1]) // self.block_size + 1],
                            dtype=np.int64)
        offsets = positions // self.block_size - positions[0] // self.block_size
        return blocks[offsets] * self.block_size + positions % self.block_size

    def _tensor(self, parts: list[np.ndarray]) -> torch.Tensor:
        return to_device(torch.from_numpy(np.concatenate(parts)), self.device)

    def _recurrent(self, rows: list[tuple[ScheduledSequence, int]], states: RecurrentStates | None):
        """For the recurrent layers, from (sequence, its first row) in packed order: each prefill's rows and slot,
        the one-token sequences' rows and slots together, and every sequence's boundaries and slot."""
        if states is None:
            return None

        def tensor(values: list, dtype=torch.int64) -> torch.Tensor:
            return to_device(torch.tensor(values, dtype=dtype), self.device)

        fresh = [s.seq.num_computed_tokens == 0 for s, _ in rows]  # the sequence starts here: zeros, not its slot
        prefills = [RecurrentPrefill(slice(start, start + s.num_new_tokens), s.seq.state_slot, not new)
                    for (s, start), new in zip(rows, fresh) if s.num_new_tokens > 1]
        decodes = [(start, s.seq.state_slot, new) for (s, start), new in zip(rows, fresh) if s.num_new_tokens == 1]
        first = decodes[0][0] if decodes else 0
        if [d[0] for d in decodes] == list(range(first, first + len(decodes))):  # the torch path packs them in a run
            decode_rows = slice(first, first + len(decodes))
        else:
            decode_rows = tensor([d[0] for d in decodes])
        decode_fresh = [d[2] for d in decodes]
        return RecurrentMetadata(
            states, prefills, decode_rows, tensor([d[1] for d in decodes]),
            tensor(decode_fresh, torch.bool) if any(decode_fresh) else None,
            tensor([start for _, start in rows] + [sum(s.num_new_tokens for s, _ in rows)]),
            tensor([s.seq.state_slot for s, _ in rows]), tensor(fresh, torch.bool) if any(fresh) else None)

    # -- the torch path ------------------------------------------------------------------------
    def torch_batch(self, scheduled: list[ScheduledSequence], kv_caches, placement, states: RecurrentStates | None = None):
        """(input ids, positions, AttentionMetadata, each sequence's last row by id())."""
        input_ids, positions, last_row, num_rows = [], [], {}, 0
        prefills = [s for s in scheduled if s.num_new_tokens > 1]
        for s in prefills:
            begin = s.seq.num_computed_tokens
            input_ids.append(np.asarray(s.seq.token_ids[begin: begin + s.num_new_tokens], dtype=np.int64))
            positions.append(np.arange(begin, begin + s.num_new_tokens, dtype=np.int64))
            num_rows += s.num_new_tokens
            last_row[id(s)] = num_rows - 1
        decode_seqs = sorted((s for s in scheduled if s.num_new_tokens == 1),
                             key=lambda s: s.seq.num_computed_tokens, reverse=True)
        decodes = _Decodes(decode_seqs, np.fromiter((s.seq.num_computed_tokens for s in decode_seqs), np.int64,
                                                    len(decode_seqs)), num_rows)
        if decode_seqs:
            input_ids.append(np.fromiter((s.seq.token_ids[s.seq.num_computed_tokens] for s in decode_seqs), np.int64,
                                         len(decode_seqs)))
            positions.append(decodes.positions)
            last_row.update((id(s), num_rows + i) for i, s in enumerate(decode_seqs))
        geometry: dict[AttentionSpec, tuple] = {}
        groups = []
        for g, spec in enumerate(self.specs):
            if spec not in geometry:  # groups of one spec share masks, windows and cuts
                geometry[spec] = (self._prefill_geometry(spec, prefills), self._decode_geometry(spec, decodes))
            prefill_geometry, decode_geometry = geometry[spec]
            slots = [self._slots(s.seq.block_tables[g], p) for s, p in zip(prefills, positions)]
            slots += [self._decode_slots(g, decodes)] if decode_seqs else []
            groups.append(GroupMetadata(self._tensor(slots),
                                        self._prefill_chunks(g, prefills, prefill_geometry),
                                        self._decode_groups(g, decodes, decode_geometry)))
        rows = [(s, last_row[id(s)] - s.num_new_tokens + 1) for s in prefills + decode_seqs]
        meta = AttentionMetadata(kv_caches, placement, groups, self._recurrent(rows, states))
        return self._tensor(input_ids), self._tensor(positions), meta, last_row

    def _prefill_geometry(self, spec: AttentionSpec, prefills: list[ScheduledSequence]) -> list[tuple]:
        """Per chunk: (first visible block, mask)."""
        out = []
        for s in prefills:
            begin, n = s.seq.num_computed_tokens, s.num_new_tokens
            first_block = spec.first_visible(begin) // self.block_size
            images = s.seq.images
            spans = [(a.start, a.end) for a in images.spans if begin < a.end and a.start < begin + n] \
                if images is not None and images.bidirectional else []
            out.append((first_block, self._prefill_mask(spec, begin, n, first_block * self.block_size, spans)))
        return out

    def _prefill_mask(self, spec: AttentionSpec, begin: int, n: int, context_start: int,
                      spans: list[tuple[int, int]] = ()) -> torch.Tensor | None:
        """0 where query i (at begin + i) sees key j (at context_start + j), -inf elsewhere; None: plain causal
        over the whole context (the chunk is the sequence's start and the layer sees all of it). spans: images
        [start, end) in the chunk whose placeholders also see those after them (the chunk holds them whole)."""
        if spec.is_full and begin == 0 and not spans:
            return None
        q_pos = np.arange(begin, begin + n)
        k_pos = np.arange(context_start, begin + n)
        seen = k_pos[None, :] <= q_pos[:, None]
        for start, end in spans:
            seen |= ((q_pos >= start) & (q_pos < end))[:, None] & ((k_pos >= start) & (k_pos < end))[None, :]
        allowed = seen & (k_pos[None, :] >= first_visible(spec, q_pos)[:, None])
        bias = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill_(torch.from_numpy(~allowed), float("-inf"))
        return to_device(bias, self.device)

    def _prefill_chunks(self, g: int, prefills: list[ScheduledSequence], geometry: list[tuple]) -> list[PrefillChunk]:
        chunks, row = [], 0
        for s, (first_block, mask) in zip(prefills, geometry):
            end = s.seq.num_computed_tokens + s.num_new_tokens
            table = s.seq.block_tables[g][first_block: blocks_for(end, self.block_size)]
            chunks.append(PrefillChunk(row, s.num_new_tokens, end, to_device(torch.tensor(table), self.device),
                                       first_block * self.block_size, first_of_consecutive(table), mask))
            row += s.num_new_tokens
        return chunks

    def _decode_slots(self, g: int, decodes: _Decodes) -> np.ndarray:
        p = decodes.positions
        blocks = np.fromiter((s.seq.block_tables[g][int(q) // self.block_size] for s, q in zip(decodes.seqs, p)),
                             np.int64, len(p))
        return blocks * self.block_size + p % self.block_size

    def _decode_geometry(self, spec: AttentionSpec, decodes: _Decodes) -> list[tuple]:
        """Runs of the packed decodes: (rows start, end, first visible block per row, blocks per row, bias)."""
        p = decodes.positions
        if not len(p):
            return []
        first = first_visible(spec, p) // self.block_size
        count = p // self.block_size - first + 1
        runs, start, longest = [], 0, count[0]
        for i in range(1, len(p)):
            if len(runs) < MAX_DECODE_GROUPS - 1 and count[i] < DECODE_GROUP_FILL * longest:
                runs.append((start, i))
                start, longest = i, count[i]
            longest = max(longest, count[i])
        runs.append((start, len(p)))
        out = []
        for a, b in runs:
            width = int(count[a:b].max())
            lo = first_visible(spec, p[a:b]) - first[a:b] * self.block_size
            hi = p[a:b] - first[a:b] * self.block_size
            out.append((a, b, first[a:b], count[a:b], self._decode_bias(lo, hi, width * self.block_size)))
        return out

    def _decode_bias(self, lo: np.ndarray, hi: np.ndarray, width: int) -> torch.Tensor | None:
        """-inf outside each row's visible slots [lo, hi] of the width gathered; None when every slot is visible."""
        if not lo.any() and (hi == width - 1).all():
            return None
        slots = np.arange(width)[None, :]
        hidden = (slots < lo[:, None]) | (slots > hi[:, None])
        bias = torch.zeros(hidden.shape, dtype=self.dtype).masked_fill_(torch.from_numpy(hidden), float("-inf"))
        return to_device(bias[:, None, None, :], self.device)

    def _decode_groups(self, g: int, decodes: _Decodes, geometry: list[tuple]) -> list[DecodeGroup]:
        groups = []
        for a, b, first, count, bias in geometry:
            tables = np.full((b - a, int(count.max())), NULL_BLOCK, dtype=np.int64)
            for i, s in enumerate(decodes.seqs[a:b]):
                tables[i, : count[i]] = s.seq.block_tables[g][first[i]: first[i] + count[i]]
            lone = first_of_consecutive(tables[0].tolist()) if b - a == 1 else None
            rows = slice(decodes.first_row + a, decodes.first_row + b)
            groups.append(DecodeGroup(rows, to_device(torch.from_numpy(tables), self.device), bias, lone))
        return groups

    # -- the triton path -----------------------------------------------------------------------
    def triton_batch(self, scheduled: list[ScheduledSequence], kv_caches, placement,
                     states: RecurrentStates | None = None):
        """(input ids, positions, PackedStep, each sequence's last row by id()): sequences in schedule order,
        their rows and slots computed by tensor ops."""
        input_ids, starts, lens, contexts = [], [], [], []
        for s in scheduled:
            begin = s.seq.num_computed_tokens
            starts.append(len(input_ids))
            lens.append(s.num_new_tokens)
            contexts.append(begin + s.num_new_tokens)
            input_ids.extend(s.seq.token_ids[begin: begin + s.num_new_tokens])
        query_start = torch.tensor(starts, dtype=torch.int32)
        query_len = torch.tensor(lens, dtype=torch.int32)
        context_len = torch.tensor(contexts, dtype=torch.int32)
        seq_of_row = torch.arange(len(scheduled)).repeat_interleave(query_len)
        # Row r of sequence s holds position context_len[s] - query_len[s] + (r - query_start[s]).
        first_position = (context_len - query_len - query_start).long()
        positions = first_position[seq_of_row] + torch.arange(len(input_ids))
        width = max(blocks_for(c, self.block_size) for c in contexts)
        device, groups = self.device, []
        shared = [to_device(t, device) for t in (query_start, query_len, context_len)]
        last_key = self._last_keys(scheduled, starts, positions)
        for g in range(len(self.specs)):
            tables = [s.seq.block_tables[g][: blocks_for(c, self.block_size)] for s, c in zip(scheduled, contexts)]
            block_tables = torch.tensor([t + [NULL_BLOCK] * (width - len(t)) for t in tables], dtype=torch.int32)
            slots = (block_tables[seq_of_row, positions // self.block_size].long() * self.block_size
                     + positions % self.block_size)
            groups.append(PackedMetadata(to_device(slots, device), *shared, to_device(block_tables, device), max(lens),
                                         last_key))
        step = PackedStep(kv_caches, placement, groups, self.specs, self._recurrent(list(zip(scheduled, starts)), states))
        last_row = {id(s): start + n - 1 for s, start, n in zip(scheduled, starts, lens)}
        return to_device(torch.tensor(input_ids), device), to_device(positions, device), step, last_row

    def _last_keys(self, scheduled: list[ScheduledSequence], starts: list[int],
                   positions: torch.Tensor) -> torch.Tensor | None:
        """The last key each packed query sees, where an image's placeholders attend to each other both ways (as the
        torch path's masks: up to the image's last placeholder within the chunk); None when the step has none."""
        last_key = None
        for s, start in zip(scheduled, starts):
            images, begin = s.seq.images, s.seq.num_computed_tokens
            if images is None or not images.bidirectional:
                continue
            end = begin + s.num_new_tokens
            for span in images.spans:
                if begin < span.end and span.start < end:
                    if last_key is None:
                        last_key = positions.to(torch.int32, copy=True)
                    first, last = max(span.start, begin), min(span.end, end)
                    last_key[start + first - begin: start + last - begin] = last - 1
        return None if last_key is None else to_device(last_key, self.device)
