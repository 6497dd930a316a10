"""A pre-quantized checkpoint served over HTTP: the openai SDK gets answers, /v1/models and the control socket's
model list say how its weights are packed and that its KV cache is fp8."""

import shutil

import openai
import pytest
from transformers import AutoModelForCausalLM

from tests.appliance.conftest import add_keys, make_config, start_server
from tests.engine.quantized_checkpoints import WRITERS


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
