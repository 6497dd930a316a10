"""The Triton kernels compile to cubins for Hopper (sm_90) and Ampere (sm_80), here, without a GPU.

The interpreter tests check what the kernels compute; this checks that the compiler accepts them
for real hardware (what the interpreter never lowers: tl.dot shapes, layouts, shared memory).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.engine.triton_compile_check import VARIANT_COUNT

REPO = Path(__file__).resolve().parents[2]
SHARED_MEMORY_PER_BLOCK = {"sm90": 227 * 1024, "sm80": 163 * 1024}  # what one block may use on each


def test_the_kernels_compile_for_sm90_and_sm80(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path), PYTHONPATH=str(REPO))  # a fresh cache: a real compile
    done = subprocess.run([sys.executable, "-m", "tests.engine.triton_compile_check"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    variants = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(variants) == VARIANT_COUNT
    for v in variants:
        assert v["cubin_bytes"] > 0
        assert v["shared_bytes"] <= SHARED_MEMORY_PER_BLOCK[v["target"]], v
