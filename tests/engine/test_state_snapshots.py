"""Snapshots of recurrent states at block boundaries: the pool's bookkeeping, and the block manager's hits, which end
only where a snapshot is kept (the engine end to end: tests/engine/test_architectures.py)."""

from engine.block_manager import BlockManager
from engine.overlap import placeholder
from engine.scheduler import Scheduler
from engine.state_snapshots import StateSnapshots
from tests.engine.test_block_manager import BLOCK, make_seq

SLOTS = 2  # snapshot rows follow the slots' rows


def hybrid(num_blocks: int = 32, snapshots: int = 2) -> BlockManager:
    return BlockManager(num_blocks, BLOCK, num_state_slots=SLOTS, state_slot_blocks=1.0, num_state_snapshots=snapshots)


def prefill(bm: BlockManager, seq) -> None:
    """Admit seq and compute its prompt as the engine's steps do: a chunk to the end of its last whole block, where
    its states are kept, and one to its end."""
    cached = bm.find_cached_prefix(seq)
    bm.take_cached_prefix(seq, cached)
    assert bm.allocate(seq, seq.num_tokens - seq.num_computed_tokens)
    point = bm.snapshot_point(seq)
    for end in ([point] if point is not None else []) + [seq.num_tokens]:
        seq.num_computed_tokens = end
        bm.cache_full_blocks(seq)
        bm.keep_states(seq)


def decode(bm: BlockManager, seq, tokens) -> None:
    """Compute tokens one step each, as the engine's decode does: each the token the step before sampled, appended
    then computed; a placeholder is one still on the device (engine.overlap), its block not cached until it is read."""
    for token in tokens:
        seq.append_token(token)
        assert bm.allocate(seq, 1)
        seq.num_computed_tokens += 1
        if token >= 0:
            bm.cache_full_blocks(seq)
        bm.keep_states(seq)


def test_the_pool_saves_restores_and_gives_the_least_recently_used_row_to_a_new_snapshot():
    pool = StateSnapshots(first_row=SLOTS, count=2)
    pool.save(0, 111)
    pool.save(1, 222)
    pool.save(1, 222)  # kept already: no second copy
    pool.restore(111, 1)  # 111 is now the most recently used
    pool.save(0, 333)  # the pool is full: 222's row goes
    assert pool.take_copies() == [(0, 2), (1, 3), (2, 1), (0, 3)] and pool.take_copies() == []
    assert pool.holds(111) and pool.holds(333) and not pool.holds(222) and len(pool) == 2
    pool.drop(111)
    pool.drop(111)  # dropping what is gone is harmless
    pool.save(1, 444)
    assert pool.take_copies() == [(1, 2)] and len(pool) == 2


def test_a_chunk_ends_at_the_prompts_last_whole_block_once_and_its_states_are_kept_there():
    bm = hybrid()
    scheduler = Scheduler(bm, max_num_seqs=2, max_num_batched_tokens=64, max_waiting=4)
    seq = make_seq(range(1, 12))  # 11 tokens: two whole blocks
    scheduler.add(seq)
    assert [s.num_new_tokens for s in scheduler.schedule().scheduled] == [8]  # cut at the snapshot point
    seq.num_computed_tokens = 8
    bm.keep_states(seq)
    assert bm.take_state_copies() == [(seq.state_slot, SLOTS)]
    assert bm.snapshot_point(seq) is None  # kept: the next chunk runs to the prompt's end
    assert [s.num_new_tokens for s in scheduler.schedule().scheduled] == [3]


def test_a_hit_ends_at_a_kept_snapshot_and_restores_it_into_the_new_slot():
    bm = hybrid()
    first = make_seq(list(range(1, 11)), "first")  # 10 tokens: snapshot after 8
    prefill(bm, first)
    assert bm.take_state_copies() == [(first.state_slot, SLOTS)]
    bm.free(first)
    follow_up = make_seq(list(range(1, 11)) + [50, 51, 52, 53, 54], "follow-up")  # blocks 0-2 are cached
    cached = bm.find_cached_prefix(follow_up)
    assert cached.num_blocks == 2  # block 2 is cached, but no states were kept after it
    bm.take_cached_prefix(follow_up, cached)
    assert bm.take_state_copies() == [(SLOTS, follow_up.state_slot)]


def test_a_prefix_cached_without_a_snapshot_is_not_used():
    bm = hybrid()
    first = make_seq(list(range(1, 15)), "first")  # snapshot after 12 tokens only
    prefill(bm, first)
    bm.free(first)
    other = make_seq(list(range(1, 9)) + [70, 71, 72, 73, 74], "other")  # shares blocks 0 and 1, not block 2
    assert bm.find_cached_prefix(other).num_blocks == 0


def test_a_snapshot_goes_when_its_blocks_are_evicted():
    bm = hybrid(num_blocks=4)
    first = make_seq(list(range(1, 10)), "first")  # 9 tokens: 3 blocks, snapshot after 8
    prefill(bm, first)
    bm.free(first)
    assert bm.snapshots.holds(first.block_hashes[1])
    second = make_seq(list(range(20, 34)), "second")  # 14 tokens: its 4 blocks evict all of first's
    prefill(bm, second)
    assert not bm.snapshots.holds(first.block_hashes[1]) and len(bm.snapshots) == 1


def test_the_least_recently_used_snapshot_gives_its_row_when_the_pool_is_full():
    bm = hybrid(snapshots=1)
    first = make_seq(list(range(1, 10)), "first")
    prefill(bm, first)
    bm.free(first)
    second = make_seq(list(range(20, 34)), "second")  # its snapshot takes the pool's one row
    prefill(bm, second)
    again = make_seq(list(range(1, 10)) + [1], "again")  # first's blocks are cached, its states are not
    assert bm.find_cached_prefix(again).num_blocks == 0
    assert bm.find_cached_prefix(make_seq(list(range(20, 34)) + [1])).num_blocks == 3


def test_a_reserved_row_is_found_once_named_and_a_released_one_is_free_again():
    pool = StateSnapshots(first_row=SLOTS, count=2)
    row = pool.reserve(0)
    assert row == SLOTS and not pool.holds(111) and len(pool) == 0
    pool.name(row, 111)
    assert pool.holds(111) and len(pool) == 1
    other = pool.reserve(1)
    pool.name(other, 111)  # that prefix is kept already: its row stays, this one is free again
    assert len(pool) == 1 and pool.reserve(1) == other
    assert pool.reserve(0) == SLOTS and not pool.holds(111)  # the named row is the least recently used: it goes
    assert pool.reserve(0) is None  # every row is reserved: no snapshot
    pool.release(other)
    assert pool.reserve(1) == other
    assert pool.take_copies() == [(0, SLOTS), (1, SLOTS + 1), (1, SLOTS + 1), (0, SLOTS), (1, SLOTS + 1)]


def test_a_decode_keeps_its_latest_block_end_and_the_next_turn_hits_there():
    bm = hybrid()
    first = make_seq(list(range(1, 11)), "first")  # 10 tokens: the prompt's snapshot after 8
    prefill(bm, first)
    slot = first.state_slot
    decode(bm, first, [50, 51, 52, 53, 54, 55, 56])  # computed 11 to 17: blocks end at 12 and 16
    prompt_end, at_12, at_16 = first.block_hashes[1:4]
    assert bm.snapshots.holds(prompt_end) and bm.snapshots.holds(at_16) and not bm.snapshots.holds(at_12)
    assert bm.take_state_copies() == [(slot, SLOTS), (slot, SLOTS + 1), (slot, SLOTS + 1)]  # 12's row went to 16
    bm.free(first)
    follow_up = make_seq(first.token_ids + [60, 61, 62], "follow-up")  # the first turn, its answer, more
    cached = bm.find_cached_prefix(follow_up)
    assert cached.num_blocks == 4  # the answer's last whole block, not the prompt's
    bm.take_cached_prefix(follow_up, cached)
    assert bm.take_state_copies() == [(SLOTS + 1, follow_up.state_slot)]
    retry = make_seq(list(range(1, 11)) + [70], "retry")  # the prompt again with another answer: its own snapshot
    assert bm.find_cached_prefix(retry).num_blocks == 2


def test_a_decode_snapshot_is_named_when_its_token_is_read_and_freed_if_its_sequence_leaves_first():
    bm = hybrid()
    seq = make_seq(list(range(1, 11)))
    prefill(bm, seq)
    decode(bm, seq, [50, placeholder(0)])  # computed 12: block 3 is full, its last token still on the device
    assert len(bm.snapshots) == 1 and len(bm.take_state_copies()) == 2  # the prompt's, and the reserved row's copy
    seq.fill_last_token(51)
    bm.cache_full_blocks(seq)  # read: the block is cached and the snapshot named
    assert bm.snapshots.holds(seq.block_hashes[2]) and len(bm.snapshots) == 2
    decode(bm, seq, [52, 53, 54, placeholder(0)])  # computed 16: the one at 12 goes, a row is reserved
    bm.free(seq)  # aborted before its token was read
    assert len(bm.snapshots) == 1 and bm.snapshots.holds(seq.block_hashes[1])
    assert bm.snapshots.reserve(0) == SLOTS + 1 and len(bm.snapshots) == 1  # the reserved row is free again
