"""The machine's measured GEMM rate and a workload's compute bound: the tokens/s it would reach if
every FLOP the model must do ran at that rate (no memory traffic, no host time, no padding).

FLOPs counted as the engine does the work: every prompt token and every output token but the last
goes through the layers once (2 FLOPs per weight of the linear layers, plus attention's QK and PV
over the context so far); only the rows that yield a token go through the LM head.
"""

import time

import torch

GEMM_ROWS = 1024  # rows of the measured GEMM: a large prefill, so the rate is the best this CPU reaches


def gemm_flops_per_s(hf_config, dtype: torch.dtype, device: str = "cpu", rounds: int = 5) -> float:
    """Best of a few runs of the model's widest linear layer (hidden -> intermediate) on GEMM_ROWS rows."""
    a = torch.randn(GEMM_ROWS, hf_config.hidden_size, dtype=dtype, device=device)
    w = torch.randn(hf_config.intermediate_size, hf_config.hidden_size, dtype=dtype, device=device)
    torch.nn.functional.linear(a, w)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        torch.nn.functional.linear(a, w)
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * GEMM_ROWS * hf_config.hidden_size * hf_config.intermediate_size / best


def layer_weights(hf_config) -> int:
    """Weights of the linear layers of all decoder layers (the LM head and embeddings apart)."""
    hidden, inter = hf_config.hidden_size, hf_config.intermediate_size
    head_dim = getattr(hf_config, "head_dim", None) or hidden // hf_config.num_attention_heads
    q_and_o = 2 * hidden * hf_config.num_attention_heads * head_dim
    k_and_v = 2 * hidden * hf_config.num_key_value_heads * head_dim
    return hf_config.num_hidden_layers * (q_and_o + k_and_v + 3 * hidden * inter)


def workload_flops(hf_config, requests: list[tuple[int, int]]) -> float:
    """FLOPs of (prompt tokens, output tokens) requests run to their exact lengths."""
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    attention_width = hf_config.num_hidden_layers * hf_config.num_attention_heads * head_dim
    per_row = 2 * layer_weights(hf_config)
    lm_head = 2 * hf_config.hidden_size * hf_config.vocab_size
    total = 0.0
    for prompt, output in requests:
        rows = prompt + output - 1
        # Row i attends over i + 1 keys: QK and PV are 2 FLOPs each per key and attention dimension.
        attention = 4 * attention_width * rows * (rows + 1) / 2
        total += rows * per_row + attention + output * lm_head
    return total


def compute_bound_tokens_per_s(hf_config, requests: list[tuple[int, int]], flops_per_s: float) -> float:
    return sum(output for _, output in requests) / (workload_flops(hf_config, requests) / flops_per_s)
