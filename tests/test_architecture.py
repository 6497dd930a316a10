"""The dependency rules of the design, as import-linter contracts (.importlinter), run on the tree."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    """lint-imports over the packages in `tree` (found there first: PYTHONPATH)."""
    return subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=tree,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(tree)})


def test_the_import_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_forbidden_import_breaks_the_contracts(tmp_path):
    """The same contracts over a copy of the tree in which the engine imports the service."""
    for name in ("engine", "appliance", "tui", ".importlinter"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    with open(tmp_path / "engine" / "scheduler.py", "a") as f:
        f.write("\nimport appliance.serving.service  # a forbidden import\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "engine.scheduler -> appliance.serving.service" in result.stdout
    assert "engine imports nothing of appliance or tui BROKEN" in result.stdout
