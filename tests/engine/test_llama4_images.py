"""engine.llama4_images gives what transformers' own Llama 4 image processor gives (which needs torchvision), bit for
bit: the same tiles, in bfloat16, and the same aspect ratios, for images of every shape and mode, alone and together.
The reference runs in a process of its own (tests/engine/llama4_reference.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.llama4_images import best_canvas, supported_canvases

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / ".venv" / "reference"  # ./dev.sh installs requirements-reference.lock here


def test_the_engines_llama4_image_processor_equals_transformers_own():
    if not (REFERENCE / "torchvision").is_dir():
        pytest.fail(f"{REFERENCE} has no torchvision: run ./dev.sh setup (it installs requirements-reference.lock)")
    done = subprocess.run([sys.executable, "-m", "tests.engine.llama4_reference", str(REFERENCE)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["compared"] == 22 + 4 and result["differ"] == []


def test_an_image_gets_the_canvas_that_resizes_it_least():
    canvases = supported_canvases(max_patches=4, tile=336)
    assert best_canvas(500, 800, canvases, to_max=False).tolist() == [672, 672]  # 2 x 2 tiles: downscaled the least
    assert best_canvas(336, 672, canvases, to_max=False).tolist() == [336, 672]  # fits exactly
    assert best_canvas(100, 50, canvases, to_max=False).tolist() == [336, 336]  # the least upscaling, least area
    assert best_canvas(100, 50, canvases, to_max=True).tolist() == [672, 336]  # the most upscaling, least area
