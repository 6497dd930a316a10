"""GGUF files stay quantized: each linear layer takes the packing nearest its GGUF tensor's type.

transformers reads a GGUF by dequantizing every tensor (renaming them and undoing llama.cpp's row
permutation of q and k on the way); the layers are then packed again from those values:
- 8-, 6- and 5-bit types (Q8_0, Q6_K, Q5_K, Q5_0, Q5_1) -> int8 with a scale per output channel;
- 4-bit and smaller types (Q4_0, Q4_1, Q4_K, IQ4_*, Q3_K, Q2_K) -> int4 in groups of 32, the size of
  their own blocks, with a scale and a zero per group (Q4_1 and Q4_K blocks are scale and minimum: the
  group's extremes give them back);
- float tensors (F32, F16, BF16) stay in floating point.
Quantized token embeddings (llama.cpp writes them Q8_0 or smaller) become int8 rows, and a tied LM head
multiplies by those same bytes (engine.quantization.packed_embedding); an untied quantized head (output.weight)
is packed as its type says. So a Q8_0 file takes about its own size in memory, not 1.5x.
"""

from collections import Counter
from pathlib import Path

import torch
from gguf import GGMLQuantizationType as GGML
from gguf import GGUFReader
from torch import nn

from engine.quantization.at_load import INT4_GROUP_SIZE, int4_grouped, int8_per_channel, quantizable_linears
from engine.quantization.packed_embedding import pack_embeddings

FLOAT_TYPES = {GGML.F32, GGML.F16, GGML.BF16}
INT8_TYPES = {GGML.Q8_0, GGML.Q8_1, GGML.Q8_K, GGML.Q6_K, GGML.Q5_K, GGML.Q5_0, GGML.Q5_1}
# llama.cpp's names of a decoder layer's linear tensors -> transformers' module paths inside the layer.
LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def packing_for(kind: GGML) -> str | None:
    """"int8", "int4", or None (floating point) for a GGUF tensor type."""
    if kind in FLOAT_TYPES:
        return None
    return "int8" if kind in INT8_TYPES else "int4"


def tensor_types(path: Path) -> dict[str, GGML]:
    """transformers' module path of each layer linear tensor -> its GGUF type; "" -> the file's most common
    type among 2-D quantized tensors (for linears whose llama.cpp name is not in LAYER_TENSORS); "token_embd"
    and "output" (the untied LM head) -> theirs, where the file has them."""
    reader = GGUFReader(path)
    types: dict[str, GGML] = {}
    counts: Counter = Counter()
    for tensor in reader.tensors:
        kind = GGML(tensor.tensor_type)
        if len(tensor.shape) == 2 and kind not in FLOAT_TYPES:
            counts[kind] += 1
        parts = tensor.name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in LAYER_TENSORS:
            types[f"layers.{parts[1]}.{LAYER_TENSORS[parts[2]]}"] = kind
        elif tensor.name in ("token_embd.weight", "output.weight"):
            types[parts[0]] = kind
    types[""] = counts.most_common(1)[0][0] if counts else GGML.F32
    return types


def _packed(linear: nn.Linear, kind: GGML) -> nn.Module | None:
    """The packed layer for a linear whose GGUF tensor is of type `kind`; None where it stays float."""
    packing = packing_for(kind)
    bias = None if linear.bias is None else linear.bias.detach()
    if packing == "int8":
        return int8_per_channel(linear.weight, bias)
    if packing == "int4" and linear.in_features % INT4_GROUP_SIZE == 0:  # llama.cpp's blocks are 32 too
        return int4_grouped(linear.weight, bias)
    return None


@torch.no_grad()
def keep_gguf_packing(model: nn.Module, path: Path) -> Counter:
    """Pack the model's linear layers, its embeddings and LM head as their GGUF tensors were; the GGUF types
    met, counted."""
    types = tensor_types(path)
    names = {id(module): name for name, module in model.named_modules()}
    met: Counter = Counter()
    for parent, attribute, linear in quantizable_linears(model):
        name = f"{names[id(parent)]}.{attribute}"
        kind = types.get(name[name.find("layers."):], types[""]) if "layers." in name else types[""]
        met[kind.name] += 1
        packed = _packed(linear, kind)
        if packed is not None:
            setattr(parent, attribute, packed)
    head = model.get_output_embeddings()
    if "output" in types and type(head) is nn.Linear:
        met[types["output"].name] += 1
        packed = _packed(head, types["output"])
        if packed is not None:
            model.set_output_embeddings(packed)
    if packing_for(types.get("token_embd", GGML.F32)) is not None and pack_embeddings(model):
        met[types["token_embd"].name] += 1
    return met
