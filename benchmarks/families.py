"""Mixture-of-experts, sliding-window and hybrid models on CPU: our engine against transformers' generate().

Random weights at small but real proportions, float32, one process, one seeded workload (EOS
ignored): a Qwen3-MoE-shaped model (32 experts, 4 routed per token), a Gemma-3-shaped model (5
sliding layers of window 256 to 1 full), with prompts long enough that the window matters, and two
hybrids whose recurrent layers run on state slots: Qwen3.6-shaped (3 Gated DeltaNet : 1 full attention,
32 experts) and Nemotron-H-shaped (Mamba-2, MoE and attention layers).
  (a) our engine, all requests submitted at once (experts through transformers' grouped_mm; window
      layers read their window and give the rest of their blocks back);
  (b) transformers generate() in static left-padded batches of 8 (each batch runs to its longest output)
      with the same experts implementation and transformers' own attention (sdpa, eager for softcaps);
  (c) batch-1 decode, one request alone, each side.
Also the KV blocks each run held at its peak, which for the sliding model is what window-aware freeing saves.
With --experts, each experts implementation transformers offers (eager, batched_mm, grouped_mm) through
generate() on the MoE model, batch 1 and in batches of 8: the figures behind the engine's choice.

    python -m benchmarks.families [--requests 16] [--json OUT] [--only NAME] [--experts]
"""

import argparse
import json
import platform
import time

import torch
import transformers
from transformers import Gemma3TextConfig, NemotronHConfig, Qwen3_5MoeTextConfig, Qwen3MoeConfig

from benchmarks.throughput import Request, engine_decode_rate, make_workload, run_engine, run_static_generate
from benchmarks.cuda_fast_path import generate_decode_rate
from engine import Engine, EngineConfig

SHAPE = dict(vocab_size=32000, hidden_size=512, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
             max_position_embeddings=8192)
MODELS = {
    "qwen3-moe-shaped (8 layers, 32 experts, top 4)": Qwen3MoeConfig(
        **SHAPE, num_hidden_layers=8, intermediate_size=1024, moe_intermediate_size=256, num_experts=32,
        num_experts_per_tok=4, architectures=["Qwen3MoeForCausalLM"]),
    "gemma3-shaped (12 layers, 5 sliding 256 : 1 full)": Gemma3TextConfig(
        **SHAPE, num_hidden_layers=12, intermediate_size=1536, sliding_window=256, query_pre_attn_scalar=64,
        architectures=["Gemma3ForCausalLM"]),
    "qwen3.6-shaped (8 layers, 6 Gated DeltaNet : 2 full, 32 experts, top 4)": Qwen3_5MoeTextConfig(
        **SHAPE, num_hidden_layers=8, linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=64,
        linear_value_head_dim=64, num_experts=32, num_experts_per_tok=4, moe_intermediate_size=256,
        shared_expert_intermediate_size=256, architectures=["Qwen3_5MoeForCausalLM"]),
    "nemotron-h-shaped (8 layers: 3 Mamba-2, 3 MoE, 2 attention)": NemotronHConfig(
        **SHAPE, hybrid_override_pattern="ME*ME*ME", mamba_num_heads=16, mamba_head_dim=64, ssm_state_size=64,
        n_groups=2, chunk_size=128, n_routed_experts=32, num_experts_per_tok=4, moe_intermediate_size=256,
        moe_shared_expert_intermediate_size=512, architectures=["NemotronHForCausalLM"]),
}


def build(config, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return getattr(transformers, config.architectures[0])._from_config(config, dtype=torch.float32).eval()


def run_counting_blocks(engine: Engine, workload: list[Request]):
    """run_engine, and the most KV blocks the engine held at once meanwhile."""
    peak, original = 0, engine.step

    def step():
        nonlocal peak
        outputs = original()
        peak = max(peak, engine.stats().kv_blocks_used)
        return outputs

    engine.step = step
    try:
        return run_engine(engine, workload), peak
    finally:
        engine.step = original


def bench(name: str, config, workload: list[Request]) -> dict:
    model = build(config)
    folder = f"/tmp/bench-families-{config.model_type}"
    model.save_pretrained(folder)
    engine = Engine(EngineConfig(dtype="float32", max_num_seqs=len(workload)))
    loaded = engine.load_model(folder)
    ours, peak = run_counting_blocks(engine, workload)
    alone = workload[0]
    ours_b1 = engine_decode_rate(engine, "alone", alone.prompt, 64)
    if loaded.experts:
        model.set_experts_implementation(loaded.experts)
    theirs = run_static_generate(model, workload, batch_size=8)
    theirs_b1 = generate_decode_rate(model, alone.prompt, 64)
    return {"model": name, "layout": loaded.layout.describe() + (f"; state slots: {loaded.states.describe()}"
                                                                  if loaded.states else ""), "experts": loaded.experts,
            "attention": loaded.attention_features, "ours_tokens_per_s": ours.tokens_per_s,
            "generate_tokens_per_s": theirs.tokens_per_s, "ratio": ours.tokens_per_s / theirs.tokens_per_s,
            "ours_batch1_tokens_per_s": ours_b1, "generate_batch1_tokens_per_s": theirs_b1,
            "peak_kv_blocks": peak, "kv_blocks_total": engine.stats().kv_blocks_total}


def compare_experts(config, workload: list[Request]) -> dict:
    """generate()'s tokens/s with each experts implementation on one MoE model, the same weights."""
    model = build(config)
    figures = {}
    for implementation in ("eager", "batched_mm", "grouped_mm"):
        model.set_experts_implementation(implementation)
        row = figures[implementation] = {"batch1": generate_decode_rate(model, workload[0].prompt, 64)}
        # batched_mm gathers each token's experts' weights: a batch of 8 prompts' prefill would take ~30 GB here
        if implementation != "batched_mm":
            row["batch8"] = run_static_generate(model, workload, batch_size=8).tokens_per_s
        print(f"  experts {implementation:<10}  generate() batch-1 {row['batch1']:.1f} tok/s, "
              f"b8 {row['batch8']:.1f} tok/s" if "batch8" in row else
              f"  experts {implementation:<10}  generate() batch-1 {row['batch1']:.1f} tok/s, b8 not run (memory)")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--only", help="run the models whose name contains this (e.g. shaped, hybrid names)")
    parser.add_argument("--experts", action="store_true", help="compare the experts implementations on the MoE model")
    args = parser.parse_args()
    workload = make_workload(args.requests, SHAPE["vocab_size"], seed=0, prompt_range=(256, 1024), output_range=(32, 128))
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.requests} requests, prompts 256-1024, outputs 32-128, float32")
    if args.experts:
        name = next(n for n in MODELS if n.startswith("qwen3-moe"))
        print(name)
        results = [{"model": name, "experts": compare_experts(MODELS[name], workload)}]
    else:
        results = [run_model(name, config, workload) for name, config in MODELS.items()
                   if not args.only or args.only in name]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def run_model(name: str, config, workload: list[Request]) -> dict:
    """One model's figures, printed as they come."""
    start = time.perf_counter()
    r = bench(name, config, workload)
    print(f"{name}: {r['layout']}, experts {r['experts']}, attention {','.join(r['attention']) or 'full'}\n"
          f"  throughput  ours {r['ours_tokens_per_s']:.1f} tok/s, generate() b8 {r['generate_tokens_per_s']:.1f} "
          f"-> {r['ratio']:.2f}x\n"
          f"  batch-1     ours {r['ours_batch1_tokens_per_s']:.1f} tok/s, generate() "
          f"{r['generate_batch1_tokens_per_s']:.1f}\n"
          f"  KV blocks   peak {r['peak_kv_blocks']} of {r['kv_blocks_total']}  ({time.perf_counter() - start:.0f} s)")
    return r


if __name__ == "__main__":
    main()
