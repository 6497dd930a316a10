"""The correctness oracle for every architecture the engine is checked against (docs/MODELS.md).

Each is a tiny random model built from its real transformers config class (tests/engine/architectures.py),
float32 on CPU, saved and loaded from its folder as the appliance loads models; tests/engine/oracle.py
runs eight concurrent requests of mixed lengths through the engine (chunked prefill, prefix-cache hits,
preemption by a small pool, contexts past every window) and generate() on each prompt alone.

The hybrids (recurrent layers on state slots) run without prefix caching, which their states rule out
(engine.state_spec); their states must carry across prefill chunks, into decodes and through preemption.
"""

import random

import pytest

from engine import Engine, EngineConfig, SamplingParams
from tests.engine.architectures import CONFIGS, HYBRIDS, VOCAB, build
from tests.engine.oracle import BLOCK, BUDGET, generate_alone, run


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_chunked_cached_and_preempted_requests_match_generate_alone(name, tmp_path):
    expected, got, stats, _ = run(build(name), tmp_path)
    assert stats.num_preemptions > 0
    if name in HYBRIDS:
        assert stats.prefix_cache_hits == 0 and stats.execution["prefix_caching"].startswith("off: recurrent layers")
        assert stats.state_slots_total == 8
    else:
        assert stats.prefix_cache_hits > 0
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
