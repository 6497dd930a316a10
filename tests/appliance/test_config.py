"""The TOML config: defaults, overrides, errors that name the key, the engine section."""

from pathlib import Path

import pytest

from appliance import config as config_module
from appliance.config import Config, ConfigError, load_config


@pytest.fixture(autouse=True)
def no_system_config(monkeypatch, tmp_path):
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.toml")


def test_defaults_without_a_file():
    c = load_config(None, {})
    assert c == Config()
    assert (c.host, c.port, c.metrics_host, c.metrics_port) == ("0.0.0.0", 8000, "127.0.0.1", 9100)
    assert c.keys_db_path == Path("/var/lib/appliance/keys.db")
    assert c.models_dir == Path("/var/lib/appliance/models")
    assert c.model_path == Path("/var/lib/appliance/models/smollm2-135m-instruct")
    assert c.model_name == "smollm2-135m-instruct"
    assert c.drain_timeout_s == 30.0 and c.log_prompts is False


def test_file_then_overrides(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('port = 9000\nstate_dir = "/srv/app"\nlog_prompts = true\n[engine]\nmax_num_seqs = 8\ndtype = "bfloat16"\n')
    c = load_config(path, {"port": 8123, "host": None, "engine": {"max_num_seqs": None, "block_size": 32}})
    assert c.port == 8123  # the flag wins
    assert c.host == "0.0.0.0"  # None overrides nothing
    assert c.state_dir == Path("/srv/app") and c.keys_db_path == Path("/srv/app/keys.db")
    assert c.log_prompts is True
    assert (c.engine.max_num_seqs, c.engine.dtype, c.engine.block_size) == (8, "bfloat16", 32)


def test_default_path_is_read_only_if_it_exists(tmp_path, monkeypatch):
    path = tmp_path / "etc.toml"
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    assert load_config(None, {}).port == 8000
    path.write_text("port = 1234\n")
    assert load_config(None, {}).port == 1234


@pytest.mark.parametrize("text, key", [
    ("prot = 1\n", "'prot'"),
    ("[engine]\nmax_seqs = 4\n", "'engine.max_seqs'"),
    ('port = "eighty"\n', "port"),
    ("log_prompts = 1\n", "log_prompts"),
    ("port = 70000\n", "port"),
    ("drain_timeout_s = -1\n", "drain_timeout_s"),
    ("engine = 5\n", "engine"),
    ("forwarded_allow_ips = \"10.0.0.1\"\n", "forwarded_allow_ips must be a list of strings"),
    ("forwarded_allow_ips = [\"proxy\"]\n", "forwarded_allow_ips: 'proxy' is not an IP address or network"),
    ("https_port = 8000\n", "https_port and port are both 8000"),
    ("max_connections = 0\n", "max_connections must be at least 1"),
    ("header_timeout_s = 0\n", "header_timeout_s must be positive"),
    ("auth_failures_per_minute = 0\n", "auth_failures_per_minute must be at least 1"),
    ("[models.big]\nkv_cach_bytes = 1\n", "'models.big.kv_cach_bytes'"),
    ("[models.big]\npinned = \"yes\"\n", "models.big.pinned must be true or false"),
    ("[models.big]\nmax_num_seqs = 0\n", "models.big.max_num_seqs"),
    ("models = 3\n", "models: must be tables"),
    ("[routing]\nfallback = {}\n", "'routing.fallback'"),
    ("[routing.fallbacks]\nchat = \"small\"\n", "routing.fallbacks.chat must be a list of strings"),
    ("[routing.fallbacks]\nchat = [\"chat\"]\n", "routing.fallbacks.chat: a name cannot fall back to itself"),
    ("[routing]\nfallback_queue_depth = -1\n", "routing.fallback_queue_depth"),
    ("keep_alive_s = 0\n", "keep_alive_s must be positive"),
    ("keys_database_url = \"mysql://db/keys\"\n", "keys_database_url must be a PostgreSQL URL"),
    ("keys_outage_grace_s = 0\n", "keys_outage_grace_s must be positive"),
])
def test_errors_name_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path, {})


def test_missing_or_broken_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", {})
    (tmp_path / "broken.toml").write_text("port = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "broken.toml", {})


def test_model_as_path_or_name(tmp_path):
    by_path = load_config(None, {"model": str(tmp_path / "my-model"), "state_dir": tmp_path})
    assert by_path.model_path == tmp_path / "my-model" and by_path.model_name == "my-model"
    by_name = load_config(None, {"model": "qwen", "state_dir": tmp_path, "served_model_name": "q"})
    assert by_name.model_path == tmp_path / "models" / "qwen" and by_name.model_name == "q"


def test_the_engine_section_is_the_engine_config_and_its_checks_name_the_key(tmp_path):
    from engine import EngineConfig

    c = load_config(None, {"state_dir": tmp_path, "engine": {"max_num_seqs": 3}})
    assert isinstance(c.engine, EngineConfig) and c.engine.max_num_seqs == 3
    with pytest.raises(ConfigError, match=r"engine\.gpu_memory_fraction: .*\(0, 1\]"):
        load_config(None, {"state_dir": tmp_path, "engine": {"gpu_memory_fraction": 1.5}})


def test_models_and_routing_tables(tmp_path):
    path = tmp_path / "pool.toml"
    path.write_text('load_on_demand = true\n[engine]\nmax_num_seqs = 8\n'
                    '[models.big]\npinned = true\nkv_cache_bytes = 1073741824\naliases = ["large"]\n'
                    '[routing]\nfallback_queue_depth = 16\n[routing.aliases]\nchat-strong = "big"\n'
                    '[routing.fallbacks]\nchat-strong = ["small"]\n')
    c = load_config(path, {"state_dir": tmp_path})
    assert c.load_on_demand and c.model_settings("big").pinned and c.model_settings("big").aliases == ["large"]
    assert c.model_settings("big").kv_cache_bytes == 1 << 30 and c.model_settings("small").pinned is False
    assert c.routing.aliases == {"chat-strong": "big"} and c.routing.fallbacks == {"chat-strong": ["small"]}
    assert c.routing.fallback_queue_depth == 16


def test_serve_flags_become_overrides(tmp_path):
    import argparse

    from appliance.serve import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", "/m/x", "--port", "0", "--state-dir", str(tmp_path), "--metrics-port", "9200",
                              "--max-num-seqs", "4", "--no-prefix-caching", "--drain-timeout", "5"])
    c = config_from_args(args)
    assert (c.model, c.port, c.state_dir, c.metrics_port, c.drain_timeout_s) == ("/m/x", 0, tmp_path, 9200, 5.0)
    assert c.engine.max_num_seqs == 4 and c.engine.enable_prefix_caching is False
    dev = config_from_args(parser.parse_args(["--dev", "--state-dir", str(tmp_path)]))
    assert dev.host == "127.0.0.1" and dev.control_socket == tmp_path / "control.sock"


def test_listeners_https_off_loopback_plain_http_on_loopback(tmp_path):
    public = load_config(None, {"state_dir": tmp_path})
    assert (public.host, public.https_enabled, public.http_host, public.https_port) == ("0.0.0.0", True, "127.0.0.1", 8443)
    proxied = load_config(None, {"tls": False, "state_dir": tmp_path})
    assert (proxied.host, proxied.https_enabled, proxied.http_host) == ("127.0.0.1", False, "127.0.0.1")
    exposed = load_config(None, {"tls": False, "host": "0.0.0.0", "state_dir": tmp_path})
    assert (exposed.https_enabled, exposed.http_host) == (False, "0.0.0.0")  # the operator asked; health warns
    local = load_config(None, {"host": "127.0.0.1", "state_dir": tmp_path})
    assert not local.https_enabled  # nothing leaves the machine: no certificate needed
    tested = load_config(None, {"host": "127.0.0.1", "tls_cert": "/c.pem", "tls_key": "/k.pem", "state_dir": tmp_path})
    assert tested.https_enabled and tested.tls_cert_path == Path("/c.pem")
