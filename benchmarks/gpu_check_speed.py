"""Speed of each shape at its full size, served as the appliance serves it, against transformers in the same run.

Ours: batch-1 decode tokens/s (median of rounds, each with a prompt of its own so no round hits the
prefix cache) and its memory-bandwidth utilisation, then each throughput workload with all requests
submitted at once. transformers, on the same random weights once ours is freed: generate() at batch 1
and in static batches on the smallest workload (the first requests of the larger one: the workloads
share a seed), and its continuous batching (generate_batch's manager) on every workload.

MBU = bytes read per decode token x tokens/s / the copy bandwidth measured in the same run. Bytes per
token: every weight once, except an untied input embedding table (only its looked-up rows are read)
and, in a mixture-of-experts layer, all but the experts a token is routed to (top-k of E); plus the
keys and values attended, a sliding layer's no more than its window.
"""

import statistics

import torch

from benchmarks.cuda_fast_path import cpu_cb_config, generate_decode_rate, weight_bytes
from benchmarks.gpu_check_plan import Plan
from benchmarks.model_shapes import SHAPES, sliding_window_of
from benchmarks.throughput import Request, engine_decode_rate, make_workload, run_engine, run_static_generate, run_transformers_cb
from engine import Engine
from engine.loader import load_dummy
from engine.model_runner import head_dim


def weights_read_per_token(model: torch.nn.Module, config) -> int:
    _, without_embedding_table = weight_bytes(model)
    experts = sum(p.numel() * p.element_size() for name, p in model.named_parameters() if ".experts." in name)
    num_experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    if experts and num_experts:
        without_embedding_table -= experts * (1 - config.num_experts_per_tok / num_experts)
    return int(without_embedding_table)


def kv_read_per_token(config, dtype: torch.dtype, prompt_len: int, output_len: int) -> float:
    """Mean KV bytes one decode token attends over the batch-1 run (contexts prompt + 1 .. prompt + output - 1)."""
    per_layer_token = 2 * config.num_key_value_heads * head_dim(config) * dtype.itemsize
    window = sliding_window_of(config)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    contexts = range(prompt_len + 1, prompt_len + output_len)
    total = 0
    for layer_type in layer_types:
        sliding = layer_type == "sliding_attention" and window
        total += sum(min(c, window) if sliding else c for c in contexts)
    return per_layer_token * total / len(contexts)


def batch1_prompt(plan: Plan, vocab: int, round_: int) -> list[int]:
    prompt = make_workload(1, vocab, 0, (plan.batch1_prompt_len,) * 2, (1, 1))[0].prompt
    return [1000 + (prompt[0] + round_) % (vocab - 1000)] + prompt[1:]  # a first token of its own each round


def workload(plan: Plan, requests: int, vocab: int) -> list[Request]:
    return make_workload(requests, vocab, 0, plan.prompt_range, plan.output_range)


def measure_ours(name: str, plan: Plan, bandwidth_gb_s: float, entry: dict) -> None:
    config = SHAPES[name].config(tiny=plan.tiny)
    served = plan.served()
    engine = Engine(served)
    model = engine.load_model(config).model
    dtype = served.torch_dtype
    entry.update(dtype=served.resolved_dtype, execution=engine.stats().execution, kv_cache_bytes=engine.kv_cache_bytes,
                 max_num_seqs=served.max_num_seqs, max_num_batched_tokens=served.max_num_batched_tokens)
    weights = weights_read_per_token(model, config)
    del model
    kv = kv_read_per_token(config, dtype, plan.batch1_prompt_len, plan.batch1_output_len)
    engine_decode_rate(engine, "warm-up", batch1_prompt(plan, config.vocab_size, -1), 4)
    rates = [engine_decode_rate(engine, f"b1-{r}", batch1_prompt(plan, config.vocab_size, r), plan.batch1_output_len)
             for r in range(plan.batch1_rounds)]
    rate = statistics.median(rates)
    entry["batch1"] = {"prompt_len": plan.batch1_prompt_len, "output_len": plan.batch1_output_len,
                       "rounds": plan.batch1_rounds, "ours_tokens_per_s": rate, "weight_bytes_per_token": weights,
                       "kv_bytes_per_token": kv, "mbu": (weights + kv) * rate / (bandwidth_gb_s * 1e9)}
    entry["throughput"] = {}
    for requests in plan.workloads:
        r = run_engine(engine, workload(plan, requests, config.vocab_size))
        entry["throughput"][str(requests)] = {"output_tokens": r.output_tokens, "ours_tokens_per_s": r.tokens_per_s}
    engine.unload_model()


def transformers_model(name: str, plan: Plan):
    """transformers' own model on the weights ours had (load_dummy's seed), with SDPA where it takes it."""
    config = SHAPES[name].config(tiny=plan.tiny)
    served = plan.served()
    model = load_dummy(config, served.torch_dtype, served.device).model
    try:
        model.set_attn_implementation("sdpa")
    except (ValueError, ImportError):  # gpt-oss (sinks) and Gemma 2 (softcap) keep their default
        pass
    return model


def measure_generate(name: str, plan: Plan, entry: dict) -> None:
    model = transformers_model(name, plan)
    vocab = model.config.vocab_size
    run_static_generate(model, [Request(batch1_prompt(plan, vocab, -1), 4)], batch_size=1)  # warm-up
    entry["batch1"]["generate_tokens_per_s"] = generate_decode_rate(model, batch1_prompt(plan, vocab, 0),
                                                                    plan.batch1_output_len)
    smallest = str(min(plan.workloads))
    r = run_static_generate(model, workload(plan, int(smallest), vocab), plan.generate_batch_size)
    entry["throughput"][smallest]["generate_tokens_per_s"] = r.tokens_per_s
    entry["transformers_implementation"] = {"attention": model.config._attn_implementation,
                                            "experts": getattr(model.config, "_experts_implementation", None)}


def measure_continuous_batching(name: str, plan: Plan, entry: dict) -> None:
    model = transformers_model(name, plan)  # generate_batch must not run under inference_mode
    for requests in plan.workloads:
        requests_list = workload(plan, requests, model.config.vocab_size)
        cb_config = None if plan.device == "cuda" else cpu_cb_config(requests_list, plan.served().max_num_batched_tokens)
        r = run_transformers_cb(model, requests_list, exclude_setup=True, hints=True, cb_config=cb_config)
        entry["throughput"][str(requests)]["cb_tokens_per_s"] = r.tokens_per_s
