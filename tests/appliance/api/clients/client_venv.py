"""A venv for client libraries that cannot live in the suite's own (their pins conflict with it), built once per
machine from a lock file of exact pins into the test cache, and reused while the lock file is unchanged."""

import fcntl
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import CACHE_DIR

HERE = Path(__file__).parent


def client_venv(lock_name: str) -> Path:
    """The python of the venv for `lock_name` (a lock file beside this module), built on first use."""
    lock = HERE / lock_name
    digest = hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    venv = CACHE_DIR / "venvs" / f"{lock.stem}-{digest}"
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{lock.stem}.building", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one build at a time on this machine
        if not python.exists():
            building = venv.with_name(venv.name + ".partial")
            shutil.rmtree(building, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
            subprocess.run([str(building / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                            "-r", str(lock)], check=True)
            building.rename(venv)  # the venv's scripts name the .partial path; its python is all the tests run
    return python
