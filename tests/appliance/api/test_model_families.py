"""Every architecture of docs/MODELS.md, as an operator meets it: imported with `appliance models import`,
loaded on its first request, answering the openai client over HTTP with what transformers' generate()
gives the same chat prompt.

The tiny random models of tests/engine/architectures.py, with the default model's tokenizer and chat
template, float32, all in one service (load on demand; the pool evicts idle ones as it needs room).
"""

import json

import httpx
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from tests.appliance.cli.test_cli import appliance
from tests.appliance.conftest import add_keys, make_config, openai_clients, put_in_store, start_server
from tests.engine.architectures import CONFIGS, build, model_class

MESSAGES = [{"role": "user", "content": "Name a colour."}]
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def families(default_model_path, tiny_model_path, tmp_path_factory):
    """(server, {family: its folder}) with every family imported into the server's store through the CLI."""
    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    built = tmp_path_factory.mktemp("families")
    folders = {}
    for name in CONFIGS:
        folder = built / name.replace("_", "-")
        build(name, vocab=len(tokenizer)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = folder
    state = tmp_path_factory.mktemp("families-state")
    put_in_store(state / "models", tiny_model_path, "tiny")
    server = start_server(make_config("tiny", state, load_on_demand=True, dtype="float32", num_kv_blocks=64,
                                      max_num_seqs=4, max_num_batched_tokens=256))
    add_keys(server, server.app.config.keys_db_path)
    socket = str(server.app.config.control_socket)
    for name, folder in folders.items():
        imported = appliance("models", "import", str(folder), "--socket", socket)
        assert imported.returncode == 0, imported.stderr
    yield server, folders
    server.stop()


def expected_answer(folder, tokenizer) -> str:
    model = build_from(folder)
    ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt")["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
                         do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def build_from(folder):
    config = AutoConfig.from_pretrained(folder)
    model = model_class(config).from_pretrained(folder, dtype=torch.float32).eval()
    model.set_attn_implementation("eager")
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_an_imported_model_of_each_family_answers_the_openai_client_as_generate_does(families, name):
    server, folders = families
    client, _ = openai_clients(server)
    served_name = folders[name].name
    reply = client.chat.completions.create(model=served_name, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert reply.model == served_name and reply.usage.completion_tokens == MAX_TOKENS
    tokenizer = AutoTokenizer.from_pretrained(folders[name])
    assert reply.choices[0].message.content == expected_answer(folders[name], tokenizer)


def test_a_hybrid_model_shows_its_state_slots_and_its_state_snapshots_for_prefix_caching(families):
    """Where operators look: `appliance status` and /metrics' vllm:cache_config_info."""
    server, folders = families
    client, _ = openai_clients(server)
    served_name = folders["qwen3_5_moe"].name
    client.chat.completions.create(model=served_name, messages=MESSAGES, max_tokens=2, temperature=0)
    socket = str(server.app.config.control_socket)
    status = json.loads(appliance("status", "--json", "--socket", socket).stdout)
    engine = next(e for e in status["engines"] if e["model"] == served_name)
    assert (engine["state_slots_used"], engine["state_slots_total"]) == (0, 4)  # max_num_seqs: one slot each
    assert engine["execution"]["prefix_caching"] == "on (state snapshots: 4)"  # one per sequence that may run
    assert engine["execution"]["state_slots"].endswith("(3 Gated DeltaNet layers)")
    assert f"{served_name}: 0 running, 0 waiting; kv 0% · 0/4 state slots;" in appliance("status", "--socket", socket).stdout
    metrics = httpx.get(f"http://127.0.0.1:{server.app.metrics_port}/metrics").text
    info = next(line for line in metrics.splitlines()
                if line.startswith("vllm:cache_config_info") and f'model_name="{served_name}"' in line)
    assert 'enable_prefix_caching="True"' in info and 'prefix_caching="on (state snapshots: 4)"' in info
    assert 'num_state_slots="4"' in info
