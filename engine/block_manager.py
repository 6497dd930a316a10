"""A fixed pool of KV blocks with reference counts and prefix caching.

Plain Python, no torch: the logic is tested exhaustively without a model.

Prefix caching: a full block is identified by the hash of (parent block's hash, its tokens), so
equal hashes mean equal whole prefixes. Freed blocks keep their hash and join the free queue
(least recently freed first); a later request with the same prefix takes them back, and an
allocation that needs a block evicts the oldest one. As in vLLM, evictable cached blocks count
as free in the usage figure.
"""

from collections import OrderedDict
from dataclasses import dataclass

from engine.sequence import Sequence


def blocks_for(num_tokens: int, block_size: int) -> int:
    """How many blocks hold num_tokens tokens."""
    return -(-num_tokens // block_size)


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # Blocks with ref_count 0, oldest first; cached ones can still be revived by a hit.
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.hash_to_block: dict[int, int] = {}
        self.prefix_queries = 0  # tokens looked up
        self.prefix_hits = 0  # of those, found

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def _block_hashes(self, seq: Sequence, num_blocks: int) -> list[int]:
        """Hashes of seq's first num_blocks full blocks, extended incrementally (tokens never change)."""
        hashes, size = seq.block_hashes, self.block_size
        while len(hashes) < num_blocks:
            i = len(hashes)
            parent = hashes[-1] if hashes else None
            hashes.append(hash((parent, tuple(seq.token_ids[i * size : (i + 1) * size]))))
        return hashes[:num_blocks]

    def find_cached_prefix(self, seq: Sequence) -> list[int]:
        """Blocks already holding a prefix of seq's tokens (always leaving one token to compute)."""
        if not self.enable_prefix_caching or seq.params.prompt_logprobs is not None:
            return []  # prompt logprobs come from the prefill's rows, which a cache hit would skip
        # The last token must be computed so that the step produces logits for it.
        max_blocks = (seq.num_tokens - 1) // self.block_size
        found = []
        for h in self._block_hashes(seq, max_blocks):
            block_id = self.hash_to_block.get(h)
            if block_id is None:
                break
            found.append(block_id)
        self.prefix_queries += seq.num_tokens
        self.prefix_hits += len(found) * self.block_size
        return found

    def num_blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, blocks_for(total, self.block_size) - len(seq.block_table))

    def can_allocate(self, num_blocks: int, cached_blocks: list[int] = ()) -> bool:
        # Cached blocks that are free now stop being free once taken.
        revived = sum(1 for b in cached_blocks if self.blocks[b].ref_count == 0)
        return num_blocks + revived <= self.num_free_blocks

    def take_cached_prefix(self, seq: Sequence, cached_blocks: list[int]) -> None:
        for block_id in cached_blocks:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_queue[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
        seq.num_cached_blocks = len(cached_blocks)
        seq.num_computed_tokens = len(cached_blocks) * self.block_size
        seq.num_cached_tokens = seq.num_computed_tokens

    def allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Give seq blocks for num_new_tokens more tokens; False (and no change) if the pool is short."""
        needed = self.num_blocks_needed(seq, num_new_tokens)
        if needed > self.num_free_blocks:
            return False
        for _ in range(needed):
            block_id, _ = self.free_queue.popitem(last=False)
            block = self.blocks[block_id]
            if block.hash is not None:  # evict: its prefix is no longer findable
                if self.hash_to_block.get(block.hash) == block_id:
                    del self.hash_to_block[block.hash]
                block.hash = None
            block.ref_count = 1
            seq.block_table.append(block_id)
        return True

    def cache_full_blocks(self, seq: Sequence) -> None:
        """Register the hashes of seq's blocks whose tokens are all computed."""
        num_full = seq.num_computed_tokens // self.block_size
        if not self.enable_prefix_caching or num_full == seq.num_cached_blocks:
            return  # most decode steps: the new token did not fill a block
        hashes = self._block_hashes(seq, num_full)
        for block_id, h in zip(seq.block_table[seq.num_cached_blocks : num_full], hashes[seq.num_cached_blocks :]):
            block = self.blocks[block_id]
            if block.hash is None and h not in self.hash_to_block:
                block.hash = h
                self.hash_to_block[h] = block_id
        seq.num_cached_blocks = num_full

    def free(self, seq: Sequence) -> None:
        # Tail blocks first, so that eviction takes a prefix's end before its shared start.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                self.free_queue[block_id] = None
        seq.block_table = []
        seq.num_cached_blocks = 0
        seq.num_computed_tokens = 0
        seq.num_cached_tokens = 0
