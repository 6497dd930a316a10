"""Quantized weights and KV cache.

- packed_linear: linear layers whose weights stay packed (int8, int4, fp8) and their kernels;
- at_load: quantizing a loaded model (`quantization = "int8" | "int4" | "fp8"`), torchao's math;
- checkpoint: pre-quantized checkpoints (FP8, compressed-tensors, GPTQ, AWQ; MXFP4 through transformers);
- packed_embedding: token embeddings as int8 rows, a tied LM head multiplying by the same bytes;
- gguf: GGUF files kept quantized (Q8_0 and friends as int8, Q4_* as int4, embeddings int8);
- summary: what a loaded model's weights are, for operators.
"""
