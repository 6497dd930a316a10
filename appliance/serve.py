"""`appliance serve`: the process systemd runs.

One asyncio loop holds the uvicorn servers (the public API over HTTPS on `host` and plain HTTP on
loopback, /metrics on 127.0.0.1, the control socket), the service with its engine thread, the
canary and the systemd glue. SIGTERM drains: /ready turns 503 at once, new requests get 503,
in-flight ones finish within drain_timeout_s, the rest are ended with an error event, then the
process exits 0. SIGHUP (`systemctl reload`) re-reads the TLS certificate without cutting anything.
"""

import argparse
import asyncio
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import transformers
import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp

from appliance.api.connections import ConnectionLimits, fit_to_file_limit
from appliance.ops import sdnotify
from appliance.control.plane import ControlPlane
from appliance.control.routes import build_control_app
from appliance.config import DEV_STATE_DIR, Config, ConfigError, load_config
from appliance.fleet.membership import load_membership
from appliance.ops.requestlog import setup_logging

log = logging.getLogger("appliance.serve")
STATUS_INTERVAL_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config (default: /etc/appliance/config.toml if it exists)")
    parser.add_argument("--model", help="model name under <state-dir>/models, or a path to a model folder or GGUF file")
    parser.add_argument("--served-model-name", help="the model id clients send (default: the model's name)")
    parser.add_argument("--host", help="public listener address (default 0.0.0.0; 127.0.0.1 with tls = false)")
    parser.add_argument("--port", type=int, help="plain HTTP port, on loopback while TLS is on (default 8000; 0: any)")
    parser.add_argument("--https-port", type=int, help="HTTPS port on --host (default 8443; 0: any free port)")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain (default /etc/appliance/tls/cert.pem)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key (default /etc/appliance/tls/key.pem)")
    parser.add_argument("--no-tls", dest="tls", action="store_false", default=None,
                        help="plain HTTP only, on loopback unless --host says otherwise (behind your own TLS proxy)")
    parser.add_argument("--metrics-host", help="metrics listener address (default 127.0.0.1)")
    parser.add_argument("--metrics-port", type=int, help="metrics listener port (default 9100; 0: none)")
    parser.add_argument("--state-dir", type=Path, help="keys.db and models (default /var/lib/appliance)")
    parser.add_argument("--control-socket", type=Path, help="control socket path (default /run/appliance/control.sock)")
    parser.add_argument("--drain-timeout", type=float, dest="drain_timeout_s", help="seconds in-flight requests get on SIGTERM")
    parser.add_argument("--log-level", help="debug, info, warning, error")
    parser.add_argument("--log-prompts", action="store_true", default=None, help="include prompt text in request logs")
    parser.add_argument("--dev", action="store_true",
                        help="run unprivileged from a checkout: state in ~/.local/state/appliance, listen on 127.0.0.1")
    engine = parser.add_argument_group("engine")
    engine.add_argument("--max-num-seqs", type=int)
    engine.add_argument("--max-num-batched-tokens", type=int)
    engine.add_argument("--max-model-len", type=int)
    engine.add_argument("--num-kv-blocks", type=int)
    engine.add_argument("--kv-cache-bytes", type=int)
    engine.add_argument("--gpu-memory-fraction", type=float)
    engine.add_argument("--attention-backend", choices=["auto", "torch", "triton"])
    engine.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", default=None)
    engine.add_argument("--no-fused-layers", dest="fused_layers", action="store_false", default=None)
    engine.add_argument("--max-waiting-requests", type=int)
    engine.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"])
    engine.add_argument("--quantization", choices=["int8", "int4", "fp8"])
    engine.add_argument("--kv-cache-dtype", choices=["auto", "fp8"])
    engine.add_argument("--device")
    engine.add_argument("--no-prefix-caching", dest="enable_prefix_caching", action="store_false", default=None)


ENGINE_FLAGS = ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "num_kv_blocks", "kv_cache_bytes",
                "gpu_memory_fraction", "max_waiting_requests", "dtype", "device", "enable_prefix_caching",
                "attention_backend", "cuda_graphs", "fused_layers", "quantization", "kv_cache_dtype")


def config_from_args(args: argparse.Namespace) -> Config:
    get = lambda name: getattr(args, name, None)  # noqa: E731
    overrides = {name: get(name) for name in (
        "model", "served_model_name", "host", "port", "https_port", "tls", "tls_cert", "tls_key", "metrics_host",
        "metrics_port", "state_dir", "control_socket", "drain_timeout_s", "log_level", "log_prompts")}
    overrides["engine"] = {name: get(name) for name in ENGINE_FLAGS}
    if get("dev"):
        state = get("state_dir") or DEV_STATE_DIR
        overrides["state_dir"] = state
        overrides["host"] = get("host") or "127.0.0.1"
        overrides["control_socket"] = get("control_socket") or Path(state) / "control.sock"
    return load_config(get("config"), overrides)


def run(args: argparse.Namespace) -> int:
    from appliance.ops.certificates import CertificateError

    try:
        config = config_from_args(args)
    except ConfigError as e:
        print(f"appliance serve: error: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    # A progress bar redrawn with carriage returns is noise in the journal; "ready: serving" says it loaded.
    transformers.utils.logging.disable_progress_bar()
    try:
        appliance = Appliance(config)
    except CertificateError as e:
        print(f"appliance serve: error: {e}", file=sys.stderr)
        sdnotify.notify(f"STATUS=failed: {e}"[:1000])
        return 2
    try:
        return asyncio.run(appliance.run())
    except KeyboardInterrupt:
        return 130


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: SIGTERM means drain, which the Appliance runs."""

    def capture_signals(self):
        import contextlib

        return contextlib.nullcontext()


def _uvicorn(app: ASGIApp, host: str | None = None, port: int | None = None, **options) -> _Server:
    options.setdefault("timeout_keep_alive", 5)
    options.setdefault("proxy_headers", False)  # the public listeners set whom to believe (forwarded_allow_ips)
    return _Server(uvicorn.Config(
        app, host=host or "127.0.0.1", port=port or 0, log_config=None, access_log=False, lifespan="off",
        server_header=False, timeout_graceful_shutdown=5, **options,
    ))


class Appliance:
    """The serve process's parts, started and stopped in order."""

    def __init__(self, config: Config):
        from appliance.api.app import build_app
        from appliance.keys import KeyStore
        from appliance.ops.metrics import metrics_routes
        from appliance.serving.service import Service
        from appliance.ops.telemetry import Telemetry, TelemetryCollector

        self.config = config
        # First, so that a certificate that cannot be served stops the start before anything loads.
        self.tls = server_tls(config) if config.https_enabled else None
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.keys = KeyStore(config.keys_location, outage_grace_s=config.keys_outage_grace_s)
        self.service = Service(config, self.keys)
        membership = load_membership(config.state_dir)
        if membership is not None:  # restarted while in a fleet: its gateway stands for many clients
            self.service.lockout.set_exempt(membership.gateway_addresses)
        self.telemetry = Telemetry([config.state_dir])
        self.service.metrics.registry.register(TelemetryCollector(self.telemetry))
        self.connections = ConnectionLimits(fit_to_file_limit(config.max_connections), config.header_timeout_s)
        self.control = build_control_plane(self.service, self.telemetry, self.listeners)
        api = build_app(self.service)
        public = dict(http=self.connections.protocol(), timeout_keep_alive=config.idle_timeout_s,
                      proxy_headers=bool(config.forwarded_allow_ips), forwarded_allow_ips=config.forwarded_allow_ips)
        self.public = _uvicorn(api, config.http_host, config.port, **public)
        self.https = None
        if self.tls is not None:
            # uvicorn passes no handshake timeout to asyncio, whose default lets a client that opens the TLS port
            # and never finishes its handshake hold a socket for 60 s, before the connection is counted.
            asyncio.constants.SSL_HANDSHAKE_TIMEOUT = config.header_timeout_s
            context = self.tls.context  # kept for the listener's life; reloads load into it
            self.https = _uvicorn(api, config.host, config.https_port, ssl_context_factory=lambda *_: context, **public)
        self.metrics_server = None
        if config.metrics_port:
            metrics_app = Starlette(routes=metrics_routes(self.service.metrics, config.metrics_token))
            self.metrics_server = _uvicorn(metrics_app, config.metrics_host, config.metrics_port)
        self.control_server = self._control_server()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Event | None = None
        self.started = threading.Event()  # set once READY=1 would be sent (tests wait on it)
        self.exit_code: int | None = None

    @property
    def public_port(self) -> int | None:
        return _bound_port(self.public)

    @property
    def https_port(self) -> int | None:
        return _bound_port(self.https) if self.https else None

    @property
    def metrics_port(self) -> int | None:
        return _bound_port(self.metrics_server) if self.metrics_server else None

    def listeners(self) -> dict:
        """Where the API listens and with which certificate, for `appliance status` and the TUI."""
        http = f"http://{_url_host(self.config.http_host)}:{self.public_port}"
        https = None
        if self.https is not None:
            host = self.config.host
            if host in ("0.0.0.0", "::") and self.tls.info.names:
                host = self.tls.info.names[0]  # all addresses: the name the certificate gives first
            https = f"https://{_url_host(host)}:{self.https_port}"
        return {"http": http, "https": https, "tls": self.tls.info.to_dict() if self.tls else None,
                "client_ca": str(self.config.tls_client_ca) if self.tls and self.config.tls_client_ca else None,
                "connections": len(self.connections.open), "max_connections": self.connections.max_connections}

    def request_shutdown(self) -> None:
        """Start the drain; safe from any thread and from signal handlers."""
        if self._loop is not None and self._shutdown is not None:
            self._loop.call_soon_threadsafe(self._shutdown.set)

    def request_reload(self, timeout_s: float = 10.0) -> bool:
        """Re-read the TLS certificate as SIGHUP does, from another thread; whether it is served now."""
        return asyncio.run_coroutine_threadsafe(self._reload(), self._loop).result(timeout_s)

    async def _reload(self) -> bool:
        if self.tls is None:
            log.info("reload: no TLS listener, nothing to re-read")
            return True
        sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        try:
            return self.tls.reload()
        finally:
            sdnotify.notify("READY=1")

    def _control_server(self) -> _Server | None:
        from appliance.control.peer import PeerCredentialsProtocol, bind_control_socket

        try:
            self._control_socket = bind_control_socket(self.config.control_socket, self.config.control_group)
        except OSError as e:
            # The API still serves; the operator loses the TUI and CLI until this is fixed.
            log.error("no control socket at %s: %s", self.config.control_socket, e)
            self._control_socket = None
            return None
        return _uvicorn(build_control_app(self.control), http=PeerCredentialsProtocol)

    async def run(self, install_signal_handlers: bool = True) -> int:
        self._loop = asyncio.get_running_loop()
        self._shutdown = asyncio.Event()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._shutdown.set)
            self._loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self._reload()))
        logging.getLogger().addHandler(self.control.logs)
        servers = [asyncio.ensure_future(self.public.serve())]
        if self.https is not None:
            servers.append(asyncio.ensure_future(self.https.serve()))
        if self.metrics_server is not None:
            servers.append(asyncio.ensure_future(self.metrics_server.serve()))
        if self.control_server is not None:
            servers.append(asyncio.ensure_future(self.control_server.serve(sockets=[self._control_socket])))
        self.telemetry.start()
        helpers: list[asyncio.Task] = [asyncio.ensure_future(self.control.monitor.run())]
        if self.tls is not None:
            helpers.append(asyncio.ensure_future(self.tls.watch()))
        code = 0
        try:
            await self._wait_listening(servers)
            metrics = f"{self.config.metrics_host}:{self.metrics_port}" if self.metrics_server else "off"
            control = self.config.control_socket if self.control_server else "none"
            where = self.listeners()
            tls = f"{where['https']} (certificate SHA-256 {self.tls.info.fingerprint_sha256}) and " if self.tls else ""
            log.info("listening on %s%s (metrics %s, control socket %s, at most %d connections)", tls,
                     where["http"], metrics, control, self.connections.max_connections)
            helpers.append(asyncio.ensure_future(self._watchdog_loop()))
            sdnotify.notify(f"STATUS=loading model {self.config.model}")
            if not await self._start_service():
                code = 1
            else:
                helpers.append(asyncio.ensure_future(self.service.readiness.canary_loop()))
                helpers.append(asyncio.ensure_future(self._status_loop()))
                await self._shutdown.wait()
            sdnotify.notify("STOPPING=1")
            sdnotify.notify("STATUS=draining")
            log.info("draining: up to %.0f s for in-flight requests", self.config.drain_timeout_s)
            ended = await self.service.drain()
            if ended:
                log.warning("drain timeout: ended %d requests early", ended)
        finally:
            for task in helpers:
                task.cancel()
            self.control.hub.close()
            for server in (self.public, self.https, self.metrics_server, self.control_server):
                if server is not None:
                    server.should_exit = True
            await asyncio.gather(*servers, return_exceptions=True)
            await self.service.stop()
            await asyncio.to_thread(self.telemetry.stop)
            self.keys.close()
            if self.control_server is not None:
                self.config.control_socket.unlink(missing_ok=True)
            logging.getLogger().removeHandler(self.control.logs)
            self.exit_code = code
            log.info("stopped (exit code %d)", code)
        return code

    async def _wait_listening(self, servers: list[asyncio.Future]) -> None:
        waiting = [s for s in (self.public, self.https, self.metrics_server, self.control_server) if s is not None]
        while not all(s.started for s in waiting):
            done = [t for t in servers if t.done()]
            if done:
                done[0].result()  # a bind failure: uvicorn logged it and exits
                raise RuntimeError("a listener stopped during startup")
            await asyncio.sleep(0.02)

    async def _start_service(self) -> bool:
        """Load the model; READY=1 once it is loaded and a canary generation passed."""
        load = asyncio.ensure_future(self.service.start())
        stop = asyncio.ensure_future(self._shutdown.wait())
        await asyncio.wait([load, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not load.done():
            return True  # asked to stop while loading; the drain handles it
        if load.exception() is not None:
            error = self.service.pool.load_error or str(load.exception())
            log.error("the model could not be loaded: %s", error)
            sdnotify.notify(f"STATUS=failed: {error}"[:1000])
            return False
        readiness = self.service.readiness
        while readiness.last_canary_ok is None and not self._shutdown.is_set():
            sdnotify.notify(f"STATUS=canary failing: {readiness.last_canary_error}")
            await asyncio.sleep(1.0)
            await readiness.run_canary()
        sdnotify.notify("READY=1")
        sdnotify.notify(f"STATUS=serving {self.service.pool.model_name}")
        log.info("ready: serving %s", self.service.pool.model_name)
        self.started.set()
        return True

    async def _watchdog_loop(self) -> None:
        """WATCHDOG=1 only while the engine loop advances: a hung engine gets us restarted."""
        interval = sdnotify.watchdog_interval_s()
        if interval is None:
            return
        while True:
            if self.service.readiness.engine_progressing(max_age_s=max(interval, 1.0)):
                sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            sdnotify.notify(f"STATUS={status_line(self.service)}")


def status_line(service) -> str:
    """systemd's STATUS text: readiness, and the engine's load when a model is loaded (none mid-swap)."""
    ok, body = service.readiness.ready()
    state = "serving" if ok else "not ready: " + "; ".join(body["reasons"])
    stats = service.engine_stats()
    if stats is None:
        return state
    return f"{state}; running {stats.num_running}, waiting {stats.num_waiting}, KV {stats.kv_usage:.0%}"


def server_tls(config: Config):
    """The HTTPS listener's certificate, checked against the names this host answers to."""
    from appliance.config import is_loopback
    from appliance.ops.certificates import host_names
    from appliance.ops.tls import ServerTLS

    names = host_names() + list(config.tls_server_names)
    if config.host not in ("0.0.0.0", "::") and not is_loopback(config.host):
        names.append(config.host)
    elif is_loopback(config.host):
        names += ["localhost", config.host]  # an operator's certificate served on loopback (tests, a local proxy)
    return ServerTLS(config.tls_cert_path, config.tls_key_path, config.tls_client_ca, names)


def build_control_plane(service, telemetry, listeners=None):
    from appliance.control.audit import AuditLog
    from appliance.control.events import EventHub
    from appliance.ops.health import load_report
    from appliance.control.logbuffer import LogBuffer
    from appliance.models.store import ModelStore
    from appliance.control.monitor import HealthSummary, Monitor
    from appliance.control.peer import AccessPolicy
    from appliance.control.tasks import Tasks
    from appliance.fleet.fleet_view import FleetView

    config = service.config
    hub = EventHub()
    tasks = Tasks(hub)
    monitor = Monitor(service, tasks, telemetry, HealthSummary(config.state_dir, load_report), hub, listeners=listeners)
    return ControlPlane(service, ModelStore(config.models_dir, config.hf_endpoint), monitor, tasks, hub,
                        AuditLog(config.state_dir / "audit.log"), LogBuffer(), AccessPolicy(config.control_group),
                        FleetView(config))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bound_port(server: uvicorn.Server | None) -> int | None:
    if server is None or not getattr(server, "servers", None):
        return None
    for s in server.servers:
        for sock in s.sockets:
            return sock.getsockname()[1]
    return None
