"""The gateway box's setup: smg's command line, its systemd unit, and the file the Fleet screen reads.

`appliance fleet gateway` writes, under /etc: the admin key (appliance/gateway-admin.key, 0640
root:appliance), an environment file holding it for the unit (appliance/gateway.env, 0600), the unit
(systemd/system/appliance-gateway.service) and appliance/gateway.json (where the admin API and the
gateway's metrics are, for `fleet join` on this box and the TUI's Fleet screen). The tests start
smg with the same command line the unit runs (smg_command).

What the command line asks of smg: cache-aware routing (requests with the same prompt prefix go to
the box that has it cached), a health check of every box's /ready every few seconds, retries onto
another box and circuit breakers (smg's defaults), its metrics on loopback only, TLS with the
operator's certificate, and a control-plane admin key for registering boxes. smg's data plane has
no key of its own: each box checks the client's API key against the shared key store.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from appliance.config import is_loopback

UNIT_NAME = "appliance-gateway.service"
DEFAULT_METRICS_PORT = 29000
ADMIN_KEY_ID = "appliance-fleet"


@dataclass
class GatewaySettings:
    host: str = "0.0.0.0"
    port: int = 443
    tls_cert: Path | None = None
    tls_key: Path | None = None
    worker_ca: list[Path] = field(default_factory=list)  # CAs of boxes that serve HTTPS with their own certificate
    metrics_port: int = DEFAULT_METRICS_PORT
    health_interval_s: int = 3
    health_failure_threshold: int = 2  # probes failed in a row before a box leaves the rotation
    policy: str = "cache_aware"
    smg: str = "/opt/appliance/bin/smg"

    def check(self) -> None:
        """ValueError naming the option when the settings cannot make a safe gateway."""
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_cert is None and not is_loopback(self.host):
            raise ValueError(f"--listen {self.host}:{self.port} is reachable from other machines: give --tls-cert and "
                             "--tls-key (API keys must not cross the network in clear text), or listen on 127.0.0.1 "
                             "behind your own TLS proxy")
        if not 1 <= self.health_interval_s <= 60:
            raise ValueError(f"--health-interval must be 1 to 60 seconds, got {self.health_interval_s}")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert is not None else "http"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


def smg_command(settings: GatewaySettings, admin_key: str, credentials: str | None = None) -> list[str]:
    """The smg command line for these settings (the unit passes the admin key through its environment file).

    `credentials`: a folder holding the certificate and key as `tls-cert` and `tls-key` (the unit's
    credentials, %d), used instead of their own paths.
    """
    command = [
        settings.smg, "launch",
        "--host", settings.host, "--port", str(settings.port),
        "--policy", settings.policy,
        "--health-check-endpoint", "/ready",
        "--health-check-interval-secs", str(settings.health_interval_s),
        "--health-failure-threshold", str(settings.health_failure_threshold),
        "--health-success-threshold", "1",
        "--prometheus-host", "127.0.0.1", "--prometheus-port", str(settings.metrics_port),
        "--control-plane-api-keys", f"{ADMIN_KEY_ID}:appliance fleet:admin:{admin_key}",
        "--disable-tokenizer-autoload",  # boxes render prompts themselves; smg only routes
        "--log-level", "info",
    ]
    if settings.tls_cert is not None:
        cert, key = (f"{credentials}/tls-cert", f"{credentials}/tls-key") if credentials else (settings.tls_cert,
                                                                                            settings.tls_key)
        command += ["--tls-cert-path", str(cert), "--tls-key-path", str(key)]
    if settings.worker_ca:
        command += ["--ca-cert-paths", *map(str, settings.worker_ca)]
    return command


def unit_text(settings: GatewaySettings) -> str:
    # The certificate's key is usually root's alone (certbot writes it 0600): systemd hands the service
    # a copy it may read (LoadCredential), so smg runs as the appliance user. Renewed: restart the unit.
    command = " ".join(_quote(part) for part in smg_command(settings, "${SMG_ADMIN_KEY}", credentials="%d"))
    credentials = (f"LoadCredential=tls-cert:{settings.tls_cert}\nLoadCredential=tls-key:{settings.tls_key}\n"
                   if settings.tls_cert is not None else "")
    bind = "AmbientCapabilities=CAP_NET_BIND_SERVICE\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n" \
        if settings.port < 1024 else "CapabilityBoundingSet=\n"
    return f"""# Written by `appliance fleet gateway`; run it again to change the settings.
[Unit]
Description=Appliance fleet gateway (smg, Shepherd Model Gateway): one endpoint for several appliances
Documentation=file:///opt/appliance/docs/FLEET.md
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
EnvironmentFile=/etc/appliance/gateway.env
{credentials}ExecStart={command}
Restart=on-failure
RestartSec=2
TimeoutStopSec=200
User=appliance
Group=appliance
{bind}NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""


def _quote(part: str) -> str:
    # systemd splits ExecStart like a shell: quote what holds spaces (the admin key's display name).
    return f'"{part}"' if " " in part else part


@dataclass
class GatewayFiles:
    """Where `fleet gateway` writes, under one root (/ on a real box; a temporary folder in tests)."""

    root: Path = Path("/")

    @property
    def admin_key(self) -> Path:
        return self.root / "etc/appliance/gateway-admin.key"

    @property
    def environment(self) -> Path:
        return self.root / "etc/appliance/gateway.env"

    @property
    def unit(self) -> Path:
        return self.root / "etc/systemd/system" / UNIT_NAME

    @property
    def description(self) -> Path:
        return self.root / "etc/appliance/gateway.json"


def admin_key_for(files: GatewayFiles) -> str:
    """The gateway's admin key: the one written before (so boxes that joined keep working), or a new one."""
    if files.admin_key.exists():
        return files.admin_key.read_text().strip()
    return secrets.token_urlsafe(32)


def gateway_description(settings: GatewaySettings, files: GatewayFiles) -> dict:
    """gateway.json: what `fleet join` on this box and the Fleet screen need to find the gateway."""
    return {"url": settings.url, "metrics_url": settings.metrics_url, "admin_key_file": str(files.admin_key),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()
                         if k != "worker_ca"}}


def read_gateway_description(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
