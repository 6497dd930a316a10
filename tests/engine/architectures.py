"""Tiny random models of the architectures the engine is checked against, built from their real
transformers config classes (no download), and what makes their outputs decisive.

Each entry is a small config (a few layers, hidden 64, a vocabulary of 512 unless a test needs a
tokenizer's) that keeps its architecture's features: sliding windows of 8 tokens next to full
layers, learned sinks, softcaps, experts, layers without RoPE, and the hybrids' recurrent layers
(Gated DeltaNet, Mamba-2 with chunks of 8 tokens, short convolutions) beside attention. A window of 8
with block size 4 and prompts up to ~50 tokens puts every window group past its window within the
first chunks.
"""

import torch
import transformers
from transformers import (FalconH1Config, Gemma2Config, Gemma3Config, Gemma3TextConfig, GptOssConfig, GraniteMoeConfig,
                          GraniteMoeHybridConfig, Idefics3Config, Idefics3VisionConfig, Lfm2Config, Llama4Config,
                          Llama4TextConfig, Llama4VisionConfig, LlamaConfig, Mistral3Config, MistralConfig,
                          MixtralConfig, NemotronHConfig, Olmo2Config, PixtralVisionConfig, Qwen2_5_VLConfig,
                          Qwen3_5Config, Qwen3_5MoeConfig, Qwen3_5MoeTextConfig, Qwen3_5TextConfig, Qwen3MoeConfig,
                          Qwen3NextConfig, Qwen3VLConfig, Qwen3VLMoeConfig, SiglipVisionConfig, SmolLM3Config,
                          SmolVLMConfig, SmolVLMVisionConfig)

from engine.recurrent.mixers import FORWARDS

WINDOW = 8
VOCAB = 512
# Gated DeltaNet: 2 key heads and 4 value heads of 16, a convolution of 4 taps; three such layers before each
# full-attention layer (the classes' default pattern).
LINEAR_ATTENTION = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                        linear_value_head_dim=16, linear_conv_kernel_dim=4)
MAMBA_CHUNK = 8  # tokens per chunk of the Mamba-2 scan: prompts span several, with a state carried between them
# Recurrent mixers' projections and convolutions drawn at this gain over 1/sqrt(fan-in): at transformers' default
# (std 0.02) their outputs hardly move the next token, and a state lost between two chunks would go unseen.
RECURRENT_GAIN = 3.0


def tiny_shape(vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                head_dim=16, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                tie_word_embeddings=False)


def _split_images(config_class: type, vision_class: type, vocab: int):
    """Idefics3's shape (SmolVLM's too): a Llama language model, sub-images of 56 x 56 pixels, 4 tokens each."""
    return config_class(
        text_config=LlamaConfig(**tiny_shape(vocab), num_hidden_layers=2).to_dict(),
        vision_config=vision_class(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                   image_size=56, patch_size=14).to_dict(),
        scale_factor=2, image_token_id=vocab - 1, tie_word_embeddings=False,
        architectures=[config_class.__name__.replace("Config", "ForConditionalGeneration")])


def _gemma3_text(vocab: int) -> Gemma3TextConfig:
    return Gemma3TextConfig(**tiny_shape(vocab), num_hidden_layers=6, sliding_window=WINDOW, query_pre_attn_scalar=16,
                            layer_types=["sliding_attention"] * 5 + ["full_attention"])


def _mrope(vocab: int, model_type: str) -> dict:
    """A Qwen-VL language model's config: multimodal RoPE over sections of a 16-wide head."""
    return dict(**tiny_shape(vocab), model_type=model_type, num_hidden_layers=2,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})


TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_heads=2, depth=1, out_hidden_size=64)
DEEPSTACK_VISION = TINY_VISION | {"depth": 2, "deepstack_visual_indexes": [0, 1]}  # deepstack into both layers
QWEN_VISION_TOKENS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")


def _qwen_vl(config_class: type, text_config: dict, vision_config: dict, vocab: int):
    """A Qwen-VL family's multimodal config: its image, video and vision start / end tokens the vocabulary's last."""
    return config_class(text_config=text_config, vision_config=vision_config, tie_word_embeddings=False,
                        **{name: vocab - 1 - i for i, name in enumerate(QWEN_VISION_TOKENS)},
                        architectures=[config_class.__name__.replace("Config", "ForConditionalGeneration")])


def _moe(**experts) -> dict:
    return dict(num_experts_per_tok=2, moe_intermediate_size=48, **experts)


CONFIGS = {
    "gpt_oss": lambda vocab: GptOssConfig(**tiny_shape(vocab), num_hidden_layers=4, sliding_window=WINDOW,
                                          num_local_experts=4, num_experts_per_tok=2),
    "mixtral": lambda vocab: MixtralConfig(**tiny_shape(vocab), num_hidden_layers=2, num_local_experts=4,
                                           num_experts_per_tok=2),
    "qwen3_moe": lambda vocab: Qwen3MoeConfig(**tiny_shape(vocab), num_hidden_layers=2, num_experts=4, num_experts_per_tok=2,
                                              moe_intermediate_size=48),
    "gemma2": lambda vocab: Gemma2Config(**tiny_shape(vocab), num_hidden_layers=4, sliding_window=WINDOW,
                                         query_pre_attn_scalar=16, attn_logit_softcapping=20.0,
                                         final_logit_softcapping=15.0),
    "gemma3_text": _gemma3_text,
    "gemma3": lambda vocab: Gemma3Config(
        text_config=_gemma3_text(vocab).to_dict(),
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=28, patch_size=14).to_dict(),
        mm_tokens_per_image=4, image_token_index=vocab - 1, boi_token_index=vocab - 3, eoi_token_index=vocab - 2,
        tie_word_embeddings=False, architectures=["Gemma3ForConditionalGeneration"]),
    "idefics3": lambda vocab: _split_images(Idefics3Config, Idefics3VisionConfig, vocab),
    "smolvlm": lambda vocab: _split_images(SmolVLMConfig, SmolVLMVisionConfig, vocab),
    "mistral3": lambda vocab: Mistral3Config(
        text_config=MistralConfig(**tiny_shape(vocab), num_hidden_layers=2, sliding_window=WINDOW).to_dict(),
        vision_config=PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, head_dim=16, image_size=112, patch_size=14).to_dict(),
        image_token_index=vocab - 1, tie_word_embeddings=False, architectures=["Mistral3ForConditionalGeneration"]),
    "qwen2_5_vl": lambda vocab: _qwen_vl(Qwen2_5_VLConfig, _mrope(vocab, "qwen2_5_vl_text"), TINY_VISION, vocab),
    "qwen3_vl": lambda vocab: _qwen_vl(Qwen3VLConfig, _mrope(vocab, "qwen3_vl_text"), DEEPSTACK_VISION, vocab),
    "mistral": lambda vocab: MistralConfig(**tiny_shape(vocab), num_hidden_layers=2, sliding_window=WINDOW),
    "smollm3": lambda vocab: SmolLM3Config(**tiny_shape(vocab), num_hidden_layers=4, no_rope_layer_interval=2),
    "olmo2": lambda vocab: Olmo2Config(**tiny_shape(vocab), num_hidden_layers=2),
    "granitemoe": lambda vocab: GraniteMoeConfig(**tiny_shape(vocab), num_hidden_layers=2, num_local_experts=4,
                                                 num_experts_per_tok=2, attention_multiplier=0.2,
                                                 embedding_multiplier=2.0, residual_multiplier=0.5, logits_scaling=2.0),
    "llama4_text": lambda vocab: Llama4TextConfig(**tiny_shape(vocab), num_hidden_layers=4, attention_chunk_size=WINDOW,
                                                  intermediate_size_mlp=96, num_local_experts=2, interleave_moe_layer_step=2,
                                                  no_rope_layers=[1, 1, 1, 0]),
    # Hybrids: recurrent layers on state slots beside attention.
    "qwen3_next": lambda vocab: Qwen3NextConfig(**tiny_shape(vocab), num_hidden_layers=4, **LINEAR_ATTENTION,
                                                **_moe(num_experts=4, shared_expert_intermediate_size=48)),
    "qwen3_5": lambda vocab: Qwen3_5TextConfig(**tiny_shape(vocab), num_hidden_layers=4, **LINEAR_ATTENTION),
    "qwen3_5_moe": lambda vocab: Qwen3_5MoeTextConfig(**tiny_shape(vocab), num_hidden_layers=4, **LINEAR_ATTENTION,
                                                      **_moe(num_experts=4, shared_expert_intermediate_size=48)),
    "nemotron_h": lambda vocab: NemotronHConfig(
        **tiny_shape(vocab),
        layers_block_type=["linear_attention", "moe", "full_attention", "mlp", "linear_attention", "moe"],
        mamba_num_heads=4, mamba_head_dim=16, ssm_state_size=16, n_groups=2, conv_kernel=4, chunk_size=MAMBA_CHUNK,
        **_moe(n_routed_experts=4, moe_shared_expert_intermediate_size=48)),
    "granitemoehybrid": lambda vocab: GraniteMoeHybridConfig(
        **tiny_shape(vocab), num_hidden_layers=3, layer_types=["linear_attention", "full_attention", "linear_attention"],
        mamba_n_heads=4, mamba_d_head=32, mamba_d_state=16, mamba_chunk_size=MAMBA_CHUNK, num_local_experts=4,
        num_experts_per_tok=2, shared_intermediate_size=96, residual_multiplier=0.5, embedding_multiplier=2.0),
    "falcon_h1": lambda vocab: FalconH1Config(**tiny_shape(vocab), num_hidden_layers=2, mamba_d_ssm=64, mamba_n_heads=4,
                                              mamba_d_head=16, mamba_d_state=16, mamba_chunk_size=MAMBA_CHUNK,
                                              ssm_in_multiplier=0.5, ssm_multipliers=[1.0, 0.5, 1.0, 1.0, 0.5]),
    "lfm2": lambda vocab: Lfm2Config(**tiny_shape(vocab), num_hidden_layers=4, full_attn_idxs=[1, 3], conv_L_cache=3),
}
# Multimodal checkpoints that the image tests alone build (tests/engine/vision_models.py), by model type: Qwen3.5's
# and Qwen3.6's (the hybrids above, their multimodal RoPE interleaved over half of each head as the real ones' over a
# quarter, and Qwen3-VL's vision tower without deepstack), Qwen3-VL-MoE's (Qwen3-VL's above with experts) and Llama
# 4's (the Llama 4 text model above; tiles of 56 x 56 pixels, 16 patches pixel-shuffled into 4 tokens each). The
# text oracle runs their language models' kinds of layer already.
HYBRID_MROPE = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                "mrope_section": [2, 1, 1], "mrope_interleaved": True}
IMAGE_ONLY_CONFIGS = {
    "qwen3_5": lambda vocab: _qwen_vl(Qwen3_5Config, CONFIGS["qwen3_5"](vocab).to_dict()
                                      | {"rope_parameters": HYBRID_MROPE}, TINY_VISION, vocab),
    "qwen3_5_moe": lambda vocab: _qwen_vl(Qwen3_5MoeConfig, CONFIGS["qwen3_5_moe"](vocab).to_dict()
                                          | {"rope_parameters": HYBRID_MROPE}, TINY_VISION, vocab),
    "qwen3_vl_moe": lambda vocab: _qwen_vl(Qwen3VLMoeConfig, _mrope(vocab, "qwen3_vl_moe_text") | _moe(num_experts=4),
                                           DEEPSTACK_VISION, vocab),
    "llama4": lambda vocab: Llama4Config(
        text_config=CONFIGS["llama4_text"](vocab).to_dict(),
        # the adapter's MLP takes the shuffled patches (4 x hidden) to projector_output_dim, the projector's input
        vision_config=Llama4VisionConfig(hidden_size=32, intermediate_size=128, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=56, patch_size=14, vision_output_dim=64,
                                         projector_input_dim=64, projector_output_dim=64).to_dict(),
        image_token_index=vocab - 1, boi_token_index=vocab - 2, eoi_token_index=vocab - 3, tie_word_embeddings=False,
        architectures=["Llama4ForConditionalGeneration"]),
}
HYBRIDS = {"qwen3_next", "qwen3_5", "qwen3_5_moe", "nemotron_h", "granitemoehybrid", "falcon_h1", "lfm2"}


def model_class(config) -> type:
    """The class generate() runs for a config: its declared architecture, else its causal-LM class."""
    if getattr(config, "architectures", None):
        return getattr(transformers, config.architectures[0])
    return transformers.AutoModelForCausalLM._model_mapping[type(config)]


def build(name: str, vocab: int = VOCAB, seed: int = 0) -> torch.nn.Module:
    config = CONFIGS[name](vocab)
    torch.manual_seed(seed)
    return sharpened(model_class(config)._from_config(config, dtype=torch.float32))


def sharpened(model: torch.nn.Module) -> torch.nn.Module:
    """A random model with sharper embeddings, so that greedy decoding has clear winners (and gpt-oss's sinks,
    uninitialised until a checkpoint fills them, drawn too; and recurrent mixers loud enough that their states
    decide the next token)."""
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 1.0)
        for name, param in model.named_parameters():
            if name.endswith("sinks"):
                param.normal_(0, 1.0)
        for mixer in (m for m in model.modules() if type(m).__name__ in FORWARDS):
            for part in mixer.modules():
                if isinstance(part, (torch.nn.Linear, torch.nn.Conv1d)):
                    part.weight.normal_(0, RECURRENT_GAIN / part.weight[0].numel() ** 0.5)
    return model.eval()
