"""The engine's correctness oracle for an architecture: batched, chunked, cached and preempted requests
give the greedy tokens transformers' generate() gives each prompt alone.

Used by tests/engine/test_architectures.py, and on its own to check any other architecture of the
pinned transformers from a tiny random model of its config class (docs/MODELS.md):

    .venv/bin/python -m tests.engine.oracle cohere2 starcoder2 [--layers 2]

Eight requests share a three-block prefix; the token budget cuts prompts into chunks, the KV pool is as
small as the longest request alone needs (so eight at once preempt), later requests find the prefix
cached, and every context runs past windows of 8 tokens.
"""

import argparse
import random
import sys
import tempfile

import torch
import transformers
from transformers import AutoConfig

from engine import Engine, EngineConfig, SamplingParams
from engine.errors import ModelLoadError
from engine.kv_cache_spec import blocks_per_sequence, layout_from_config
from tests.engine.architectures import VOCAB, sharpened, tiny_shape

BLOCK = 4
BUDGET = 24  # tokens per step: prompts of up to 51 tokens take several chunks
OUTPUT_LENS = [6 + 2 * i for i in range(8)]


def prompts(vocab: int = VOCAB) -> list[list[int]]:
    rng = random.Random(0)
    prefix = [rng.randrange(3, vocab) for _ in range(12)]  # three blocks every request shares
    return [prefix + [rng.randrange(3, vocab) for _ in range(rng.randrange(3, 40))] for _ in OUTPUT_LENS]


def generate_alone(model, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()


def run(model, folder) -> tuple[list[list[int]], list[list[int]], object, object]:
    """Save `model` to `folder`, run the oracle's requests through generate() and through the engine loaded
    from the folder: (expected, got, the engine's stats, the LoadedModel)."""
    model.save_pretrained(folder)
    model.set_attn_implementation("eager")
    model.generation_config.eos_token_id = None
    requests = list(zip(prompts(model.config.get_text_config().vocab_size), OUTPUT_LENS))
    expected = [generate_alone(model, prompt, n) for prompt, n in requests]
    specs = layout_from_config(model.config.get_text_config()).specs()
    longest = max(len(p) + n for p, n in requests)
    engine = Engine(EngineConfig(dtype="float32", block_size=BLOCK, max_num_batched_tokens=BUDGET, max_num_seqs=8,
                                 num_kv_blocks=blocks_per_sequence(specs, BLOCK, longest, BUDGET)))
    loaded = engine.load_model(folder)
    for i, (prompt, n) in enumerate(requests):
        engine.add_request(str(i), prompt, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))
    tokens = {str(i): [] for i in range(len(requests))}
    while engine.has_unfinished():
        for out in engine.step():
            tokens[out.request_id] += out.new_token_ids
    return expected, [tokens[str(i)] for i in range(len(requests))], engine.stats(), loaded


def tiny_random(model_type: str, layers: int) -> torch.nn.Module:
    """A small random model of a model type's causal-LM class, from its config class's defaults."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = AutoConfig.for_model(model_type, **tiny_shape(VOCAB), num_hidden_layers=layers)
    for name, value in (("num_local_experts", 4), ("num_experts", 4), ("num_experts_per_tok", 2)):
        if hasattr(config, name):
            setattr(config, name, value)
    config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]
    torch.manual_seed(0)
    return sharpened(getattr(transformers, config.architectures[0])._from_config(config, dtype=torch.float32))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_types", nargs="+", help="transformers model types, e.g. cohere2")
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    failed = 0
    for model_type in args.model_types:
        try:
            expected, got, stats, loaded = run(tiny_random(model_type, args.layers), tempfile.mkdtemp())
        except ModelLoadError as e:
            print(f"{model_type}: refused: {e}")
            failed += 1
            continue
        agree = got == expected
        failed += not agree
        print(f"{model_type}: {'equal to generate()' if agree else 'DIFFERS from generate()'}; "
              f"{loaded.layout.describe()}; attention {','.join(loaded.attention_features) or 'full'}; "
              f"experts {loaded.experts or 'none'}; {stats.num_preemptions} preemptions, "
              f"{stats.prefix_cache_hits} prefix-cache hit tokens")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
