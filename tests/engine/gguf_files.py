"""GGUF files written at test time with the `gguf` package (gguf-py, llama.cpp's own Python writer).

`write_llama_gguf` writes a transformers Llama model as llama.cpp's convert_hf_to_gguf.py would: llama.cpp's
tensor names, q and k rows permuted to llama.cpp's rotary layout (transformers permutes them back when it
reads the file), the tokenizer's metadata copied from the default model's GGUF (the tiny test models share
its tokenizer), and the 2-D weights quantized by gguf-py to the type asked (Q8_0, Q4_0, Q4_1 or F32) as
llama.cpp's quantize does for its "pure" files: every matrix of that type, the norms F32.
"""

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as GGML
from gguf import GGML_QUANT_VERSION, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize
from torch import nn

# transformers' names inside a decoder layer -> llama.cpp's.
LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _to_llama_cpp_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's permute: each head's rows from halves (HF) to interleaved pairs (llama.cpp)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _tensors(model: nn.Module) -> dict[str, np.ndarray]:
    config = model.config
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"]}
    if not config.tie_word_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    for i in range(config.num_hidden_layers):
        for hf, cpp in LAYER_NAMES.items():
            weight = state[f"model.layers.{i}.{hf}.weight"]
            if cpp == "attn_q":
                weight = _to_llama_cpp_rope(weight, config.num_attention_heads)
            elif cpp == "attn_k":
                weight = _to_llama_cpp_rope(weight, config.num_key_value_heads)
            out[f"blk.{i}.{cpp}.weight"] = weight
    return out


def _copy_tokenizer(reader: GGUFReader, writer: GGUFWriter) -> None:
    for field in reader.fields.values():
        if field.name.startswith("tokenizer."):
            kind = field.types[0]
            writer.add_key_value(field.name, field.contents(), kind,
                                 sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)


def write_llama_gguf(model: nn.Module, tokenizer_gguf: Path, path: Path, kind: GGML) -> Path:
    """Write `model` (a LlamaForCausalLM) as a GGUF whose matrices are of type `kind`; returns `path`."""
    config = model.config
    writer = GGUFWriter(path, "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_file_type({GGML.F32: 0, GGML.Q4_0: 2, GGML.Q4_1: 3, GGML.Q8_0: 7}[kind])
    if kind != GGML.F32:
        writer.add_quantization_version(GGML_QUANT_VERSION)
    _copy_tokenizer(GGUFReader(tokenizer_gguf), writer)
    for name, values in _tensors(model).items():
        if values.ndim == 2 and kind != GGML.F32:
            writer.add_tensor(name, quantize(values, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, values.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def dequantized_twin(model: nn.Module, kind: GGML) -> nn.Module:
    """`model` with each matrix that write_llama_gguf quantizes replaced, in place, by what its `kind` blocks
    mean (gguf-py's dequantization): the float model a GGUF reader that widens everything would build.
    Blocks run along each row's inputs, so llama.cpp's row permutation of q and k does not change them."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                w = module.weight.detach().float().numpy()
                module.weight.copy_(torch.from_numpy(dequantize(quantize(w, kind), kind)).reshape(w.shape))
    return model
