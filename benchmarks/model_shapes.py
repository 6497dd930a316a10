"""The models people put on one GPU, as transformers configs built in code (random weights, nothing
downloaded): each at its real per-layer shape, and tiny of the same class for CPU runs.

Dimensions are those of the published config.json files. Gemma-3-12B's checkpoint is the multimodal
Gemma3ForConditionalGeneration; its language half (Gemma3ForCausalLM, "gemma3_text") is what runs
here. gpt-oss-20b's published experts are MXFP4; here every weight is in the run's dtype.
"""

from dataclasses import dataclass

from transformers import Gemma3TextConfig, GptOssConfig, LlamaConfig, PretrainedConfig, Qwen3MoeConfig

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


def sliding_window_of(config: PretrainedConfig) -> int | None:
    """The window of the config's sliding layers; None where it has none."""
    layer_types = getattr(config, "layer_types", None) or []
    return getattr(config, "sliding_window", None) if "sliding_attention" in layer_types else None
