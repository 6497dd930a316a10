"""Time to first token of a chat's follow-up turn on a hybrid model, with and without a prefix-cache hit.

Each turn re-sends the whole conversation. With state snapshots (engine.state_snapshots) the follow-up's prefix
comes from the cache: its attention layers' KV blocks and its recurrent layers' states, kept where the first
turn's decode last filled a block when the follow-up re-sends the answer as it was generated, or after the first
turn's prompt's last whole block when the answer comes back rewritten (a chat template that drops an answer's
reasoning, say). Without them (num_state_snapshots = 0: prefix caching off for a hybrid) the whole conversation
is prefilled again.

The tests' tiny hybrids (tests/engine/architectures.py: Qwen3.5 with Gated DeltaNet, Nemotron-H with Mamba-2,
LFM2 with short convolutions), float32 on this machine, one engine per setting: a first turn of --prompt tokens
and --answer answer tokens, then the follow-up (first turn, answer, 32 new tokens), once with the answer as
generated and once with other tokens in its place; a TTFT is the best of --repeats conversations, each with new
random tokens (the best, not the median: on a machine shared with other work the median is mostly the others'
load), on one torch thread. The first turn's own TTFT, beside it, is what the cut of its prefill at the snapshot
point costs it (one more step for the last partial block).

    python -m benchmarks.hybrid_prefix [--prompt 1000] [--answer 200] [--repeats 5] [--json OUT]
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
NEW = 32
FOLLOW_UPS = ("answer as generated", "answer rewritten")


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


def conversation(engine: Engine, rng: random.Random, n: int, prompt_len: int, answer_len: int) -> dict:
    """The first turn, then its follow-up with the answer as generated, then with the answer rewritten."""
    first = [rng.randrange(3, VOCAB) for _ in range(prompt_len)]
    first_ttft, answer, _ = ttft(engine, f"first-{n}", first, answer_len)
    new = [rng.randrange(3, VOCAB) for _ in range(NEW)]
    rewritten = [rng.randrange(3, VOCAB) for _ in answer]
    out = {"first_ttft_s": first_ttft, "follow_up_tokens": len(first + answer + new)}
    for follow_up, sent in zip(FOLLOW_UPS, (answer, rewritten)):
        seconds, _, cached = ttft(engine, f"{follow_up}-{n}", first + sent + new, 1)
        out[follow_up] = {"ttft_s": seconds, "cached": cached}
    return out


def measure(name: str, prompt_len: int, answer_len: int, repeats: int) -> dict:
    folder = tempfile.mkdtemp()
    build(name).save_pretrained(folder)
    out = {}
    for setting, snapshots in (("with_hit", None), ("without", 0)):
        engine = Engine(EngineConfig(dtype="float32", max_num_seqs=4, num_state_snapshots=snapshots))
        engine.load_model(folder)
        conversation(engine, random.Random(99), -1, 64, 16)  # warm-up: first calls' one-off costs
        runs = [conversation(engine, random.Random(n), n, prompt_len, answer_len) for n in range(repeats)]
        out[setting] = {"prefix_caching": engine.stats().execution["prefix_caching"],
                        "first_ttft_ms": 1000 * min(r["first_ttft_s"] for r in runs),
                        "follow_up_tokens": runs[0]["follow_up_tokens"]}
        for follow_up in FOLLOW_UPS:
            out[setting][follow_up] = {"ttft_ms": 1000 * min(r[follow_up]["ttft_s"] for r in runs),
                                       "cached": runs[0][follow_up]["cached"]}
    without = out["without"][FOLLOW_UPS[0]]["ttft_ms"]
    out["speedup"] = {follow_up: without / out["with_hit"][follow_up]["ttft_ms"] for follow_up in FOLLOW_UPS}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=1000, help="the first turn's prompt tokens")
    parser.add_argument("--answer", type=int, default=200, help="the first turn's answer tokens")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    print("| model | follow-up TTFT, answer as generated: cached | speedup | answer rewritten: cached | speedup | "
          "without (prefilled again) | first turn's TTFT, with / without snapshots |")
    print("|---|---|---|---|---|---|---|")
    for name, label in MODELS.items():
        r = results[name] = measure(name, args.prompt, args.answer, args.repeats)
        hit, miss, tokens = r["with_hit"], r["without"], r["with_hit"]["follow_up_tokens"]
        cells = [f"{hit[f]['ttft_ms']:.1f} ms: {hit[f]['cached']} of {tokens} | {r['speedup'][f]:.1f}x"
                 for f in FOLLOW_UPS]
        print(f"| {label} | {' | '.join(cells)} | {miss[FOLLOW_UPS[0]]['ttft_ms']:.1f} ms | "
              f"{hit['first_ttft_ms']:.1f} / {miss['first_ttft_ms']:.1f} ms |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
