"""Time to first token of a chat's follow-up turn on a hybrid model, with and without a prefix-cache hit.

Each turn re-sends the whole conversation. With state snapshots (engine.state_snapshots) the follow-up's prefix
up to the first turn's last whole block comes from the cache: its attention layers' KV blocks and its recurrent
layers' states, kept after the first turn's prefill; without them (num_state_snapshots = 0: prefix caching off
for a hybrid) the whole conversation is prefilled again.

The tests' tiny hybrids (tests/engine/architectures.py: Qwen3.5 with Gated DeltaNet, Nemotron-H with Mamba-2,
LFM2 with short convolutions), float32 on this machine, one engine per setting: a first turn of --prompt tokens
and 16 answer tokens, then the follow-up (first turn, answer, 32 new tokens); its TTFT is the best of --repeats
conversations, each with new random tokens (the best, not the median: on a machine shared with other work the
median is mostly the others' load), on one torch thread. The first turn's own TTFT, beside it, is what the cut
of its prefill at the snapshot point costs it (one more step for the last partial block).

    python -m benchmarks.hybrid_prefix [--prompt 1000] [--repeats 5] [--json OUT]
"""

import argparse
import json
import random
import tempfile

import torch

from engine import Engine, EngineConfig, SamplingParams
from tests.engine.architectures import VOCAB, build

MODELS = {"qwen3_5": "tiny Qwen3.5 (Gated DeltaNet)", "nemotron_h": "tiny Nemotron-H (Mamba-2)",
          "lfm2": "tiny LFM2 (short convolution)"}
ANSWER, NEW = 16, 32


def ttft(engine: Engine, rid: str, prompt: list[int], max_tokens: int) -> tuple[float, list[int], int]:
    """(seconds to the first token, the tokens, prompt tokens found cached) of one request alone."""
    engine.add_request(rid, prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
    tokens, first, cached = [], None, 0
    while engine.has_unfinished():
        for out in engine.step():
            tokens += out.new_token_ids
            cached = out.num_cached_tokens
            if first is None:
                first = out.first_token_time - out.arrival_time
    return first, tokens, cached


def conversation(engine: Engine, rng: random.Random, n: int, prompt_len: int) -> dict:
    first = [rng.randrange(3, VOCAB) for _ in range(prompt_len)]
    first_ttft, answer, _ = ttft(engine, f"first-{n}", first, ANSWER)
    follow_up = first + answer + [rng.randrange(3, VOCAB) for _ in range(NEW)]
    follow_ttft, _, cached = ttft(engine, f"follow-up-{n}", follow_up, 1)
    return {"first_ttft_s": first_ttft, "follow_up_ttft_s": follow_ttft, "follow_up_tokens": len(follow_up),
            "cached": cached}


def measure(name: str, prompt_len: int, repeats: int) -> dict:
    folder = tempfile.mkdtemp()
    build(name).save_pretrained(folder)
    out = {}
    for setting, snapshots in (("with_hit", None), ("without", 0)):
        engine = Engine(EngineConfig(dtype="float32", max_num_seqs=4, num_state_snapshots=snapshots))
        engine.load_model(folder)
        conversation(engine, random.Random(99), -1, 64)  # warm-up: first calls' one-off costs
        runs = [conversation(engine, random.Random(n), n, prompt_len) for n in range(repeats)]
        out[setting] = {"prefix_caching": engine.stats().execution["prefix_caching"],
                        "first_ttft_ms": 1000 * min(r["first_ttft_s"] for r in runs),
                        "follow_up_ttft_ms": 1000 * min(r["follow_up_ttft_s"] for r in runs),
                        "follow_up_tokens": runs[0]["follow_up_tokens"], "cached": runs[0]["cached"]}
    out["speedup"] = out["without"]["follow_up_ttft_ms"] / out["with_hit"]["follow_up_ttft_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=1000, help="the first turn's prompt tokens")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    print("| model | follow-up TTFT with the hit | cached | without (prefilled again) | speedup | first turn's TTFT, "
          "with / without snapshots |")
    print("|---|---|---|---|---|---|")
    for name, label in MODELS.items():
        r = results[name] = measure(name, args.prompt, args.repeats)
        hit, miss = r["with_hit"], r["without"]
        print(f"| {label} | {hit['follow_up_ttft_ms']:.1f} ms | {hit['cached']} of {hit['follow_up_tokens']} | "
              f"{miss['follow_up_ttft_ms']:.1f} ms | {r['speedup']:.1f}x | {hit['first_ttft_ms']:.1f} / "
              f"{miss['first_ttft_ms']:.1f} ms |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
