"""The engine's plain-Python core imports without torch or transformers (DESIGN: engine/).

Run in a fresh interpreter: this test process has long since imported both.
"""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers")


def modules_loaded_by(statement: str) -> set[str]:
    check = f"import sys; {statement}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "import engine.scheduler, engine.block_manager, engine.config",
        "import engine.sequence, engine.sampling_params, engine.errors",
        "from engine import SamplingParams, StructuredOutput, EngineConfig, InvalidParameter, QueueFull",
    ],
)
def test_the_core_imports_neither_torch_nor_transformers(statement):
    assert modules_loaded_by(statement) == set()


def test_the_package_still_exports_the_engine_on_first_use():
    assert modules_loaded_by("from engine import Engine, AsyncEngine, RequestOutput, EngineStats") == {
        "torch",
        "transformers",
    }


def test_an_unknown_name_is_an_attribute_error():
    import engine

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        engine.Nope
