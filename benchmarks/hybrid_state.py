"""What hybrid models keep per sequence, computed from their real configs (no weights): the recurrent layers'
state slot beside the attention layers' KV bytes per token.

For each family's published shape: its attention and recurrent layers (the engine's own capability walk
on the meta device), KV bytes a token at bfloat16 (the engine's KV cache layout), a sequence's state
(conv states at bfloat16, recurrent states at float32: engine.state_spec), the context length whose KV
equals one state ("break-even"), and one sequence's cache at 4k and 32k tokens against the same model
were every token-mixing layer attention (each recurrent layer's KV at the attention layers' shape;
Falcon-H1's layers have both, so there the state is what the hybrid adds).

    python -m benchmarks.hybrid_state [--json OUT]
"""

import argparse
import json

from transformers import (FalconH1Config, GraniteMoeHybridConfig, Lfm2Config, NemotronHConfig, Qwen3_5TextConfig,
                          Qwen3NextConfig)

from benchmarks.model_shapes import NEMOTRON_3_NANO_30B_A3B, PLANNED
from engine.capabilities import check_config
from engine.kv_cache_spec import layout_from_config

BF16 = 2
QWEN_LINEAR = dict(linear_num_key_heads=16, linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4)
# The fields of each config.json that decide the shapes (the rest: the classes' defaults).
REAL = {
    "Qwen3-Coder-Next (qwen3_next, 80B-A3B)": Qwen3NextConfig(
        hidden_size=2048, num_hidden_layers=48, num_attention_heads=16, num_key_value_heads=2, head_dim=256,
        linear_num_value_heads=32, **QWEN_LINEAR, num_experts=512, num_experts_per_tok=10,
        architectures=["Qwen3NextForCausalLM"]),
    "Qwen3.5-27B (qwen3_5, dense)": Qwen3_5TextConfig(
        hidden_size=5120, num_hidden_layers=64, num_attention_heads=24, num_key_value_heads=4, head_dim=256,
        linear_num_value_heads=48, **QWEN_LINEAR, intermediate_size=17408, architectures=["Qwen3_5ForCausalLM"]),
    "Qwen3.6-35B-A3B (qwen3_5_moe)": PLANNED["qwen3.6-35b-a3b"].config(),
    "Nemotron-3-Nano-30B-A3B (nemotron_h)": NemotronHConfig(**NEMOTRON_3_NANO_30B_A3B,
                                                            architectures=["NemotronHForCausalLM"]),
    "Granite-4.0-H-Small (granitemoehybrid, 32B-A9B)": GraniteMoeHybridConfig(
        hidden_size=4096, num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=8,
        layer_types=(["mamba"] * 5 + ["attention"] + ["mamba"] * 4) * 4, mamba_n_heads=128, mamba_d_head=64,
        mamba_d_state=128, mamba_n_groups=1, mamba_d_conv=4, mamba_expand=2, num_local_experts=72,
        num_experts_per_tok=10, intermediate_size=768, shared_intermediate_size=1536, vocab_size=100352,
        architectures=["GraniteMoeHybridForCausalLM"]),
    "Falcon-H1-7B (falcon_h1)": FalconH1Config(
        hidden_size=3072, num_hidden_layers=44, num_attention_heads=12, num_key_value_heads=2, head_dim=128,
        mamba_d_ssm=3072, mamba_n_heads=24, mamba_d_head=128, mamba_d_state=256, mamba_n_groups=1, mamba_d_conv=4,
        architectures=["FalconH1ForCausalLM"]),
    "LFM2-1.2B (lfm2)": Lfm2Config(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                                   full_attn_idxs=[2, 5, 8, 10, 12, 14], conv_L_cache=3, vocab_size=65536,
                                   architectures=["Lfm2ForCausalLM"]),
}


def figures(config) -> dict:
    architecture = check_config(config)
    layout = layout_from_config(config)
    kv_per_token = layout.block_bytes(1, BF16) * len(layout.groups)
    state = architecture.states.bytes_per_slot(BF16)
    mixers = {layer for group in layout.groups for layer in group.layers} | {i for i, _ in architecture.states.layers}
    all_attention = kv_per_token * len(mixers) // layout.num_layers
    return {"attention_layers": layout.num_layers, "recurrent_layers": architecture.states.describe(),
            "kv_bytes_per_token": kv_per_token, "state_bytes_per_sequence": state,
            "break_even_tokens": state / kv_per_token,
            **{f"sequence_bytes_{n // 1024}k": state + n * kv_per_token for n in (4096, 32768)},
            **{f"all_attention_bytes_{n // 1024}k": n * all_attention for n in (4096, 32768)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    mib = 1 << 20
    print("| model | attention layers | recurrent layers | KV / token | state / sequence | break-even | "
          "a sequence at 4k (all-attention) | at 32k (all-attention) |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for name, config in REAL.items():
        f = results[name] = figures(config)
        print(f"| {name} | {f['attention_layers']} | {f['recurrent_layers']} | {f['kv_bytes_per_token'] / 1024:.0f} KiB | "
              f"{f['state_bytes_per_sequence'] / mib:.1f} MiB | {f['break_even_tokens']:,.0f} tokens | "
              f"{f['sequence_bytes_4k'] / mib:,.0f} MiB ({f['all_attention_bytes_4k'] / mib:,.0f}) | "
              f"{f['sequence_bytes_32k'] / mib:,.0f} MiB ({f['all_attention_bytes_32k'] / mib:,.0f}) |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
