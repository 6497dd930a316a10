"""Continuous batching: budget, admission order, chunked prefill, preemption, no leaks."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.block_manager import BlockManager
from engine.errors import QueueFull
from engine.prompt_images import ImageSpan, PromptImages
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler
from engine.sequence import Sequence, SequenceStatus

BLOCK = 4


def make_scheduler(num_blocks=64, max_num_seqs=8, budget=32, max_waiting=100, prefix=True):
    bm = BlockManager(num_blocks, BLOCK, enable_prefix_caching=prefix)
    return Scheduler(bm, max_num_seqs, budget, max_waiting)


def run_step(sched: Scheduler, next_token=7) -> list[Sequence]:
    """What the engine does after the model ran: count computed tokens, append a sampled token."""
    plan = sched.schedule()
    sampled = []
    for s in plan.scheduled:
        completes = s.completes_prompt
        s.seq.num_computed_tokens += s.num_new_tokens
        sched.block_manager.cache_full_blocks(s.seq)
        if completes:
            s.seq.append_token(next_token)
            sampled.append(s.seq)
    return sampled


def test_long_prompt_is_prefilled_in_chunks_within_the_budget():
    sched = make_scheduler(budget=16)
    seq = Sequence("a", list(range(40)), SamplingParams())
    sched.add(seq)
    chunks = []
    while not seq.output_token_ids:
        plan = sched.schedule()
        chunks.append(plan.num_batched_tokens)
        for s in plan.scheduled:
            completes = s.completes_prompt
            s.seq.num_computed_tokens += s.num_new_tokens
            if completes:
                s.seq.append_token(1)
    assert chunks == [16, 16, 8]


@pytest.mark.parametrize("bidirectional, chunks", [(False, [16, 16, 16]), (True, [12, 8, 24, 4])])
def test_a_chunk_cuts_an_image_only_where_its_placeholders_attend_one_way(bidirectional, chunks):
    """Images at tokens 12..17 and 20..43 (longer than the budget): Qwen's may be cut anywhere; Gemma's are
    never cut, the chunk ending before the image or, starting at it, after it past the budget."""
    sched = make_scheduler(budget=16)
    spans = [ImageSpan(12, 18, 1), ImageSpan(20, 44, 2)]
    images = PromptImages([{}, {}], [r for span in spans for r in range(span.start, span.end)], spans,
                          bidirectional=bidirectional)
    seq = Sequence("a", list(range(48)), SamplingParams(), images)
    sched.add(seq)
    got = []
    while not seq.output_token_ids:
        got.append(sched.schedule().num_batched_tokens)
        completes = seq.num_computed_tokens + got[-1] == seq.num_tokens
        seq.num_computed_tokens += got[-1]
        if completes:
            seq.append_token(1)
    assert got == chunks


def test_running_sequences_are_scheduled_before_waiting_ones_in_arrival_order():
    sched = make_scheduler(budget=10, max_num_seqs=8)
    first = Sequence("first", [1] * 8, SamplingParams())
    sched.add(first)
    run_step(sched)  # first is now decoding
    second = Sequence("second", [2] * 8, SamplingParams())
    third = Sequence("third", [3] * 8, SamplingParams())
    sched.add(second)
    sched.add(third)
    plan = sched.schedule()
    # The decode goes first, then arrivals in order; the last one gets what is left of the budget.
    assert [s.seq.request_id for s in plan.scheduled] == ["first", "second", "third"]
    assert [s.num_new_tokens for s in plan.scheduled] == [1, 8, 1]


def test_waiting_queue_bound_is_an_explicit_error():
    sched = make_scheduler(max_waiting=2)
    sched.add(Sequence("a", [1], SamplingParams()))
    sched.add(Sequence("b", [1], SamplingParams()))
    with pytest.raises(QueueFull, match="retry later"):
        sched.add(Sequence("c", [1], SamplingParams()))


def test_out_of_blocks_preempts_the_newest_and_requeues_it_first():
    sched = make_scheduler(num_blocks=4, budget=64, prefix=False)
    old = Sequence("old", [1] * 8, SamplingParams())
    new = Sequence("new", [2] * 7, SamplingParams())
    sched.add(old)
    sched.add(new)
    run_step(sched)  # both prefilled: old uses 2 blocks (+1 for its next token later), new 2
    plan = sched.schedule()  # old needs a 3rd block: new is preempted
    assert [s.request_id for s in plan.preempted] == ["new"]
    assert [s.seq.request_id for s in plan.scheduled] == ["old"]
    assert new.status == SequenceStatus.WAITING and new.block_tables == [] and new.num_computed_tokens == 0
    assert sched.waiting[0] is new
    assert sched.num_preemptions == 1


def test_finish_frees_blocks_wherever_the_sequence_is():
    sched = make_scheduler()
    running = Sequence("r", [1] * 9, SamplingParams())
    waiting = Sequence("w", [2] * 9, SamplingParams())
    sched.add(running)
    run_step(sched)
    sched.add(waiting)
    sched.finish(running, "abort")
    sched.finish(waiting, "abort")
    assert not sched.has_unfinished()
    assert sched.block_manager.num_free_blocks == sched.block_manager.num_blocks


@settings(max_examples=150, deadline=None)
@given(
    requests=st.lists(
        st.tuples(st.integers(1, 30), st.integers(1, 12), st.integers(0, 2)),  # prompt len, output len, prefix kind
        min_size=1,
        max_size=12,
    ),
    num_blocks=st.integers(8, 40),
    budget=st.integers(1, 48),
    max_num_seqs=st.integers(1, 6),
    abort_every=st.integers(0, 7),
)
def test_any_workload_completes_within_budget_and_leaks_nothing(requests, num_blocks, budget, max_num_seqs, abort_every):
    sched = make_scheduler(num_blocks=num_blocks, max_num_seqs=max_num_seqs, budget=budget)
    bm = sched.block_manager
    capacity = num_blocks * BLOCK
    seqs = []
    for i, (prompt_len, out_len, prefix) in enumerate(requests):
        prompt = [prefix] * min(prompt_len, 8) + list(range(100 + i, 100 + i + max(0, prompt_len - 8)))
        if prompt_len + out_len > capacity:
            continue  # the engine refuses such prompts up front
        seq = Sequence(str(i), prompt, SamplingParams(max_tokens=out_len))
        sched.add(seq)
        seqs.append(seq)
    for step in range(2000):
        if not sched.has_unfinished():
            break
        plan = sched.schedule()
        assert plan.num_batched_tokens <= budget
        assert len(sched.running) <= max_num_seqs
        assert all(blk.ref_count >= 0 for blk in bm.blocks)
        assert plan.scheduled or plan.preempted, "a step with work pending must make progress"
        for s in plan.scheduled:
            assert s.num_new_tokens >= 1
            completes = s.completes_prompt
            s.seq.num_computed_tokens += s.num_new_tokens
            assert len(s.seq.block_tables[0]) * BLOCK >= s.seq.num_computed_tokens
            bm.cache_full_blocks(s.seq)
            if completes:
                s.seq.append_token(5)
                if len(s.seq.output_token_ids) >= s.seq.params.max_tokens:
                    sched.finish(s.seq, "length")
        if abort_every and step % abort_every == abort_every - 1:
            live = sched.running or list(sched.waiting)
            if live:
                sched.finish(live[-1], "abort")
    assert not sched.has_unfinished(), "the workload did not finish"
    assert bm.num_free_blocks == num_blocks
    assert all(blk.ref_count == 0 for blk in bm.blocks)
    for seq in seqs:
        assert seq.is_finished
        if seq.finish_reason == "length":
            assert len(seq.output_token_ids) == seq.params.max_tokens


# -- priority and fair share -------------------------------------------------------------------
def test_another_keys_request_is_scheduled_within_a_few_steps_of_a_200_request_backlog():
    sched = make_scheduler(num_blocks=512, max_num_seqs=4, budget=64, max_waiting=300)
    batch = [Sequence(f"batch-{i}", [i % 50 + 1] * 8, SamplingParams(max_tokens=4, share_group="batch"))
             for i in range(200)]
    for seq in batch:
        sched.add(seq)
    run_step(sched)  # the batch key fills the running slots
    chat = Sequence("chat", [99] * 8, SamplingParams(max_tokens=4, share_group="chat"))
    sched.add(chat)
    steps = 0
    while chat.status is SequenceStatus.WAITING:
        for seq in run_step(sched):
            if len(seq.output_token_ids) >= 4:
                sched.finish(seq, "length")
        steps += 1
    assert steps <= 4  # the first slot that frees goes to the key that has had none, not to the backlog
    assert sum(s.status is SequenceStatus.WAITING for s in batch) > 180


def test_weights_share_the_slots_and_priority_goes_first():
    sched = make_scheduler(num_blocks=512, max_num_seqs=1, budget=64, max_waiting=300)
    for i in range(30):
        for group, weight, token in (("a", 1.0, i + 1), ("b", 2.0, i + 100)):  # no shared prefixes
            sched.add(Sequence(f"{group}-{i}", [token] * 8, SamplingParams(max_tokens=1, share_group=group,
                                                                           share_weight=weight)))
    order = []
    while len(order) < 30:
        for seq in run_step(sched):
            order.append(seq.params.share_group)
            sched.finish(seq, "length")
    assert order.count("b") == 20  # b, of weight 2, had two turns for each of a's
    urgent = Sequence("urgent", [7] * 8, SamplingParams(max_tokens=1, priority=-1, share_group="a"))
    sched.add(urgent)
    [first] = run_step(sched)
    assert first is urgent  # a lower priority value runs first, whatever the shares


def test_the_lowest_priority_is_preempted_first():
    sched = make_scheduler(num_blocks=6, max_num_seqs=4, budget=64)
    low = Sequence("low", [1] * 8, SamplingParams(max_tokens=32, priority=5))
    high = Sequence("high", [2] * 8, SamplingParams(max_tokens=32, priority=0))
    sched.add(low)
    sched.add(high)
    preempted = []
    for _ in range(12):
        plan_preempted = sched.schedule()
        preempted += plan_preempted.preempted
        for s in plan_preempted.scheduled:
            completes = s.completes_prompt
            s.seq.num_computed_tokens += s.num_new_tokens
            if completes:
                s.seq.append_token(3)
        if preempted:
            break
    assert preempted and all(seq is low for seq in preempted)  # though high arrived later
