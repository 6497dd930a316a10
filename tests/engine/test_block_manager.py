"""The KV block pool: allocation, reference counts, prefix caching and LRU eviction."""

from hypothesis import given, settings
from transformers import Gemma3TextConfig
from hypothesis import strategies as st

from engine.block_manager import NULL_BLOCK, BlockManager, blocks_for
from benchmarks.kv_capacity import full_allocation, sequences_held
from engine.kv_cache_spec import AttentionSpec, layout_from_config
from engine.prompt_images import ImageSpan, PromptImages
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

BLOCK = 4


def make_seq(tokens, rid="r"):
    return Sequence(rid, list(tokens), SamplingParams())


def admit(bm: BlockManager, seq: Sequence) -> bool:
    """What the scheduler does for a waiting sequence: reuse the cached prefix, allocate the rest."""
    cached = bm.find_cached_prefix(seq)
    computed = cached.num_blocks * BLOCK
    if not bm.can_admit(cached, seq.num_tokens - computed):
        return False
    bm.take_cached_prefix(seq, cached)
    assert bm.allocate(seq, seq.num_tokens - computed)
    seq.num_computed_tokens = seq.num_tokens
    bm.cache_full_blocks(seq)
    return True


def test_blocks_holding_an_image_are_keyed_by_its_content_and_text_blocks_by_their_tokens_alone():
    """Placeholders 8..11 of an image (one token id whatever the image): the same image hits, another does not,
    and the text before it is shared with a text-only prompt."""
    bm = BlockManager(num_blocks=32, block_size=BLOCK)
    tokens = list(range(1, 9)) + [99] * 4 + [20, 21, 22, 23, 24]

    def with_image(rid: str, content_hash: int) -> Sequence:
        images = PromptImages([{}], list(range(8, 12)), [ImageSpan(8, 12, content_hash)])
        return Sequence(rid, tokens, SamplingParams(), images)

    assert admit(bm, with_image("first", 1))
    found = {rid: admit(bm, seq) and seq.num_cached_tokens
             for rid, seq in [("same", with_image("same", 1)), ("other", with_image("other", 2)),
                              ("text", make_seq(tokens, "text"))]}
    assert found == {"same": 16, "other": 8, "text": 8}


def test_allocate_covers_tokens_and_free_returns_blocks():
    bm = BlockManager(num_blocks=8, block_size=BLOCK)
    seq = make_seq(range(10))
    assert bm.allocate(seq, 10)
    assert seq.block_tables == [[1, 2, 3]]
    assert bm.num_free_blocks == 5
    bm.free(seq)
    assert bm.num_free_blocks == 8
    assert seq.block_tables == []


def test_allocate_refuses_without_partial_change_when_pool_is_short():
    bm = BlockManager(num_blocks=2, block_size=BLOCK)
    seq = make_seq(range(12))
    assert not bm.allocate(seq, 12)
    assert seq.block_tables == [] and bm.num_free_blocks == 2


def test_shared_prefix_is_reused_and_reference_counted():
    bm = BlockManager(num_blocks=16, block_size=BLOCK)
    a = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 9], "a")
    b = make_seq([1, 2, 3, 4, 5, 6, 7, 8, 42, 43], "b")
    assert admit(bm, a)
    assert admit(bm, b)
    assert b.block_tables[0][:2] == a.block_tables[0][:2]
    assert b.num_cached_tokens == 8
    assert [bm.blocks[i].ref_count for i in a.block_tables[0][:2]] == [2, 2]
    bm.free(a)
    assert [bm.blocks[i].ref_count for i in b.block_tables[0][:2]] == [1, 1]


def test_whole_prompt_hit_still_leaves_one_token_to_compute():
    bm = BlockManager(num_blocks=16, block_size=BLOCK)
    a = make_seq(range(8), "a")
    assert admit(bm, a)
    bm.free(a)
    b = make_seq(range(8), "b")
    assert bm.find_cached_prefix(b).num_blocks == 1  # 7 tokens may be reused, the 8th is recomputed


def test_freed_cached_blocks_count_as_free_and_are_revived_by_a_hit():
    bm = BlockManager(num_blocks=4, block_size=BLOCK)
    a = make_seq(range(9), "a")
    assert admit(bm, a)
    bm.free(a)
    assert bm.usage == 0.0  # evictable cached blocks count as free
    b = make_seq(range(9), "b")
    assert admit(bm, b)
    assert b.num_cached_tokens == 8


def test_eviction_takes_least_recently_freed_and_forgets_its_hash():
    bm = BlockManager(num_blocks=4, block_size=BLOCK)
    old = make_seq([1] * 4 + [9], "old")
    assert admit(bm, old)
    bm.free(old)
    newer = make_seq([2] * 4 + [9], "newer")
    assert admit(bm, newer)
    bm.free(newer)
    # Fill the pool: the oldest freed blocks go first.
    filler = make_seq([3] * 12, "filler")
    assert admit(bm, filler)
    assert bm.find_cached_prefix(make_seq([1] * 4 + [9])).num_blocks == 0
    assert bm.find_cached_prefix(make_seq([2] * 4 + [9])).num_blocks == 1


def test_prefix_cache_off_never_shares():
    bm = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=False)
    a = make_seq(range(9), "a")
    assert admit(bm, a)
    b = make_seq(range(9), "b")
    assert admit(bm, b)
    assert not set(a.block_tables[0]) & set(b.block_tables[0])


SPECS = {
    "full": [AttentionSpec()],
    "full+window": [AttentionSpec(), AttentionSpec(sliding_window=6)],
    "windows": [AttentionSpec(sliding_window=5), AttentionSpec(attention_chunk=8)],
}


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["admit", "grow", "free"]),
            st.integers(0, 5),  # which sequence
            st.lists(st.integers(0, 3), min_size=1, max_size=14),  # tokens (small alphabet: many shared prefixes)
        ),
        max_size=60,
    ),
    num_blocks=st.integers(1, 16),
    layout=st.sampled_from(sorted(SPECS)),
)
def test_random_operations_never_leak_and_every_visible_block_holds_its_tokens(ops, num_blocks, layout):
    """Block contents are simulated: computing tokens writes (group, the tokens up to the block's end) into
    each block it touches. Whatever a hit, an eviction or a window's freeing did, the blocks a sequence's
    next query reads must hold exactly its own tokens, in every group."""
    specs = SPECS[layout]
    bm = BlockManager(num_blocks=num_blocks, block_size=BLOCK, specs=specs)
    live: dict[int, Sequence] = {}
    content: dict[int, tuple] = {}

    def compute(seq: Sequence, end: int) -> None:
        for g, table in enumerate(seq.block_tables):
            for i in range(seq.num_computed_tokens // BLOCK, blocks_for(end, BLOCK)):
                content[table[i]] = (g, tuple(seq.token_ids[: min((i + 1) * BLOCK, end)]))
        seq.num_computed_tokens = end
        bm.cache_full_blocks(seq)

    for op, slot, tokens in ops:
        if op == "admit" and slot not in live:
            seq = make_seq(tokens, str(slot))
            cached = bm.find_cached_prefix(seq)
            if bm.can_admit(cached, seq.num_tokens - cached.num_blocks * BLOCK):
                bm.take_cached_prefix(seq, cached)
                assert bm.allocate(seq, seq.num_tokens - seq.num_computed_tokens)
                compute(seq, seq.num_tokens)
                live[slot] = seq
            else:
                assert seq.block_tables == []
        elif op == "grow" and slot in live:
            seq = live[slot]
            for t in tokens[:3]:
                seq.append_token(t)
            if bm.allocate(seq, seq.num_tokens - seq.num_computed_tokens):
                compute(seq, seq.num_tokens)
        elif op == "free" and slot in live:
            bm.free(live.pop(slot))
        # Invariants after every operation.
        refs = [0] * (num_blocks + 1)
        for seq in live.values():
            assert len({len(t) for t in seq.block_tables}) == 1
            for g, (spec, table) in enumerate(zip(specs, seq.block_tables)):
                assert len(table) >= blocks_for(seq.num_computed_tokens, BLOCK)
                for i, b in enumerate(table):
                    refs[b] += b != NULL_BLOCK
                first = spec.first_visible(seq.num_computed_tokens - 1) // BLOCK
                for i in range(first, blocks_for(seq.num_computed_tokens, BLOCK)):
                    expected = (g, tuple(seq.token_ids[: min((i + 1) * BLOCK, seq.num_computed_tokens)]))
                    assert table[i] != NULL_BLOCK and content[table[i]] == expected
        assert [blk.ref_count for blk in bm.blocks] == refs
        assert set(bm.free_queue) == {i for i, r in enumerate(refs) if r == 0 and i != NULL_BLOCK}
        for key, b in bm.key_to_block.items():
            assert bm.blocks[b].key == key
    for seq in live.values():
        bm.free(seq)
    assert bm.num_free_blocks == num_blocks


def test_a_gemma3_shaped_model_holds_four_times_the_32k_sequences_of_full_allocation():
    """Gemma 3 12B's shape (40 sliding layers with a 1024-token window, 8 full; 8 kv heads of 256) at 32k
    context in one 40 GiB KV budget: window groups keep a window and a block, full allocation keeps all."""
    config = Gemma3TextConfig(num_hidden_layers=48, sliding_window=1024, num_key_value_heads=8, head_dim=256)
    windowed = layout_from_config(config)
    assert windowed.describe() == "1 full + 5 sliding window 1024 groups of 8 layers"
    budget = 40 << 30
    with_windows, bm = sequences_held(windowed, budget, 32768, 2048)
    without, _ = sequences_held(full_allocation(windowed), budget, 32768, 2048)
    assert without == 3 and with_windows >= 4 * without
    # What the pool counts as used is what the sequences really hold: a 32k sequence's full group and
    # each window group's last 1024 tokens (65 blocks, the window starting inside one).
    assert bm.num_blocks - bm.num_free_blocks <= with_windows * (32768 // 16 + 5 * 65) + 2048 // 16 * 6


def test_state_slots_are_taken_at_admission_given_back_when_freed_and_counted_in_usage():
    """A model with recurrent layers: one slot per running sequence, admission waits for one, and the usage figure
    counts a slot at its size in blocks (here four)."""
    bm = BlockManager(num_blocks=8, block_size=BLOCK, enable_prefix_caching=False, num_state_slots=2,
                      state_slot_blocks=4.0)
    a, b, c = (make_seq(range(5), rid) for rid in "abc")
    assert bm.usage == 0.0
    assert admit(bm, a) and admit(bm, b)
    assert sorted([a.state_slot, b.state_slot]) == [0, 1]
    assert bm.usage == (4 + 2 * 4) / (8 + 2 * 4)
    assert not admit(bm, c) and c.state_slot is None  # blocks are free, no slot is
    slot = a.state_slot
    bm.free(a)  # finished or preempted
    assert a.state_slot is None and admit(bm, c) and c.state_slot == slot
    bm.free(b)
    bm.free(c)
    assert bm.usage == 0.0 and bm.state_slots.num_free == 2
