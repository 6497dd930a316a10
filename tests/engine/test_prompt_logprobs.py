"""Prompt logprobs from the prefill equal a plain transformers forward, through chunked prefill and past the prefix cache."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine import Engine, EngineConfig, InvalidParameter, SamplingParams

PROMPT = list(range(300, 345))  # 45 tokens: three chunks of 16 at max_num_batched_tokens 16


@pytest.fixture(scope="module")
def reference(tiny_model_path):
    """(logprob of each prompt token after the first, the 3 best ids at each of those positions) by transformers."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([PROMPT])).logits[0, :-1], dim=-1)
    chosen = logprobs.gather(1, torch.tensor(PROMPT[1:])[:, None]).squeeze(1)
    return chosen, logprobs.topk(3, dim=-1).indices


def run(engine: Engine, request_id: str, params: SamplingParams) -> list:
    engine.add_request(request_id, PROMPT, params)
    outputs = []
    while engine.has_unfinished():
        outputs += [o for o in engine.step() if o.request_id == request_id]
    return outputs


def test_prompt_logprobs_match_transformers_in_chunks_and_past_a_cached_prefix(tiny_model_path, reference):
    engine = Engine(EngineConfig(dtype="float32", max_num_batched_tokens=16, max_num_seqs=4))
    engine.load_model(tiny_model_path)
    plain = run(engine, "warm", SamplingParams(max_tokens=2, temperature=0, ignore_eos=True))
    assert plain[0].prompt_logprobs is None
    outputs = run(engine, "scored", SamplingParams(max_tokens=3, temperature=0, ignore_eos=True, prompt_logprobs=3))
    assert outputs[0].num_cached_tokens == 0  # the cached prefix of "warm" was not taken
    assert all(o.prompt_logprobs is None for o in outputs[1:])
    first, *entries = outputs[0].prompt_logprobs
    assert first.token_id == PROMPT[0] and first.logprob is None  # nothing before it to predict it
    chosen, best = reference
    assert [e.token_id for e in entries] == PROMPT[1:]
    assert torch.allclose(torch.tensor([e.logprob for e in entries]), chosen, atol=1e-4)
    assert [[i for i, _ in e.top_logprobs] for e in entries] == best.tolist()
    assert [o.new_token_ids for o in outputs[:2]] == [o.new_token_ids for o in plain]  # sampling unchanged
    engine.add_request("cached", PROMPT, SamplingParams(max_tokens=1))
    assert engine.step()[0].num_cached_tokens == 32  # the others still use the cache


def test_prompt_logprobs_are_bounded():
    with pytest.raises(InvalidParameter) as e:
        SamplingParams(prompt_logprobs=21)
    assert e.value.param == "prompt_logprobs"
