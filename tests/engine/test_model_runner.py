"""KV-cache sizing on a GPU: the arithmetic, on numbers of an 80 GiB card holding an 8B model."""

import pytest

from engine.errors import ModelLoadError
from engine.model_runner import kv_blocks_for_gpu

GIB = 1 << 30
BLOCK = 2 * 32 * 8 * 128 * 16 * 2  # Llama-3.1-8B, 16 tokens a block, bfloat16: 2 MiB


def test_the_kv_cache_gets_the_share_left_after_weights_and_a_full_step():
    # 80 GiB card, 15 GiB of weights plus 0.5 GiB of CUDA context in use, a full step peaks at 2 GiB.
    blocks = kv_blocks_for_gpu(80 * GIB, 64.5 * GIB, 2 * GIB, 0.85, BLOCK, min_blocks=128)
    assert blocks * BLOCK == int(80 * GIB * 0.85) - int(15.5 * GIB) - 2 * GIB


def test_memory_held_by_another_process_counts_against_the_share():
    alone = kv_blocks_for_gpu(80 * GIB, 64.5 * GIB, 2 * GIB, 0.85, BLOCK, min_blocks=128)
    shared = kv_blocks_for_gpu(80 * GIB, 54.5 * GIB, 2 * GIB, 0.85, BLOCK, min_blocks=128)
    assert (alone - shared) * BLOCK == 10 * GIB


def test_too_little_memory_is_a_load_error_that_says_what_to_change():
    with pytest.raises(ModelLoadError) as e:
        kv_blocks_for_gpu(24 * GIB, 4 * GIB, 1 * GIB, 0.85, BLOCK, min_blocks=128)
    message = str(e.value)
    assert "only 0.00 GiB" in message and "20.0 GiB in use" in message and "gpu_memory_fraction 0.85" in message
    assert "at least 0.25 GiB is needed" in message and "lower max_num_batched_tokens" in message


def test_a_full_encoder_cache_is_set_aside_and_named_when_too_little_is_left():
    without = kv_blocks_for_gpu(80 * GIB, 64.5 * GIB, 2 * GIB, 0.85, BLOCK, min_blocks=128)
    with_images = kv_blocks_for_gpu(80 * GIB, 64.5 * GIB, 2 * GIB, 0.85, BLOCK, min_blocks=128, encoder_cache=1 * GIB)
    assert (without - with_images) * BLOCK == 1 * GIB
    with pytest.raises(ModelLoadError) as e:
        kv_blocks_for_gpu(24 * GIB, 5 * GIB, 1 * GIB, 0.85, BLOCK, min_blocks=128, encoder_cache=1 * GIB)
    assert "1.00 GiB for the encoder cache" in str(e.value) and "encoder_cache_tokens" in str(e.value)
