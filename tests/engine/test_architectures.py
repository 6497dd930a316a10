"""The correctness oracle for every architecture the engine is checked against (docs/MODELS.md).

Each is a tiny random model built from its real transformers config class (tests/engine/architectures.py),
float32 on CPU, saved and loaded from its folder as the appliance loads models. Eight concurrent
requests of mixed lengths share a prefix; the token budget cuts prompts into chunks, the KV pool is
so small that the scheduler preempts, later requests find the prefix cached, and every context runs
past the sliding windows (8 tokens) and chunks. Greedy tokens must equal generate() of each prompt
alone, run by transformers' own code (eager attention) on the same weights.

The hybrids (recurrent layers on state slots) run without prefix caching, which their states rule out
(engine.state_spec); their states must carry across prefill chunks, into decodes and through preemption.
"""

import random

import pytest
import torch

from engine import Engine, EngineConfig, SamplingParams
from engine.kv_cache_spec import blocks_per_sequence, layout_from_config
from tests.engine.architectures import CONFIGS, HYBRIDS, VOCAB, build

BLOCK = 4
BUDGET = 24  # tokens per step: prompts of up to 51 tokens take several chunks
OUTPUT_LENS = [6 + 2 * i for i in range(8)]


def prompts() -> list[list[int]]:
    rng = random.Random(0)
    prefix = [rng.randrange(3, VOCAB) for _ in range(12)]  # three blocks every request shares
    return [prefix + [rng.randrange(3, VOCAB) for _ in range(rng.randrange(3, 40))] for _ in OUTPUT_LENS]


def generate_alone(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_chunked_cached_and_preempted_requests_match_generate_alone(name, tmp_path):
    model = build(name)
    model.save_pretrained(tmp_path)
    model.set_attn_implementation("eager")
    model.generation_config.eos_token_id = None
    requests = list(zip(prompts(), OUTPUT_LENS))
    expected = [generate_alone(model, prompt, n) for prompt, n in requests]

    # A pool that holds the longest request alone: eight at once must preempt.
    specs = layout_from_config(model.config.get_text_config()).specs()
    longest = max(len(p) + n for p, n in requests)
    num_blocks = blocks_per_sequence(specs, BLOCK, longest, BUDGET)
    engine = Engine(EngineConfig(dtype="float32", block_size=BLOCK, max_num_batched_tokens=BUDGET,
                                 num_kv_blocks=num_blocks, max_num_seqs=8))
    engine.load_model(tmp_path)
    for i, (prompt, n) in enumerate(requests):
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
    tokens = {str(i): [] for i in range(len(requests))}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
    stats = engine.stats()
    assert stats.num_preemptions > 0
    if name in HYBRIDS:
        assert stats.prefix_cache_hits == 0 and stats.execution["prefix_caching"].startswith("off: recurrent layers")
        assert stats.state_slots_total == 8
    else:
        assert stats.prefix_cache_hits > 0
    assert [tokens[str(i)] for i in range(len(requests))] == expected
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
