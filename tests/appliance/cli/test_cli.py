"""The real `appliance` command line, run as a subprocess against a temporary state dir."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.keys import AuthError, KeyStore

REPO = Path(__file__).resolve().parents[3]


def appliance(*args: str, state_dir: Path | None = None) -> subprocess.CompletedProcess:
    extra = ["--state-dir", str(state_dir)] if state_dir is not None else []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "appliance.cli", *args, *extra], capture_output=True, text=True, cwd=REPO, env=env,
        timeout=180,  # `models install-default` converts the default model: 17 s idle, near 60 s on a loaded VM
    )


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "state"


def create_json(state: Path, *args: str) -> dict:
    result = appliance("keys", "create", *args, "--json", state_dir=state)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_create_prints_the_secret_once_and_list_never_shows_it(state):
    result = appliance("keys", "create", "ci-bot", "--rpm", "60", "--models", "m1,m2", state_dir=state)
    assert result.returncode == 0, result.stderr
    [api_key] = [w for w in result.stdout.split() if w.startswith("sk-app-")]
    assert "cannot be shown again" in result.stdout
    secret = api_key.split("-", 3)[3]
    for args in (["keys", "list"], ["keys", "list", "--json"]):
        listed = appliance(*args, state_dir=state)
        assert listed.returncode == 0, listed.stderr
        assert "ci-bot" in listed.stdout
        assert secret not in listed.stdout and api_key not in listed.stdout
    with KeyStore(state / "keys.db") as store:  # the printed key is the real one
        record = store.authenticate(api_key)
    assert record.name == "ci-bot" and record.rpm_limit == 60 and record.allowed_models == ["m1", "m2"]


def test_list_json_describes_every_key(state):
    a = create_json(state, "a", "--budget-tokens", "5000", "--budget-period", "month", "--expires-in-days", "7")
    b = create_json(state, "b", "--tpm", "1000")
    result = appliance("keys", "list", "--json", state_dir=state)
    keys = json.loads(result.stdout)["keys"]
    assert [k["id"] for k in keys] == [a["key"]["id"], b["key"]["id"]]
    assert keys[0]["budget_tokens"] == 5000 and keys[0]["budget_period"] == "month"
    assert keys[0]["expires_at"] is not None and keys[1]["tpm_limit"] == 1000
    assert all("api_key" not in k and "secret" not in json.dumps(k) for k in keys)


def test_list_table_has_aligned_columns(state):
    create_json(state, "short")
    create_json(state, "a-much-longer-name", "--rpm", "5")
    lines = appliance("keys", "list", state_dir=state).stdout.splitlines()
    assert lines[0].split()[:3] == ["ID", "NAME", "STATUS"]
    status_column = lines[0].index("STATUS")
    assert all(line[status_column:].startswith("active") for line in lines[1:])


def test_revoke_stops_the_key(state):
    created = create_json(state, "a")
    result = appliance("keys", "revoke", created["key"]["id"], "--json", state_dir=state)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["revoked_at"] is not None
    with KeyStore(state / "keys.db") as store:
        with pytest.raises(AuthError) as e:
            store.authenticate(created["api_key"])
    assert e.value.status == 403
    listed = appliance("keys", "list", state_dir=state).stdout
    assert "revoked" in listed


def test_update_changes_only_the_given_fields(state):
    created = create_json(state, "a", "--rpm", "10", "--tpm", "500", "--models", "m1")
    key_id = created["key"]["id"]
    result = appliance("keys", "update", key_id, "--rpm", "none", "--name", "renamed", "--all-models", "--json", state_dir=state)
    assert result.returncode == 0, result.stderr
    updated = json.loads(result.stdout)
    assert updated["rpm_limit"] is None and updated["name"] == "renamed" and updated["allowed_models"] is None
    assert updated["tpm_limit"] == 500  # not given: unchanged


def test_networks_are_set_shown_and_cleared(state):
    created = create_json(state, "office", "--networks", "10.0.0.0/8, 192.0.2.7")
    assert created["key"]["allowed_networks"] == ["10.0.0.0/8", "192.0.2.7/32"]
    listed = appliance("keys", "list", state_dir=state).stdout
    assert "NETWORKS" in listed and "10.0.0.0/8,192.0.2.7/32" in listed
    cleared = appliance("keys", "update", created["key"]["id"], "--any-network", "--json", state_dir=state)
    assert cleared.returncode == 0 and json.loads(cleared.stdout)["allowed_networks"] is None


def test_unknown_key_id_is_one_clear_line_and_exit_1(state):
    create_json(state, "a")
    for args in (["keys", "revoke", "nope"], ["keys", "update", "nope", "--rpm", "1"], ["keys", "usage", "nope"]):
        result = appliance(*args, state_dir=state)
        assert result.returncode == 1
        assert result.stderr.strip().count("\n") == 0
        assert "no key with id 'nope'" in result.stderr and "keys list" in result.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["keys", "create", "a", "--rpm", "-3"], "must not be negative"),
        (["keys", "create", "a", "--rpm", "lots"], "whole number"),
        (["keys", "create", "a", "--budget-period", "week"], "invalid choice"),
        (["keys", "create", "a", "--expires-at", "not-a-date"], "ISO date"),
        (["keys", "create", "a", "--expires-at", "2001-01-01"], "in the past"),
        (["keys", "create", "a", "--expires-in-days", "1", "--expires-at", "2030-01-01"], "not allowed with"),
        (["keys", "create", "  "], "name must be a non-empty string"),
        (["keys", "update", "abc"], "nothing to change"),
        (["keys", "create", "a", "--networks", "10.0.0.300"], "--networks: '10.0.0.300' is not an IP address"),
    ],
)
def test_bad_options_exit_2_and_say_why(state, args, says):
    result = appliance(*args, state_dir=state)
    assert result.returncode == 2
    assert says in result.stderr
    with KeyStore(state / "keys.db") as store:
        assert store.list() == []


def test_unwritable_state_dir_names_the_path_and_the_fix(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = appliance("keys", "list", state_dir=blocker / "state")
    assert result.returncode == 1
    assert str(blocker / "state" / "keys.db") in result.stderr
    assert "--state-dir" in result.stderr and "sudo" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_file_sets_the_state_dir(tmp_path):
    state = tmp_path / "from-config"
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{state}"\n')
    result = appliance("keys", "create", "a", "--config", str(config), "--offline", "--json")
    assert result.returncode == 0, result.stderr
    assert (state / "keys.db").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text("state_dir = [")
    result = appliance("keys", "list", "--config", str(bad))
    assert result.returncode == 2 and "not valid TOML" in result.stderr


def test_usage_shows_flushed_days(state):
    created = create_json(state, "a")
    with KeyStore(state / "keys.db") as store:
        store.record_usage(created["key"]["id"], 10, 20)
    result = appliance("keys", "usage", created["key"]["id"], "--json", state_dir=state)
    [day] = json.loads(result.stdout)["days"]
    assert (day["requests"], day["prompt_tokens"], day["completion_tokens"]) == (1, 10, 20)


def test_keys_commands_never_import_torch(state):
    probe = (
        "import sys\n"
        "from appliance import cli\n"
        "assert cli.main(['keys', 'list', '--state-dir', sys.argv[1]]) == 0\n"
        # engine.config (the config's engine section) is plain Python; the engine itself must stay out.
        "heavy = sorted(m for m in ('torch', 'transformers', 'engine.engine', 'engine.model_runner', 'numpy', 'httpx')"
        " if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(state)], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_no_subcommand_shows_help_and_exits_2():
    result = appliance("keys")
    assert result.returncode == 2 and "create" in result.stderr and "revoke" in result.stderr


def test_dev_flag_offline_uses_the_state_dir_of_serve_dev(tmp_path):
    env_home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-m", "appliance.cli", "keys", "create", "dev-key", "--dev", "--offline", "--json"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), "HOME": str(env_home)},
    )
    assert result.returncode == 0, result.stderr
    assert (env_home / ".local" / "state" / "appliance" / "keys.db").exists()


@pytest.mark.slow
def test_models_install_default_reports_the_model_folder(tmp_path, default_model_path):
    """The run's one conversion (default_model_path) placed in the state dir: install-default finds it; a folder
    converted before the GGUF's quantization_config was dropped is converted again."""
    from tests.conftest import CACHE_DIR

    folder = tmp_path / "state" / "models" / default_model_path.name
    folder.mkdir(parents=True)
    for file in default_model_path.iterdir():  # copied, not linked: the store sets its own files' modes
        shutil.copy(file, folder / file.name)
    copied_at = (folder / "model.safetensors").stat().st_mtime_ns
    config = tmp_path / "config.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\ncache_dir = "{CACHE_DIR / "downloads"}"\n')
    result = appliance("models", "install-default", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["name"] == "smollm2-135m-instruct" and Path(report["path"]) == folder
    assert json.loads((folder / "manifest.json").read_text())["name"] == report["name"]
    # the dequantized folder does not name the GGUF's quantization (the engine would refuse it)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert (folder / "model.safetensors").stat().st_mtime_ns == copied_at  # found, not converted again
    # a folder converted before that was fixed (transformers 5 puts the GGUF's quantization_config on the config)
    stale = json.loads((folder / "config.json").read_text()) | {"quantization_config": {"quant_method": "gguf"}}
    (folder / "config.json").write_text(json.dumps(stale))
    fixed = appliance("models", "install-default", "--config", str(config))
    assert fixed.returncode == 0 and report["path"] in fixed.stdout
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert (folder / "model.safetensors").stat().st_mtime_ns != copied_at
    assert "quantization_config" not in json.loads((default_model_path / "config.json").read_text())  # untouched


def test_migrate_copies_a_boxs_keys_into_postgresql_once(state, postgres_url):
    created = create_json(state, "old-app", "--rpm", "7")
    first = appliance("keys", "migrate", "--to", postgres_url, "--json", state_dir=state)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["keys_added"] == 1
    again = appliance("keys", "migrate", "--to", postgres_url, state_dir=state)
    assert again.returncode == 0 and "Copied 0 of 1 keys" in again.stdout
    with KeyStore(postgres_url) as shared:
        assert shared.authenticate(created["api_key"]).rpm_limit == 7


def test_migrate_refuses_what_is_not_a_postgresql_url(state):
    create_json(state, "k")
    result = appliance("keys", "migrate", "--to", "sqlite:///tmp/x.db", state_dir=state)
    assert result.returncode == 2 and "--to must be a PostgreSQL URL" in result.stderr
