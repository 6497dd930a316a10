"""The CPU LM head writes its logits into one buffer that steps reuse, equal to the Linear's."""

import torch

from engine.lm_head import ReusedLogitsHead, reuse_logits_buffer


def test_logits_equal_the_linear_and_reuse_one_buffer():
    linear = torch.nn.Linear(16, 100, bias=True)
    head = ReusedLogitsHead(linear, max_rows=8)
    with torch.inference_mode():
        for rows in (8, 3):
            hidden = torch.randn(1, rows, 16)
            logits = head(hidden)
            assert logits.shape == (1, rows, 100) and torch.allclose(logits, linear(hidden), atol=1e-6)
            assert logits.data_ptr() == head.buffer.data_ptr()
        more = torch.randn(1, 9, 16)
        assert head(more).data_ptr() != head.buffer.data_ptr()  # past max_rows: the Linear as it is
    hidden = torch.randn(1, 2, 16)
    assert torch.allclose(head(hidden), linear(hidden))  # outside inference mode (generate() in tests)


def test_only_a_plain_linear_head_is_wrapped(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert reuse_logits_buffer(model, 4)
    assert isinstance(model.get_output_embeddings(), ReusedLogitsHead)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    assert not reuse_logits_buffer(model, 4)  # already wrapped: not twice
