"""The correctness oracle for every architecture the engine is checked against (docs/MODELS.md).

Each is a tiny random model built from its real transformers config class (tests/engine/architectures.py),
float32 on CPU, saved and loaded from its folder as the appliance loads models; tests/engine/oracle.py
runs eight concurrent requests of mixed lengths through the engine (chunked prefill, prefix-cache hits,
preemption by a small pool, contexts past every window) and generate() on each prompt alone.

The hybrids (recurrent layers on state slots) hit the prefix cache only where their states were kept at a
block boundary (engine.state_snapshots); their states must carry across prefill chunks, into decodes, through
preemption and out of a snapshot.
"""

import random

import pytest

from engine import Engine, EngineConfig, SamplingParams
from engine.state_spec import PREFIX_CACHING_OFF_FOR_RECURRENT
from tests.engine.architectures import CONFIGS, HYBRIDS, VOCAB, build
from tests.engine.oracle import BLOCK, BUDGET, generate_alone, run


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_chunked_cached_and_preempted_requests_match_generate_alone(name, tmp_path):
    expected, got, stats, _ = run(build(name), tmp_path)
    assert stats.num_preemptions > 0
    assert stats.prefix_cache_hits > 0
    if name in HYBRIDS:  # hits where a preempted request comes back to its own prompt's kept states
        assert stats.execution["prefix_caching"] == "on (state snapshots: 8)" and stats.state_slots_total == 8
    assert got == expected
    assert stats.kv_blocks_used == 0 and stats.state_slots_used == 0  # every block and slot came back


@pytest.mark.parametrize("name", ["qwen3_5", "nemotron_h", "lfm2"])  # Gated DeltaNet, Mamba-2, a short convolution
def test_recurrent_states_carry_from_a_prompts_last_chunk_and_a_one_token_prompt_starts_from_zeros(name, tmp_path):
    """One request at a time, prompts of one token and of BUDGET + 1..3 tokens: their last chunk (1 to 3 tokens) reads
    the convolution's inputs and the recurrent state the first chunk left in the slot, right before the first
    sampled token (where a lost state shows even for a short convolution); a one-token prompt decodes from a slot
    that an earlier sequence's state filled."""
    model = build(name)
    model.save_pretrained(tmp_path)
    model.set_attn_implementation("eager")
    model.generation_config.eos_token_id = None
    rng = random.Random(1)
    requests = [[rng.randrange(3, VOCAB) for _ in range(length)] for length in (BUDGET + 2, 1, BUDGET + 1, BUDGET + 3)]
    engine = Engine(EngineConfig(dtype="float32", block_size=BLOCK, max_num_batched_tokens=BUDGET, max_num_seqs=1,
                                 num_kv_blocks=32))
    engine.load_model(tmp_path)
    for i, prompt in enumerate(requests):
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
    tokens = {str(i): [] for i in range(len(requests))}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
    assert [tokens[str(i)] for i in range(len(requests))] == [generate_alone(model, p, 3) for p in requests]


def turn(engine: Engine, requests: dict[str, list[int]], n: int) -> tuple[dict, dict]:
    """Run the requests at once: each one's greedy tokens, and its prompt tokens found in the prefix cache."""
    for rid, prompt in requests.items():
        engine.add_request(rid, prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
    tokens, cached = {rid: [] for rid in requests}, {}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
            cached[out.request_id] = out.num_cached_tokens
    return tokens, cached


def hybrid_engine(name: str, folder, **settings) -> tuple[Engine, object]:
    model = build(name)
    model.save_pretrained(folder)
    model.set_attn_implementation("eager")
    model.generation_config.eos_token_id = None
    engine = Engine(EngineConfig(dtype="float32", block_size=BLOCK, max_num_batched_tokens=BUDGET, max_num_seqs=4,
                                 num_kv_blocks=64, **settings))
    engine.load_model(folder)
    return engine, model


@pytest.mark.parametrize("name, async_scheduling", [
    ("qwen3_5", "off"), ("nemotron_h", "off"), ("lfm2", "off"),  # Gated DeltaNet, Mamba-2, a short convolution
    ("qwen3_5", "on")])  # the decode's block ends while its last token is still a placeholder (engine.overlap)
def test_a_hybrid_hits_the_prefix_cache_where_its_states_were_kept_and_still_matches_generate(
        name, async_scheduling, tmp_path):
    """A first turn of 5 blocks + 1 token keeps its states after its 5 blocks, and its decode after the 6th (its
    answer's 5 tokens, 4 of them computed); then, at once, its follow-up turn (the first turn, its answer and more)
    starts from those after 6 blocks, other prompts with the same 5 blocks from those after 5, while a prompt that
    shares only 3 blocks, cached but with no states kept after them, is computed from its first token."""
    engine, model = hybrid_engine(name, tmp_path, async_scheduling=async_scheduling)
    assert engine.stats().execution["prefix_caching"] == "on (state snapshots: 4)"
    rng = random.Random(2)
    first = [rng.randrange(3, VOCAB) for _ in range(5 * BLOCK + 1)]
    answer, cached = turn(engine, {"first": first}, 5)
    assert cached == {"first": 0} and answer["first"] == generate_alone(model, first, 5)
    prompts = {"follow-up": first + answer["first"] + [rng.randrange(3, VOCAB) for _ in range(6)],
               "same start": first[:5 * BLOCK] + [rng.randrange(3, VOCAB) for _ in range(7)],
               "one more": first[:5 * BLOCK] + [rng.randrange(3, VOCAB)],  # the conv state read by its first token
               "3 blocks": first[:3 * BLOCK + 2] + [rng.randrange(3, VOCAB) for _ in range(9)]}
    got, cached = turn(engine, prompts, 4)
    assert cached == {"follow-up": 6 * BLOCK, "same start": 5 * BLOCK, "one more": 5 * BLOCK, "3 blocks": 0}
    assert got == {rid: generate_alone(model, prompt, 4) for rid, prompt in prompts.items()}
    stats = engine.stats()
    assert stats.kv_blocks_used == 0 and stats.state_slots_used == 0


def test_without_state_snapshots_a_hybrid_says_why_prefix_caching_is_off_and_never_hits(tmp_path):
    engine, model = hybrid_engine("lfm2", tmp_path, num_state_snapshots=0)
    assert engine.stats().execution["prefix_caching"] == PREFIX_CACHING_OFF_FOR_RECURRENT
    prompt = list(range(3, 3 + 3 * BLOCK + 1))
    turn(engine, {"first": prompt}, 1)
    got, cached = turn(engine, {"again": prompt}, 3)
    assert cached == {"again": 0} and got["again"] == generate_alone(model, prompt, 3)


def test_a_hybrids_snapshot_given_up_to_a_newer_one_is_not_used(tmp_path):
    """One snapshot: a second prompt's states take its row, so the first prompt's blocks, still cached, give no hit."""
    engine, model = hybrid_engine("qwen3_5", tmp_path, num_state_snapshots=1)
    rng = random.Random(3)
    first, second = ([rng.randrange(3, VOCAB) for _ in range(3 * BLOCK + 1)] for _ in range(2))
    turn(engine, {"first": first}, 1)
    turn(engine, {"second": second}, 1)
    got, cached = turn(engine, {"second again": second + [7]}, 4)  # the kept one hits
    assert cached == {"second again": 3 * BLOCK} and got["second again"] == generate_alone(model, second + [7], 4)
    again = first[:3 * BLOCK] + [rng.randrange(3, VOCAB) for _ in range(3)]
    got, cached = turn(engine, {"again": again}, 4)
    assert cached == {"again": 0} and got["again"] == generate_alone(model, again, 4)
