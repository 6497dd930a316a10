"""KV capacity with and without window-aware freeing: how many sequences one KV budget holds at once.

Real configs' shapes (no weights): each model's layers grouped as the engine groups them
(engine.kv_cache_spec), against full allocation, where every layer keeps every token of every
sequence. Sequences are prefilled in chunks of max_num_batched_tokens through the real block
manager, until the pool refuses one; each then gives back what its next decode step would.

    python -m benchmarks.kv_capacity [--budget-gib 40] [--contexts 4096 8192 32768]
"""

import argparse

from transformers import Gemma2Config, Gemma3TextConfig, GptOssConfig, MistralConfig

from engine.block_manager import BlockManager
from engine.kv_cache_spec import AttentionSpec, KVCacheLayout, layout_from_config
from engine.sampling_params import SamplingParams
from engine.sequence import Sequence

SHAPES = {
    "gemma-3-12b (40 sliding 1024 : 8 full)": Gemma3TextConfig(num_hidden_layers=48, sliding_window=1024,
                                                               num_key_value_heads=8, head_dim=256),
    "gemma-3-27b (52 sliding 1024 : 10 full)": Gemma3TextConfig(num_hidden_layers=62, sliding_window=1024,
                                                                num_key_value_heads=16, head_dim=128),
    "gpt-oss-20b (12 sliding 128 : 12 full)": GptOssConfig(),
    "gemma-2-9b (21 sliding 4096 : 21 full)": Gemma2Config(num_hidden_layers=42, num_key_value_heads=8, head_dim=256),
    "mistral-7b-v0.1 (32 sliding 4096)": MistralConfig(sliding_window=4096),
}


def sequences_held(layout: KVCacheLayout, budget_bytes: int, context: int, chunk: int, block_size: int = 16,
                   dtype_bytes: int = 2) -> tuple[int, BlockManager]:
    """How many sequences of `context` tokens, prefilled `chunk` tokens a step, the budget holds at once."""
    bm = BlockManager(budget_bytes // layout.block_bytes(block_size, dtype_bytes) - 1, block_size, specs=layout.specs())
    held = 0
    while True:
        seq = Sequence(str(held), [held] * context, SamplingParams())
        while seq.num_computed_tokens < context:
            if not bm.allocate(seq, min(chunk, context - seq.num_computed_tokens)):
                return held, bm
            seq.num_computed_tokens = min(context, seq.num_computed_tokens + chunk)
            bm.cache_full_blocks(seq)
        bm.free_invisible_blocks(seq)  # what its next decode step gives back first
        held += 1


def full_allocation(layout: KVCacheLayout) -> KVCacheLayout:
    """The same layers, every one keeping every token."""
    layers = {layer: AttentionSpec() for g in layout.groups for layer in g.layers}
    return KVCacheLayout.from_specs(layers, layout.kv_heads, layout.head_dim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-gib", type=float, default=40)
    parser.add_argument("--contexts", type=int, nargs="+", default=[4096, 8192, 32768])
    parser.add_argument("--chunk", type=int, default=2048)
    args = parser.parse_args()
    budget = int(args.budget_gib * (1 << 30))
    print(f"KV budget {args.budget_gib:g} GiB, bf16, block size 16, prefill chunks of {args.chunk}")
    print(f"{'model':42} {'context':>8} {'full':>6} {'windows':>8} {'ratio':>6}")
    for name, config in SHAPES.items():
        layout = layout_from_config(config)
        for context in args.contexts:
            windowed, _ = sequences_held(layout, budget, context, args.chunk)
            full, _ = sequences_held(full_allocation(layout), budget, context, args.chunk)
            print(f"{name:42} {context:>8} {full:>6} {windowed:>8} {windowed / max(full, 1):>5.1f}x")


if __name__ == "__main__":
    main()
