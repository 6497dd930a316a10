"""Token embeddings kept as int8 rows, a scale per token; a tied LM head multiplies by the same bytes.

A GGUF stores its token embeddings quantized (Q8_0 in llama.cpp's own files, whatever the other tensors):
dequantized, they are the largest tensor of a small model (SmolLM2-135M: 49152 x 576, 108 MiB in float32
against 30 MiB in the file), so a Q8_0 file would take 1.5x its size in memory. Kept as int8, a lookup
widens only the rows it reads, and the LM head, when tied to them, is an Int8Linear over the same buffers
(its output channels are the tokens: one scale per row serves both).
"""

import torch
from torch import nn

from engine.quantization.at_load import int8_per_channel
from engine.quantization.packed_linear import Int8Linear


class Int8Embedding(nn.Module):
    """nn.Embedding whose table is int8 [vocab, hidden] with a scale per row: row = q[id] * scale[id]."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype):
        super().__init__()
        self.num_embeddings, self.embedding_dim = q.shape
        self.out_dtype = dtype
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.q[ids].to(self.out_dtype) * self.scale[ids].to(self.out_dtype).unsqueeze(-1)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return (self.q.to(torch.float32) * self.scale.to(torch.float32)[:, None]).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, packing=int8"


@torch.no_grad()
def pack_embeddings(model: nn.Module) -> bool:
    """Replace the model's plain nn.Embedding by an Int8Embedding and, when the LM head is tied to it, the
    head by an Int8Linear sharing its buffers; whether it did (a scaled or otherwise special embedding stays)."""
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if type(embed) is not nn.Embedding:
        return False
    table: Int8Linear = int8_per_channel(embed.weight)
    model.set_input_embeddings(Int8Embedding(table.q, table.scale, embed.weight.dtype))
    if type(head) is nn.Linear and head.weight is embed.weight:
        model.set_output_embeddings(table)
    return True
