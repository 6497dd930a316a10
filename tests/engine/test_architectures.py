"""The correctness oracle for every architecture the engine is checked against (docs/MODELS.md).

Each is a tiny random model built from its real transformers config class (tests/engine/architectures.py),
float32 on CPU, saved and loaded from its folder as the appliance loads models; tests/engine/oracle.py
runs eight concurrent requests of mixed lengths through the engine (chunked prefill, prefix-cache hits,
preemption by a small pool, contexts past every window) and generate() on each prompt alone.
"""

import pytest

from tests.engine.architectures import CONFIGS, build
from tests.engine.oracle import run


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_chunked_cached_and_preempted_requests_match_generate_alone(name, tmp_path):
    expected, got, stats, _ = run(build(name), tmp_path)
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    assert got == expected
    assert stats.kv_blocks_used == 0  # every block came back
