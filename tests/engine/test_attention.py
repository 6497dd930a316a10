"""The portable attention path reads a lone sequence's consecutive blocks in place, as it would gather them."""

import torch

from engine import Engine, EngineConfig, SamplingParams
from engine.attention import gather_blocks
from engine.packing import first_of_consecutive


def test_consecutive_blocks_are_a_view_equal_to_their_gather():
    cache = torch.randn(10, 4, 2, 8)
    table = torch.tensor([[3, 4, 5]])
    in_place = gather_blocks(cache, table, first_block=3)
    assert torch.equal(in_place, gather_blocks(cache, table))
    assert in_place.data_ptr() == cache[3].data_ptr()  # nothing copied


def test_only_a_run_of_consecutive_blocks_counts():
    assert first_of_consecutive([7]) == 7 and first_of_consecutive([3, 4, 5]) == 3
    assert first_of_consecutive([3, 5, 4]) is None and first_of_consecutive([5, 4, 3]) is None
    assert first_of_consecutive([1, 3, 2, 4]) is None


def test_a_lone_request_read_in_place_matches_generate(tiny_model_path_b):
    """Chunked prefill (context from the cache) and decodes of one request on a fresh pool, whose blocks are consecutive."""
    engine = Engine(EngineConfig(block_size=8, max_num_batched_tokens=32))
    engine.load_model(tiny_model_path_b)
    prompt = list(range(300, 390))
    engine.add_request("alone", prompt, SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    seq = engine.sequences["alone"]
    got = []
    while engine.has_unfinished():
        engine.step()
        if "alone" in engine.sequences:
            assert first_of_consecutive(seq.block_tables[0]) is not None
        got = list(seq.output_token_ids)
    model = engine.session.loaded.model
    model.set_attn_implementation("sdpa")
    model.generation_config.eos_token_id = None
    ids = torch.tensor([prompt])
    want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert got == want[0, len(prompt):].tolist()
    assert len(set(got)) > 1  # the untied model writes more than one token
