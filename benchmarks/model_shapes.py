"""The models people put on one GPU, as transformers configs built in code (random weights, nothing
downloaded): each at its real per-layer shape, and tiny of the same class for CPU runs.

Dimensions are those of the published config.json files. Gemma-3-12B's checkpoint is the multimodal
Gemma3ForConditionalGeneration; its language half (Gemma3ForCausalLM, "gemma3_text") is what runs
here; so is Qwen3.6-35B-A3B's (Qwen3_5MoeForConditionalGeneration; its text model Qwen3_5MoeForCausalLM:
30 Gated DeltaNet and 10 full-attention layers, 256 experts), which the GPU check runs with 20 of its
40 layers (the same per-layer shapes in half an H100). Nemotron-3-Nano-30B-A3B (23 Mamba-2, 23 MoE and 6
attention layers) is here for the memory plan (`appliance models plan`). gpt-oss-20b's published experts
are MXFP4; here every weight is in the run's dtype.
"""

from dataclasses import dataclass

from transformers import (Gemma3TextConfig, GptOssConfig, LlamaConfig, NemotronHConfig, PretrainedConfig,
                          Qwen3_5MoeTextConfig, Qwen3MoeConfig)

from benchmarks.cuda_fast_path import SHAPES as LLAMA_SHAPES

# Tiny shapes: make_workload draws token ids from 1000 up, so the vocabulary is larger than that.
TINY = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, max_position_embeddings=4096)
TINY_WINDOW = 8  # tokens: the dry run's prompts are longer


@dataclass(frozen=True)
class Shape:
    config_class: type
    architecture: str
    real: dict
    tiny: dict
    correctness_layers: int  # the fewest layers that hold every kind of layer the model has
    transformers_cb: bool = True  # transformers' continuous batching runs it (not linear attention)

    def config(self, tiny: bool = False, layers: int | None = None) -> PretrainedConfig:
        values = dict(self.tiny if tiny else self.real)
        if layers is not None:
            values["num_hidden_layers"] = layers  # layer_types follow the count (the classes' default patterns)
        return self.config_class(architectures=[self.architecture], **values)


SHAPES = {
    "llama-3.1-8b": Shape(LlamaConfig, "LlamaForCausalLM", LLAMA_SHAPES["llama-3.1-8b"],
                          TINY | dict(num_hidden_layers=2, tie_word_embeddings=False), correctness_layers=2),
    "qwen3-30b-a3b": Shape(
        Qwen3MoeConfig, "Qwen3MoeForCausalLM",
        dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
             num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
             num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=40960, rms_norm_eps=1e-6,
             rope_parameters={"rope_type": "default", "rope_theta": 1e6}, tie_word_embeddings=False,
             bos_token_id=151643, eos_token_id=151645),
        TINY | dict(num_hidden_layers=2, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                    norm_topk_prob=True, tie_word_embeddings=False),
        correctness_layers=2),
    "gpt-oss-20b": Shape(
        GptOssConfig, "GptOssForCausalLM",
        # The class's defaults are the published rope (yarn, factor 32), window 128 and alternating layers.
        dict(num_hidden_layers=24, num_local_experts=32, num_experts_per_tok=4, eos_token_id=200002,
             pad_token_id=199999),
        TINY | dict(num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2, sliding_window=TINY_WINDOW),
        correctness_layers=2),  # one sliding, one full
    "gemma-3-12b": Shape(
        Gemma3TextConfig, "Gemma3ForCausalLM",
        dict(vocab_size=262208, hidden_size=3840, intermediate_size=15360, num_hidden_layers=48,
             num_attention_heads=16, num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256,
             sliding_window=1024, max_position_embeddings=131072, bos_token_id=2, eos_token_id=1,
             rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                              "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}),
        TINY | dict(num_hidden_layers=6, query_pre_attn_scalar=16, sliding_window=TINY_WINDOW),
        correctness_layers=6),  # five sliding, one full
}


QWEN3_6_35B_A3B = dict(
    vocab_size=248320, hidden_size=2048, num_hidden_layers=40, num_attention_heads=16, num_key_value_heads=2,
    head_dim=256, linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
    linear_value_head_dim=128, linear_conv_kernel_dim=4, num_experts=256, num_experts_per_tok=8,
    moe_intermediate_size=512, shared_expert_intermediate_size=512, max_position_embeddings=262144, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                     "mrope_section": [11, 11, 10], "mrope_interleaved": True},
    tie_word_embeddings=False, eos_token_id=248044)
# Qwen3.5's and Qwen3.6's vision tower (Qwen3-VL's without deepstack), the same in Qwen3.5-27B and Qwen3.6-35B-A3B
# but for its merger's output, the language model's width (out_hidden_size: 5120 and 2048); their
# preprocessor_config.json: images of 256 x 256 to 4096 x 4096 pixels in patches of 16, 2 x 2 merged per token.
QWEN3_5_VISION = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2, in_channels=3, num_position_embeddings=2304)
QWEN3_5_IMAGE_PIXELS = {"shortest_edge": 65536, "longest_edge": 16777216}
NEMOTRON_3_NANO_30B_A3B = dict(
    vocab_size=131072, hidden_size=2688, hybrid_override_pattern="MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
    num_attention_heads=32, num_key_value_heads=2, head_dim=128, mamba_num_heads=64, mamba_head_dim=64,
    ssm_state_size=128, n_groups=8, conv_kernel=4, chunk_size=128, n_routed_experts=128, num_experts_per_tok=6,
    moe_intermediate_size=1856, moe_shared_expert_intermediate_size=3712, n_shared_experts=1, routed_scaling_factor=2.5,
    norm_topk_prob=True, mlp_hidden_act="relu2", intermediate_size=1856, max_position_embeddings=262144,
    layer_norm_epsilon=1e-5, use_conv_bias=True, mamba_proj_bias=False, time_step_min=0.001, time_step_max=0.1,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
TINY_LINEAR_ATTENTION = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                             linear_value_head_dim=16)

SHAPES["qwen3.6-35b-a3b"] = Shape(
    Qwen3_5MoeTextConfig, "Qwen3_5MoeForCausalLM", QWEN3_6_35B_A3B | dict(num_hidden_layers=20),
    TINY | TINY_LINEAR_ATTENTION | dict(num_hidden_layers=4, num_experts=4, num_experts_per_tok=2,
                                        moe_intermediate_size=32, shared_expert_intermediate_size=32,
                                        tie_word_embeddings=False),
    correctness_layers=4, transformers_cb=False)  # three Gated DeltaNet layers, one full
# Real configs for the memory plan only (too large for one H100 in bfloat16 with a KV cache).
PLANNED = {
    "qwen3.6-35b-a3b": Shape(Qwen3_5MoeTextConfig, "Qwen3_5MoeForCausalLM", QWEN3_6_35B_A3B,
                             SHAPES["qwen3.6-35b-a3b"].tiny, correctness_layers=4),
    "nemotron-3-nano-30b-a3b": Shape(
        NemotronHConfig, "NemotronHForCausalLM", NEMOTRON_3_NANO_30B_A3B,
        TINY | dict(hybrid_override_pattern="ME*-", mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=16, n_groups=2,
                    chunk_size=8, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                    moe_shared_expert_intermediate_size=32, tie_word_embeddings=False),
        correctness_layers=4),  # Mamba-2, MoE, attention, MLP
}


def sliding_window_of(config: PretrainedConfig) -> int | None:
    """The window of the config's sliding layers; None where it has none."""
    layer_types = getattr(config, "layer_types", None) or []
    return getattr(config, "sliding_window", None) if "sliding_attention" in layer_types else None
