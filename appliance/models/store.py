"""The model store: one folder per model under the state dir, each described by a manifest.json.

Models come from the Hugging Face hub (pinned to a commit), a local model folder, or a GGUF file.
Every model is built in a dot-folder (`.staging-*`) and renamed into place only when complete, and a
delete renames to a dot-folder before removing, so a half-written or half-deleted model never lists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

Progress = Callable[[dict], None]

MANIFEST = "manifest.json"
WEIGHTS_INDEX = "model.safetensors.index.json"
# What serving needs besides the weights; the rest of a repo (README, *.bin, onnx/, ...) is left out.
SERVING_FILES = frozenset({
    "config.json", "generation_config.json", WEIGHTS_INDEX, "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
    "chat_template.json", "added_tokens.json",
})
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HUB_TIMEOUT_S = 20.0
PROGRESS_INTERVAL_S = 0.25
CHUNK_BYTES = 8 << 20


class ModelStoreError(Exception):
    """A store operation was refused or failed; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class ModelInfo:
    name: str
    path: Path
    source: str
    revision: str | None
    requested_revision: str | None
    architecture: str | None
    dtype: str | None
    size_bytes: int
    files: dict[str, dict]
    created_at: str | None

    def to_dict(self) -> dict:
        return {**asdict(self), "path": str(self.path)}


class _Progress:
    """Forwards progress to the operator's callback: every message, but byte counts a few times a second."""

    def __init__(self, callback: Progress | None):
        self.callback = callback
        self.stage, self.last_sent_s = None, 0.0

    def __call__(self, stage: str, message: str, bytes_done: int | None = None, bytes_total: int | None = None):
        if self.callback is None:
            return
        now_s = time.monotonic()
        counting = bytes_done is not None and bytes_done != bytes_total
        if stage == self.stage and counting and now_s - self.last_sent_s < PROGRESS_INTERVAL_S:
            return
        self.stage, self.last_sent_s = stage, now_s
        self.callback({"stage": stage, "message": message, "bytes_done": bytes_done, "bytes_total": bytes_total})

    def counter(self, stage: str, message: str, bytes_total: int) -> Callable[[int], None]:
        """Report the start of a byte-counted step; return the callback that counts its bytes."""
        self(stage, message, 0, bytes_total)
        bytes_done = 0

        def on_bytes(n: int) -> None:
            nonlocal bytes_done
            bytes_done += n
            self(stage, message, bytes_done, bytes_total)

        return on_bytes


def sha256_of(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return digest.hexdigest()


def write_manifest(
    folder: Path, name: str, source: str, revision: str | None, requested_revision: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Hash every file of a model folder and write folder/manifest.json; return the manifest."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST)
    total = sum(p.stat().st_size for p in paths)
    on_bytes = _Progress(progress).counter("hashing", f"hashing {len(paths)} files", total)
    files = {
        p.relative_to(folder).as_posix(): {"sha256": sha256_of(p, on_bytes), "size": p.stat().st_size} for p in paths
    }
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    manifest = dict(
        name=name, source=source, revision=revision, requested_revision=requested_revision,
        architecture=(config.get("architectures") or [None])[0], dtype=config.get("dtype") or config.get("torch_dtype"),
        size_bytes=total, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), files=files,
    )
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(folder: Path) -> ModelInfo:
    manifest = json.loads((folder / MANIFEST).read_text())
    files = manifest.get("files", {})
    # Manifests written before the architecture, dtype, size and date fields existed still list.
    optional = ("revision", "requested_revision", "architecture", "dtype", "created_at")
    return ModelInfo(
        name=folder.name, path=folder, source=manifest.get("source", "unknown"), files=files,
        size_bytes=manifest.get("size_bytes", sum(f["size"] for f in files.values())),
        **{key: manifest.get(key) for key in optional},
    )


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        message = f"{path.parent} is not a Hugging Face model folder: {path.name} is missing"
        raise ModelStoreError(400, message) from None
    except (OSError, ValueError) as e:
        raise ModelStoreError(400, f"{path} is not readable JSON: {e}") from e


def check_supported(config: dict, where: str) -> str:
    """The architecture the engine builds for this config.json; refused naming the first layer it cannot run."""
    from engine.capabilities import check_config, config_from_dict  # imports torch: only the service process pays
    from engine.errors import ModelLoadError

    try:
        return check_config(config_from_dict(config)).declared
    except ModelLoadError as e:
        raise ModelStoreError(400, f"{where} cannot be served: {e}") from None


def check_name(name: str, derived: bool = False) -> str:
    if NAME_PATTERN.fullmatch(name):
        return name
    rule = "1-64 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
    hint = "; choose one with --name" if derived else ""
    raise ModelStoreError(400, f"{name!r} is not a valid model name: use {rule}, e.g. 'llama-3.2-1b-instruct'{hint}")


def files_to_keep(names: set[str], index: dict | None, where: str) -> list[str]:
    """The serving files among a model's top-level file names: tokenizer and configs, then the weights."""
    if index is not None:
        # Repos may also carry other *.safetensors (e.g. a consolidated copy); the index says which serve.
        weights = sorted(set(index.get("weight_map", {}).values()))
        missing = [w for w in weights if w not in names]
        if missing:
            raise ModelStoreError(400, f"{where}: {WEIGHTS_INDEX} names weight files that are missing: {missing}")
    else:
        weights = sorted(n for n in names if n.endswith(".safetensors"))
    if not weights:
        found = "only PyTorch .bin weights" if any(n.endswith(".bin") for n in names) else "no weights"
        how = "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(new_folder)"
        raise ModelStoreError(400, f"{where} has {found}; the appliance needs *.safetensors weights (convert: {how})")
    return sorted(names & SERVING_FILES) + weights


def copy_file(source: Path, target: Path, on_bytes: Callable[[int], None]) -> None:
    """Copy the content (a symlink's target, as in a hub cache snapshot), reporting bytes as they go."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(CHUNK_BYTES):
            dst.write(chunk)
            on_bytes(len(chunk))


def byte_counter(on_bytes: Callable[[int], None]) -> type:
    """A tqdm class for huggingface_hub downloads that reports bytes instead of drawing a bar."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class ByteCounter(hf_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True  # the operator sees our progress callback, not a bar on stderr
            super().__init__(*args, **kwargs)

        def update(self, n: int | float | None = 1) -> None:
            on_bytes(int(n or 0))

        # Defining these makes Xet downloads count bytes written once, not network and disk bytes twice.
        def update_transfer(self, n: int) -> None:
            pass

        def set_transfer_postfix_str(self, s: str, refresh: bool = True) -> None:
            pass

    return ByteCounter


@contextmanager
def hub_errors(repo_id: str, revision: str, endpoint: str) -> Iterator[None]:
    """Turn huggingface_hub's failures into ModelStoreErrors that name the repo and revision."""
    import httpx2
    from huggingface_hub.errors import (
        GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, OfflineModeIsEnabled,
        RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    at = f"{repo_id}@{revision}"
    try:
        yield
    except HFValidationError as e:
        raise ModelStoreError(400, f"{repo_id!r} is not a hub repo id (expected 'org/name'): {e}") from e
    except GatedRepoError as e:
        raise ModelStoreError(401, f"{repo_id} is gated: accept its terms on the hub, then pull with a token") from e
    except RevisionNotFoundError as e:
        raise ModelStoreError(404, f"{repo_id} has no revision {revision!r}; give a branch, tag or commit sha") from e
    except RepositoryNotFoundError as e:
        raise ModelStoreError(404, f"{repo_id} was not found on {endpoint}; check the name (or the token)") from e
    except RemoteEntryNotFoundError as e:
        raise ModelStoreError(502, f"the hub listed a file of {at} but could not serve it; pull again") from e
    except OfflineModeIsEnabled as e:
        raise ModelStoreError(502, f"cannot pull {at}: HF_HUB_OFFLINE is set in the service's environment") from e
    except HfHubHTTPError as e:
        status = e.response.status_code
        if status in (401, 403):
            raise ModelStoreError(401, f"the hub refused access to {at} ({status}): check the token") from e
        raise ModelStoreError(502, f"the hub answered {status} for {at}; try again later") from e
    except (httpx2.HTTPError, LocalEntryNotFoundError) as e:
        message = f"could not reach the hub at {endpoint} for {at}: {e}"
        raise ModelStoreError(502, f"{message}; check network access (or HF_ENDPOINT)") from e


class ModelStore:
    """The models under models_dir; pulls go to hub_endpoint (huggingface_hub's default when None)."""

    def __init__(self, models_dir: Path, hub_endpoint: str | None = None):
        self.models_dir = Path(models_dir)
        self.hub_endpoint = hub_endpoint

    def list(self) -> list[ModelInfo]:
        models = []
        for folder in sorted(self.models_dir.iterdir()) if self.models_dir.is_dir() else []:
            if folder.name.startswith(".") or not (folder / MANIFEST).is_file():
                continue
            try:
                models.append(read_manifest(folder))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("skipping %s: its manifest cannot be read: %s", folder, e)
        return models

    def get(self, name: str) -> ModelInfo:
        folder = self.models_dir / check_name(name)
        if not (folder / MANIFEST).is_file():
            raise ModelStoreError(404, f"no model named {name!r}; `appliance models list` shows the installed ones")
        return read_manifest(folder)

    def import_path(self, source: Path, name: str | None = None, progress: Progress | None = None) -> ModelInfo:
        source = Path(source).expanduser().resolve()
        if source.is_dir():
            return self._import_folder(source, name, progress)
        if source.is_file() and source.suffix.lower() == ".gguf":
            return self._import_gguf(source, name, progress)
        if not source.exists():
            raise ModelStoreError(400, f"{source} does not exist; give a Hugging Face model folder or a .gguf file")
        raise ModelStoreError(400, f"{source} is neither a Hugging Face model folder nor a .gguf file")

    def pull(self, repo_id: str, revision: str = "main", name: str | None = None, progress: Progress | None = None,
             token: str | None = None) -> ModelInfo:
        from huggingface_hub import HfApi, constants, hf_hub_download

        name = self._new_name(name, repo_id.rsplit("/", 1)[-1])
        where, endpoint, report = f"{repo_id}@{revision}", self.hub_endpoint or constants.ENDPOINT, _Progress(progress)
        report("resolving", f"resolving {where} on {endpoint}")
        with hub_errors(repo_id, revision, endpoint):
            info = HfApi(endpoint=self.hub_endpoint, token=token).model_info(
                repo_id, revision=revision, files_metadata=True, timeout=HUB_TIMEOUT_S
            )
        siblings = info.siblings or []
        sizes = {s.rfilename: s.size for s in siblings}
        names = {n for n in sizes if "/" not in n}
        if "config.json" not in names:
            raise ModelStoreError(400, f"{where} is not a Hugging Face transformers model: it has no config.json")
        with self._staging() as staging:

            def fetch(filename: str, on_bytes: Callable[[int], None] = lambda n: None) -> Path:
                # At the commit sha, never the branch name: a branch moving mid-pull cannot mix revisions.
                with hub_errors(repo_id, info.sha, endpoint):
                    hf_hub_download(
                        repo_id, filename, revision=info.sha, local_dir=staging, endpoint=self.hub_endpoint,
                        token=token, etag_timeout=HUB_TIMEOUT_S, tqdm_class=byte_counter(on_bytes),
                    )
                size = (staging / filename).stat().st_size
                if sizes.get(filename) not in (None, size):
                    message = f"{filename} of {repo_id}@{info.sha}: got {size} bytes, the hub lists {sizes[filename]}"
                    raise ModelStoreError(502, f"{message}; pull again")
                return staging / filename

            report("resolving", f"{where} is commit {info.sha}; checking its architecture")
            # config.json first, so an unsupported model fails before the big downloads.
            check_supported(read_json(fetch("config.json")), where)
            index = read_json(fetch(WEIGHTS_INDEX)) if WEIGHTS_INDEX in names else None
            to_fetch = [f for f in files_to_keep(names, index, where) if not (staging / f).exists()]
            total = sum(sizes.get(f) or 0 for f in to_fetch)
            on_bytes = report.counter("downloading", f"downloading {len(to_fetch)} files of {where}", total)
            for filename in to_fetch:
                fetch(filename, on_bytes)
            shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
            manifest = write_manifest(staging, name, f"hf:{repo_id}", info.sha, revision, progress)
            for sibling in siblings:
                entry = manifest["files"].get(sibling.rfilename)
                if sibling.lfs is not None and entry is not None and entry["sha256"] != sibling.lfs.sha256:
                    raise ModelStoreError(502, f"{sibling.rfilename} of {where} differs from the hub's sha256; retry")
            return self._commit(staging, name, report)

    def delete(self, name: str, loaded: set[str] = frozenset()) -> None:
        model = self.get(name)
        if name in loaded:
            raise ModelStoreError(409, f"{name} is the loaded model; unload it first: load another model, then delete")
        trash = self.models_dir / f".deleting-{name}-{secrets.token_hex(4)}"
        model.path.rename(trash)
        shutil.rmtree(trash)

    def _import_folder(self, source: Path, name: str | None, progress: Progress | None) -> ModelInfo:
        name = self._new_name(name, source.name)
        check_supported(read_json(source / "config.json"), str(source))
        names = {p.name for p in source.iterdir() if p.is_file()}
        index = read_json(source / WEIGHTS_INDEX) if WEIGHTS_INDEX in names else None
        to_copy = files_to_keep(names, index, str(source))
        report = _Progress(progress)
        with self._staging() as staging:
            total = sum((source / f).stat().st_size for f in to_copy)
            on_bytes = report.counter("downloading", f"copying {len(to_copy)} files from {source}", total)
            for filename in to_copy:
                copy_file(source / filename, staging / filename, on_bytes)
            write_manifest(staging, name, f"local:{source}", None, progress=progress)
            return self._commit(staging, name, report)

    def _import_gguf(self, source: Path, name: str | None, progress: Progress | None) -> ModelInfo:
        from engine.errors import ModelLoadError
        from engine.loader import convert_gguf_to_folder

        name = self._new_name(name, source.stem)
        report = _Progress(progress)
        revision = sha256_of(source, report.counter("hashing", f"hashing {source.name}", source.stat().st_size))
        with self._staging() as staging:
            report("converting", f"converting {source.name} to safetensors (dequantizing takes a while)")
            try:
                convert_gguf_to_folder(source, staging)
            except ModelLoadError as e:
                raise ModelStoreError(400, f"{source} could not be imported: {e}") from e
            write_manifest(staging, name, f"gguf:{source}", revision, progress=progress)
            return self._commit(staging, name, report)

    def _new_name(self, name: str | None, derived_from: str) -> str:
        name = check_name(derived_from.lower(), derived=True) if name is None else check_name(name)
        if (self.models_dir / name).exists():
            message = f"a model named {name!r} already exists; delete it first or choose another --name"
            raise ModelStoreError(409, message)
        return name

    @contextmanager
    def _staging(self) -> Iterator[Path]:
        """A dot-folder to build a model in; removed whatever happens (a committed model has left it)."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        staging = self.models_dir / f".staging-{secrets.token_hex(6)}"
        staging.mkdir()
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _commit(self, staging: Path, name: str, report: _Progress) -> ModelInfo:
        target = self.models_dir / name
        try:
            staging.rename(target)  # atomic; fails when another pull or import took the name meanwhile
        except OSError as e:
            message = f"a model named {name!r} appeared meanwhile; delete it first or choose another --name"
            raise ModelStoreError(409, message) from e
        model = read_manifest(target)
        report("done", f"{name} is ready ({model.size_bytes} bytes)", model.size_bytes, model.size_bytes)
        return model
