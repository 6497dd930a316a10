"""The embedded default model answers a simple question sensibly through the engine API."""

import json

import pytest

from appliance.models.default_model import GGUF_SHA256, MODEL_NAME
from engine import Engine, EngineConfig, SamplingParams

pytestmark = pytest.mark.slow


def test_default_model_folder_has_a_manifest(default_model_path):
    manifest = json.loads((default_model_path / "manifest.json").read_text())
    assert manifest["name"] == MODEL_NAME and manifest["revision"] == GGUF_SHA256
    assert "model.safetensors" in manifest["files"]


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
