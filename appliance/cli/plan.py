"""`appliance models plan PATH`: what a model would take in memory, from its config.json alone, without the service.

The same plan the service makes before it loads a model (appliance.serving.memory_plan): weights at
the serving dtype (counted from the parameters where the folder has no weights), the KV cache as the
engine groups its attention layers, the state slots of a hybrid model's recurrent layers, and the
largest step's activations; with what one token of KV cache and one sequence's states take.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.cli.common import CliError, print_json

MIB = 1 << 20
GIB = 1 << 30


def add_plan_command(sub) -> None:
    plan = sub.add_parser("plan", help="what a model would take in memory (weights, KV cache, state slots, "
                          "activations), from its config.json alone; no service needed")
    plan.add_argument("path", type=Path, help="a model folder with a config.json (weights optional)")
    plan.add_argument("--device", default="cuda", help="where it would run (default cuda; cpu: the engine's 2 GiB "
                      "KV default)")
    plan.add_argument("--dtype", default="auto", help="serving dtype (default auto: bfloat16 on cuda)")
    plan.add_argument("--max-num-seqs", type=int, default=64, help="sequences at once: one state slot each")
    plan.add_argument("--max-num-batched-tokens", type=int, default=2048)
    plan.add_argument("--block-size", type=int, default=16)
    plan.add_argument("--kv-context", type=int, default=4096, help="tokens per sequence the KV cache is sized for "
                      "(the service's kv_context)")
    plan.add_argument("--kv-cache-bytes", type=int, help="the KV cache and state slots' budget instead")
    plan.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"])
    plan.add_argument("--quantization", choices=["int8", "int4", "fp8"])
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(handler=show_plan)


def show_plan(args: argparse.Namespace) -> int:
    from appliance.serving import memory_plan
    from engine import EngineConfig, EngineError
    from engine.kv_cache_spec import layout_from_config
    from engine.state_spec import state_slots_for, state_snapshots_for

    if not (args.path / "config.json").is_file():
        raise CliError(f"{args.path} has no config.json; give a model folder", 2)
    try:
        config = EngineConfig(device=args.device, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
                              max_num_batched_tokens=args.max_num_batched_tokens, block_size=args.block_size,
                              kv_cache_bytes=args.kv_cache_bytes, kv_cache_dtype=args.kv_cache_dtype,
                              quantization=args.quantization)
        need = memory_plan.needs(args.path, config, args.kv_context)
        architecture = memory_plan.model_architecture(args.path)
    except EngineError as e:
        raise CliError(str(e), 2) from None
    layout = layout_from_config(architecture.text_config)
    states = architecture.states
    serving = memory_plan.DTYPE_BYTES.get(config.resolved_dtype, 4)
    plan = {
        "architecture": architecture.declared, "runs": architecture.class_name, "device": config.device,
        "dtype": config.resolved_dtype, "max_num_seqs": config.max_num_seqs, "kv_context": args.kv_context,
        **need.to_dict(),
        "kv_cache_layout": layout.describe(),
        "kv_bytes_per_token": layout.block_bytes(1, memory_plan.kv_value_bytes(config)) * len(layout.groups),
        "state_layers": states.describe() or "none",
        "state_slots": state_slots_for(config.max_num_seqs, states),
        "state_snapshots": state_snapshots_for(config.num_state_snapshots, config.max_num_seqs, states,
                                               config.enable_prefix_caching),
        "state_bytes_per_sequence": states.bytes_per_slot(serving),
    }
    if args.json:
        print_json(plan)
    else:
        print(format_plan(plan))
    return 0


def format_plan(p: dict) -> str:
    runs = p["architecture"] + (f" (its language model, {p['runs']})" if p["runs"] != p["architecture"] else "")
    lines = [f"{runs} on {p['device']} in {p['dtype']}, up to {p['max_num_seqs']} sequences",
             f"  weights      {p['weights_bytes'] / GIB:8.2f} GiB",
             f"  KV cache     {p['kv_cache_bytes'] / GIB:8.2f} GiB   {p['kv_bytes_per_token'] / 1024:.1f} KiB a token "
             f"({p['kv_cache_layout']})"]
    if p["state_slots"]:
        lines.append(f"  state slots  {p['state_bytes'] / GIB:8.2f} GiB   {p['state_slots']} slots of "
                     f"{p['state_bytes_per_sequence'] / MIB:.1f} MiB, one a sequence ({p['state_layers']}), and "
                     f"{p['state_snapshots']} snapshots of one for prefix caching")
    lines += [f"  activations  {p['activations_bytes'] / GIB:8.2f} GiB",
              f"  total        {p['total_bytes'] / GIB:8.2f} GiB"]
    return "\n".join(lines)
