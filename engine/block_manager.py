"""A fixed pool of KV blocks with reference counts, prefix caching, and one block table per KV cache group.

Plain Python, no torch: the logic is tested exhaustively without a model.

Groups (engine.kv_cache_spec): every group of layers has its own block table per sequence, all drawn
from this one pool. A sliding-window (or chunked) group gives back the blocks its next query can no
longer see; their table entries then point at the null block, block 0, which no sequence owns (its
contents are never read; CUDA graph replays write their padding rows into it).

Prefix caching: a full block is identified by the hash of (parent block's hash, its tokens, and the
content hashes of the images whose placeholders it holds), so equal hashes mean equal whole prefixes; each group registers its own block under that hash. Freed
blocks keep their hash and join the free queue (least recently freed first); a later request with
the same prefix takes them back, and an allocation that needs a block evicts the oldest one. A hit
of n blocks needs, in every full group, all n blocks and, in a window group, only the blocks its
next query sees. As in vLLM, evictable cached blocks count as free in the usage figure.

State slots (engine.state_slots): a model with recurrent layers also needs one slot per running
sequence; admission asks for both, and the usage figure counts a slot at its size in blocks. Its
prefix hits also need the recurrent states at the prefix's end (engine.state_snapshots): a hit ends
at a block whose snapshot is kept (at a prompt's last whole block, or the latest block a decode filled),
and that snapshot is copied into the sequence's slot.
"""

from collections import OrderedDict
from dataclasses import dataclass

from engine.kv_cache_spec import AttentionSpec
from engine.sequence import Sequence
from engine.state_slots import StateSlots
from engine.state_snapshots import StateSnapshots

NULL_BLOCK = 0


def blocks_for(num_tokens: int, block_size: int) -> int:
    """How many blocks hold num_tokens tokens."""
    return -(-num_tokens // block_size)


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    key: tuple[int, int] | None = None  # (group, prefix hash) while it is findable by prefix caching


@dataclass
class CachedPrefix:
    """A prefix found in the cache: its length in blocks and, per group, the blocks that hold it
    (NULL_BLOCK where a window group no longer needs the block)."""

    num_blocks: int
    tables: list[list[int]]


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 specs: list[AttentionSpec] | None = None, num_state_slots: int = 0, state_slot_blocks: float = 0.0,
                 num_state_snapshots: int = 0):
        """num_blocks: blocks for sequences; the cache tensors hold one more, the null block, at index 0.
        num_state_slots: the recurrent layers' slots (0 without any), each as large as state_slot_blocks blocks;
        num_state_snapshots: their snapshots for prefix caching (rows after the slots')."""
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.specs = specs or [AttentionSpec()]  # one per group
        self.blocks = [Block(i) for i in range(num_blocks + 1)]
        # Blocks with ref_count 0, oldest first; cached ones can still be revived by a hit.
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(1, num_blocks + 1))
        self.key_to_block: dict[tuple[int, int], int] = {}
        self.prefix_queries = 0  # tokens looked up
        self.prefix_hits = 0  # of those, found
        self.state_slots = StateSlots(num_state_slots)
        self.state_slot_blocks = state_slot_blocks
        self.snapshots = StateSnapshots(num_state_slots, num_state_snapshots)
        # A model with recurrent layers hits only where their states were kept (engine.state_snapshots).
        self.needs_snapshots = num_state_slots > 0

    @property
    def num_groups(self) -> int:
        return len(self.specs)

    @property
    def num_blocks(self) -> int:
        """Blocks sequences can hold (the null block is not one)."""
        return len(self.blocks) - 1

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        """Used share of the cache's memory: blocks, and state slots at their size in blocks."""
        slots = self.state_slots
        total = self.num_blocks + slots.num_slots * self.state_slot_blocks
        return 1.0 - (self.num_free_blocks + slots.num_free * self.state_slot_blocks) / total

    def new_tables(self) -> list[list[int]]:
        return [[] for _ in self.specs]

    def _block_hashes(self, seq: Sequence, num_blocks: int) -> list[int]:
        """Hashes of seq's first num_blocks full blocks, extended incrementally (tokens never change)."""
        hashes, size = seq.block_hashes, self.block_size
        while len(hashes) < num_blocks:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            tokens = tuple(seq.token_ids[i * size : (i + 1) * size])
            # Image placeholders are one token id whatever the image: the images' contents tell them apart. A block
            # without any is keyed by its tokens alone, so text before an image is shared with text-only prompts.
            images = seq.images.content_keys(i * size, (i + 1) * size) if seq.images is not None else ()
            hashes.append(hash((parent, tokens, images)) if images else hash((parent, tokens)))
        return hashes[:num_blocks]

    # -- prefix caching ------------------------------------------------------------------------
    def find_cached_prefix(self, seq: Sequence) -> CachedPrefix:
        """The longest prefix of seq's tokens whose blocks are cached (always leaving one token to compute)."""
        if not self.enable_prefix_caching or seq.params.prompt_logprobs is not None:
            # Prompt logprobs come from the prefill's rows, which a cache hit would skip.
            return CachedPrefix(0, self.new_tables())
        # The last token must be computed so that the step produces logits for it.
        hashes = self._block_hashes(seq, (seq.num_tokens - 1) // self.block_size)
        found = [[self.key_to_block.get((g, h)) for h in hashes] for g in range(self.num_groups)]
        n = len(hashes)
        for g, spec in enumerate(self.specs):
            if spec.is_full:  # every block of the prefix
                n = min(n, next((i for i, b in enumerate(found[g]) if b is None), n))
        windows = [(found[g], spec) for g, spec in enumerate(self.specs) if not spec.is_full]
        if self.needs_snapshots:  # the longest prefix whose window blocks are found and whose states were kept
            n = next((m for m in range(n, 0, -1) if self.snapshots.holds(hashes[m - 1])
                      and all(self._longest_window_hit(blocks, spec, m) == m for blocks, spec in windows)), 0)
        for blocks, spec in windows:  # the blocks the query after the prefix sees
            n = self._longest_window_hit(blocks, spec, n)
        tables = []
        for g, spec in enumerate(self.specs):
            first = spec.first_visible(n * self.block_size) // self.block_size
            tables.append([NULL_BLOCK] * first + found[g][first:n])
        self.prefix_queries += seq.num_tokens
        self.prefix_hits += n * self.block_size
        return CachedPrefix(n, tables)

    def _longest_window_hit(self, found: list[int | None], spec: AttentionSpec, limit: int) -> int:
        """The largest n <= limit whose last blocks, those a query at n * block_size sees, are all found."""
        run = 0  # found blocks in a row ending at block i
        runs = []
        for b in found[:limit]:
            run = run + 1 if b is not None else 0
            runs.append(run)
        for n in range(limit, 0, -1):
            first = spec.first_visible(n * self.block_size) // self.block_size
            if runs[n - 1] >= n - first:
                return n
        return 0

    def take_cached_prefix(self, seq: Sequence, cached: CachedPrefix) -> None:
        """Admission: seq holds the cached prefix's blocks (and a state slot, for a model with recurrent layers,
        into which the states at the prefix's end are copied before its first step)."""
        if self.state_slots.num_slots:
            self.state_slots.take(seq)
            if cached.num_blocks:
                self.snapshots.restore(seq.block_hashes[cached.num_blocks - 1], seq.state_slot)
        seq.block_tables = self.new_tables()
        for table, taken in zip(seq.block_tables, cached.tables):
            for block_id in taken:
                if block_id != NULL_BLOCK:
                    self._take(block_id)
                table.append(block_id)
        seq.num_cached_blocks = cached.num_blocks
        seq.num_computed_tokens = cached.num_blocks * self.block_size
        seq.num_cached_tokens = seq.num_computed_tokens

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_queue[block_id]
        block.ref_count += 1

    # -- allocation ----------------------------------------------------------------------------
    def blocks_to_admit(self, cached: CachedPrefix, num_new_tokens: int) -> int:
        """Free blocks a waiting sequence takes: new ones past the cached prefix, and cached ones now free."""
        total = cached.num_blocks * self.block_size + num_new_tokens
        new = (blocks_for(total, self.block_size) - cached.num_blocks) * self.num_groups
        revived = sum(1 for table in cached.tables for b in table if b != NULL_BLOCK and self.blocks[b].ref_count == 0)
        return new + revived

    def can_admit(self, cached: CachedPrefix, num_new_tokens: int) -> bool:
        if self.state_slots.num_slots and not self.state_slots.num_free:
            return False
        return self.blocks_to_admit(cached, num_new_tokens) <= self.num_free_blocks

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Give seq blocks for num_new_tokens more tokens; False (and no new blocks) if the pool is short.

        First every window group gives back the blocks its next query no longer sees."""
        self.free_invisible_blocks(seq)
        tables = seq.block_tables or self.new_tables()
        needed = blocks_for(seq.num_computed_tokens + num_new_tokens, self.block_size)
        if sum(max(0, needed - len(table)) for table in tables) > self.num_free_blocks:
            return False
        for table in tables:
            for _ in range(needed - len(table)):
                table.append(self._pop_free())
        seq.block_tables = tables
        return True

    def _pop_free(self) -> int:
        block_id, _ = self.free_queue.popitem(last=False)
        block = self.blocks[block_id]
        if block.key is not None:  # evict: its prefix is no longer findable
            if self.key_to_block.get(block.key) == block_id:
                del self.key_to_block[block.key]
            self.snapshots.drop(block.key[1])  # states at a prefix's end are useless without its blocks
            block.key = None
        block.ref_count = 1
        return block_id

    def free_invisible_blocks(self, seq: Sequence) -> None:
        """Window groups' blocks wholly before what the query at seq.num_computed_tokens sees: back to
        the pool (cached ones stay findable until evicted), their entries pointing at the null block."""
        for spec, table in zip(self.specs, seq.block_tables):
            if spec.is_full:
                continue
            end = min(len(table), spec.first_visible(seq.num_computed_tokens) // self.block_size)
            for i in range(end - 1, -1, -1):  # newest first: freeing stops at the last block freed before
                if table[i] == NULL_BLOCK:
                    break
                self._release(table[i])
                table[i] = NULL_BLOCK

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        assert block.ref_count >= 0, f"block {block_id} freed twice"
        if block.ref_count == 0:
            self.free_queue[block_id] = None

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the hashes of seq's blocks whose tokens are all computed."""
        num_full = seq.num_computed_tokens // self.block_size
        if not self.enable_prefix_caching or num_full == seq.num_cached_blocks:
            return  # most decode steps: the new token did not fill a block
        hashes = self._block_hashes(seq, num_full)
        for g, table in enumerate(seq.block_tables):
            for block_id, h in zip(table[seq.num_cached_blocks : num_full], hashes[seq.num_cached_blocks :]):
                block = self.blocks[block_id]
                if block_id != NULL_BLOCK and block.key is None and (g, h) not in self.key_to_block:
                    block.key = (g, h)
                    self.key_to_block[(g, h)] = block_id
        seq.num_cached_blocks = num_full
        if seq.pending_snapshot is not None:  # the token that filled its block is read now
            self._name_decode_snapshot(seq)

    # -- state snapshots (a model with recurrent layers) -----------------------------------------
    def _snapshot_blocks(self, seq: Sequence) -> int:
        """The blocks of the prefix whose states seq's prefill keeps: its prompt's whole blocks; 0: none kept."""
        return seq.num_prompt_tokens // self.block_size if self.keeps_snapshots else 0

    @property
    def keeps_snapshots(self) -> bool:
        return self.enable_prefix_caching and self.snapshots.count > 0

    def snapshot_point(self, seq: Sequence) -> int | None:
        """Where a prefill chunk of seq should end so that its states there are kept: the end of its prompt's last
        whole block, unless a snapshot for that prefix is kept already or seq is past it; None: nowhere."""
        n = self._snapshot_blocks(seq)
        if not n or seq.num_computed_tokens > n * self.block_size:
            return None
        return None if self.snapshots.holds(self._block_hashes(seq, n)[-1]) else n * self.block_size

    def keep_states(self, seq: Sequence) -> None:
        """After a step: where seq's prefill has just reached the end of its prompt's last whole block, its slot's
        states become the snapshot of that prefix; where its computed tokens past the prompt have just filled a
        block, they become its decode's snapshot (in place of the one before: a conversation's next turn needs only
        the latest), named once that block's last token is read."""
        n, computed = self._snapshot_blocks(seq), seq.num_computed_tokens
        if n and computed == n * self.block_size:
            self.snapshots.save(seq.state_slot, self._block_hashes(seq, n)[-1])
        elif self.keeps_snapshots and computed > seq.num_prompt_tokens and computed % self.block_size == 0:
            self._release_pending_snapshot(seq)
            if seq.decode_snapshot is not None:  # dropped first, so that the new one can take its row
                self.snapshots.drop(seq.decode_snapshot)
                seq.decode_snapshot = None
            row = self.snapshots.reserve(seq.state_slot)
            if row is not None:
                seq.pending_snapshot = (row, computed // self.block_size)
                self._name_decode_snapshot(seq)

    def _name_decode_snapshot(self, seq: Sequence) -> None:
        """Keep seq's reserved snapshot under its prefix's hash, once the last token of that prefix is read."""
        row, n = seq.pending_snapshot
        if seq.token_ids[n * self.block_size - 1] < 0:  # a placeholder (engine.overlap): its step is in flight
            return
        seq.pending_snapshot = None
        seq.decode_snapshot = self._block_hashes(seq, n)[-1]
        self.snapshots.name(row, seq.decode_snapshot)

    def _release_pending_snapshot(self, seq: Sequence) -> None:
        """A reserved snapshot never named (seq left, or filled another block, before its token was read)."""
        if seq.pending_snapshot is not None:
            self.snapshots.release(seq.pending_snapshot[0])
            seq.pending_snapshot = None

    def take_state_copies(self) -> list[tuple[int, int]]:
        """The snapshot copies (source row, destination row) the model runner makes before its next forward."""
        return self.snapshots.take_copies()

    def free(self, seq: Sequence) -> None:
        # Tail blocks first, so that eviction takes a prefix's end before its shared start.
        for position in reversed(range(len(seq.block_tables[0]) if seq.block_tables else 0)):
            for table in seq.block_tables:
                if table[position] != NULL_BLOCK:
                    self._release(table[position])
        seq.block_tables = []
        self._release_pending_snapshot(seq)
        self.state_slots.give_back(seq)
        seq.num_cached_blocks = 0
        seq.num_computed_tokens = 0
        seq.num_cached_tokens = 0
