"""Fixtures for the tool tests: the tiny model's real tokenizer and an xgrammar compiler over it."""

import pytest


@pytest.fixture(scope="session")
def tokenizer(default_model_path):
    """SmolLM2's tokenizer (the tiny random model's), with our Hermes-style template."""
    from transformers import AutoTokenizer

    from tests.appliance.serving.formats.tools.templates import HERMES_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    tokenizer.chat_template = HERMES_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def marker_tokenizer(default_model_path):
    """The same tokenizer with the call markers added as special tokens, as real tool models have them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<tool_call>", "</tool_call>", "[TOOL_CALLS]", "<|python_tag|>"]}
    )
    return tokenizer


@pytest.fixture(scope="session")
def compiler(tokenizer):
    import xgrammar

    return xgrammar.GrammarCompiler(xgrammar.TokenizerInfo.from_huggingface(tokenizer))
