"""The compute bound's FLOP count agrees with the model it describes."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.compute_bound import compute_bound_tokens_per_s, layer_weights, workload_flops

CONFIG = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)


def test_layer_weights_are_the_decoder_layers_linear_weights():
    model = LlamaForCausalLM(CONFIG)
    linear = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert layer_weights(CONFIG) == linear


def test_one_prompt_token_then_one_output_is_one_row_through_layers_and_lm_head():
    attention = 4 * 3 * 4 * 16  # one key: QK and PV over every layer's heads x head_dim
    assert workload_flops(CONFIG, [(1, 1)]) == 2 * layer_weights(CONFIG) + attention + 2 * 64 * 300


def test_the_bound_is_output_tokens_over_the_time_the_flops_take():
    requests = [(10, 4), (20, 8)]
    rate = 1e9
    assert compute_bound_tokens_per_s(CONFIG, requests, rate) == 12 / (workload_flops(CONFIG, requests) / rate)
