"""`appliance fleet …`: several boxes behind one gateway (docs/FLEET.md).

  fleet gateway --listen 0.0.0.0:443 --tls-cert C --tls-key K   set up smg as appliance-gateway.service (root)
  fleet join URL [--advertise URL]                                 put this box behind the gateway at URL
  fleet leave                                                      take it out: no new requests, in-flight ones finish
  fleet status                                                     this box's membership; every box, where a gateway runs
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from appliance.cli.common import CliError, control_options, open_client, print_json, show_help


def add_fleet_commands(commands) -> None:
    fleet = commands.add_parser("fleet", help="several appliances behind one gateway (smg): set it up, join, leave")
    fleet.set_defaults(handler=lambda args: show_help(fleet))
    sub = fleet.add_subparsers(title="fleet commands", metavar="COMMAND")

    gateway = sub.add_parser("gateway", help="set up the gateway (smg) on this box as appliance-gateway.service")
    gateway.add_argument("--listen", default="0.0.0.0:443", metavar="HOST:PORT",
                         help="where clients reach the fleet (default 0.0.0.0:443)")
    gateway.add_argument("--tls-cert", type=Path, help="PEM certificate chain clients see (needed off loopback)")
    gateway.add_argument("--tls-key", type=Path, help="its private key")
    gateway.add_argument("--worker-ca", type=Path, action="append", default=[], metavar="PEM",
                         help="trust this CA (or a box's own certificate) for boxes joined over HTTPS; repeatable")
    gateway.add_argument("--metrics-port", type=int, default=29000, help="the gateway's metrics, on 127.0.0.1")
    gateway.add_argument("--health-interval", type=int, default=3, metavar="S", help="probe each box's /ready every S s")
    gateway.add_argument("--dry-run", action="store_true", help="print every change instead of making it")
    gateway.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)  # tests write under a folder
    gateway.set_defaults(handler=fleet_gateway)

    join = sub.add_parser("join", parents=[control_options()], help="register this box with the gateway at URL")
    join.add_argument("gateway_url", metavar="URL", help="the gateway's URL, e.g. https://llm.example.com")
    join.add_argument("--admin-key-file", type=Path,
                      help="the gateway's admin key (default: /etc/appliance/gateway-admin.key, or "
                           "$APPLIANCE_GATEWAY_ADMIN_KEY)")
    join.add_argument("--advertise", metavar="URL", help="how the gateway reaches this box (default: from the config)")
    join.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the gateway's probes")
    join.set_defaults(handler=fleet_join)

    leave = sub.add_parser("leave", parents=[control_options()],
                           help="take this box out: no new requests reach it, in-flight ones finish, then deregister")
    leave.set_defaults(handler=fleet_leave)

    status = sub.add_parser("status", parents=[control_options()], help="this box's membership, and every box")
    status.set_defaults(handler=fleet_status)


# -- the gateway -------------------------------------------------------------------------------


def fleet_gateway(args) -> int:
    from appliance.fleet.gateway_unit import (GatewayFiles, GatewaySettings, admin_key_for, gateway_description,
                                              unit_text)

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise CliError(f"--listen must be HOST:PORT, e.g. 0.0.0.0:443, got {args.listen!r}", 2)
    smg = Path(sys.executable).with_name("smg")
    absolute = lambda path: path.resolve() if path is not None else None  # noqa: E731 (the unit needs full paths)
    settings = GatewaySettings(host=host.strip("[]"), port=int(port), tls_cert=absolute(args.tls_cert),
                               tls_key=absolute(args.tls_key), worker_ca=[p.resolve() for p in args.worker_ca],
                               metrics_port=args.metrics_port,
                               health_interval_s=args.health_interval, smg=str(smg))
    try:
        settings.check()
    except ValueError as e:
        raise CliError(str(e), 2) from None
    for path in [p for p in (args.tls_cert, args.tls_key, *args.worker_ca) if p is not None]:
        if not path.exists():
            raise CliError(f"{path} does not exist", 2)
    if not args.dry_run and args.root == Path("/") and os.geteuid() != 0:
        raise CliError("setting up a systemd unit needs root: sudo appliance fleet gateway …", 1)
    files = GatewayFiles(args.root)
    admin_key = admin_key_for(files)
    change = Changes(args.dry_run)
    change.write(files.admin_key, admin_key + "\n", 0o640, group="appliance", secret=True)
    change.write(files.environment, f"SMG_ADMIN_KEY={admin_key}\n", 0o600, secret=True)
    change.write(files.unit, unit_text(settings), 0o644)
    change.write(files.description, json.dumps(gateway_description(settings, files), indent=2) + "\n", 0o644)
    if args.root == Path("/"):
        change.run(["systemctl", "daemon-reload"])
        change.run(["systemctl", "enable", "appliance-gateway.service"])
        change.run(["systemctl", "restart", "appliance-gateway.service"])  # started, or restarted with new settings
    print(f"The gateway listens on {settings.url.replace('127.0.0.1', settings.host)}; its admin key is in "
          f"{files.admin_key}.")
    print(f"On each box: sudo appliance fleet join {settings.scheme}://{socket.getfqdn()}:{settings.port} "
          "--admin-key-file FILE (copy the key there, 0600)")
    return 0


class Changes:
    """Every change the gateway setup makes goes through here, so --dry-run can print them all instead."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run

    def write(self, path: Path, text: str, mode: int, group: str | None = None, secret: bool = False) -> None:
        if self.dry_run:
            shown = "(a secret, not shown)\n" if secret else text
            print(f"would write {path} (mode {mode:o}{', group ' + group if group else ''}):\n{shown}")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        if group is not None and os.geteuid() == 0:
            import grp

            try:
                os.chown(tmp, 0, grp.getgrnam(group).gr_gid)
            except KeyError:
                pass  # no appliance group (yet): root alone reads it
        os.replace(tmp, path)

    def run(self, command: list[str]) -> None:
        if self.dry_run:
            print("would run:", " ".join(command))
            return
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise CliError(f"{' '.join(command)} failed: {done.stderr.strip() or done.stdout.strip()}")


# -- this box's membership ---------------------------------------------------------------------


def fleet_join(args) -> int:
    from appliance.config import ConfigError, load_config

    admin_key = read_admin_key(args.admin_key_file)
    worker_url = args.advertise
    if worker_url is None:
        try:
            worker_url = advertised_url(load_config(args.config))
        except ConfigError as e:
            raise CliError(str(e), 2) from None
    with open_client(args) as client:
        result = call(client.fleet_join, args.gateway_url, admin_key, worker_url, args.timeout)
    if args.json:
        print_json(result)
    else:
        print(f"Joined {args.gateway_url} as {worker_url}: the gateway probes /ready there and routes to it.")
    return 0


def fleet_leave(args) -> int:
    with open_client(args) as client:
        result = call(client.fleet_leave)
    if args.json:
        print_json(result)
    else:
        print(f"Left {result['left']} in {result['seconds']:.1f} s: {result['in_flight_at_leave']} requests were in "
              f"flight and finished here; no new ones come. Upgrade or stop it now; `appliance fleet join` brings it back.")
    return 0


def fleet_status(args) -> int:
    with open_client(args) as client:
        status = call(client.fleet)
    if args.json:
        print_json(status)
        return 0
    from appliance.cli.common import format_table

    membership = status["membership"]
    print(f"This box: behind {membership['gateway_url']} as {membership['worker_url']} since {membership['joined_at']}"
          if membership else "This box: not in a fleet.")
    gateway = status["gateway"]
    if gateway is None:
        return 0
    print(f"\nThe gateway on this box: {gateway['url']}" + (f" — {gateway['error']}" if gateway["error"] else ""))
    rows = [[b["host"] or "-", b["url"], "yes" if b["healthy"] else "NO", b["circuit"] or "-",
             _n(b["waiting"]), _n(b["running"]), _pct(b["kv_usage"]), _n(b["generation_tokens_per_s"], ".1f")]
            for b in gateway["boxes"]]
    print(format_table(["HOST", "URL", "HEALTHY", "CIRCUIT", "WAITING", "RUNNING", "KV", "TOK/S"], rows))
    return 0


def _n(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def call(fn, *args):
    from appliance.control.client import ControlError

    try:
        return fn(*args)
    except ControlError as e:
        raise CliError(e.message, 2 if e.status == 400 else 1) from None


def read_admin_key(path: Path | None) -> str:
    if path is None:
        if os.environ.get("APPLIANCE_GATEWAY_ADMIN_KEY"):
            return os.environ["APPLIANCE_GATEWAY_ADMIN_KEY"].strip()
        path = Path("/etc/appliance/gateway-admin.key")
    try:
        return path.read_text().strip()
    except OSError as e:
        raise CliError(f"cannot read the gateway's admin key from {path} ({e.strerror}): copy it from the gateway box "
                       "(/etc/appliance/gateway-admin.key) and give --admin-key-file", 2) from None


def advertised_url(config) -> str:
    """How the gateway reaches this box by default: HTTPS on its name where HTTPS listens, else plain HTTP."""
    if config.https_enabled:
        host = config.host if config.host not in ("0.0.0.0", "::") else socket.getfqdn()
        return f"https://{host}:{config.https_port}"
    return f"http://{config.http_host}:{config.port}"
