"""`appliance`: the command line.

`status`, `keys` and `models` talk to the service over its control socket (appliance.control_client);
`keys --offline` works on the key store directly, so a key can be made before the service exists. Commands that need heavy imports (`serve` pulls in torch) are
imported only when they run: `appliance keys ...` stays fast and works without a GPU stack.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

# Subcommands whose module defines add_arguments(parser) and run(args); imported only when chosen.
LAZY_COMMANDS = {
    "serve": ("appliance.serve", "run the OpenAI-compatible service"),
    "bench": ("appliance.cli.bench", "load-test a running service over HTTP (like `vllm bench serve`)"),
    "health": ("appliance.ops.health", "check the driver, GPUs, disk and the service; exit 1 when something is wrong"),
    "tui": ("tui.app", "the operator's dashboard: live telemetry, models, keys, health and logs"),
}


DEV_STATE_DIR = Path.home() / ".local" / "state" / "appliance"  # where `appliance serve --dev` keeps its state


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.handler(args) or 0
    except CliError as e:
        print(f"appliance: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appliance", description="A GPU inference appliance.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, (module_name, help_text) in LAZY_COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if argv[:1] == [name]:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(handler=module.run)
    from appliance.cli.keys import add_keys_commands
    from appliance.cli.models import add_models_commands, add_status_command

    add_status_command(commands)
    add_keys_commands(commands)
    add_models_commands(commands)
    return parser


# -- shared options ----------------------------------------------------------------------------


def store_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", type=Path, help="folder holding keys.db (default: from the config, /var/lib/appliance)")
    common.add_argument("--config", type=Path, help="config file (default: /etc/appliance/config.toml if present)")
    common.add_argument("--dev", action="store_true", help=f"use the state of `appliance serve --dev` ({DEV_STATE_DIR})")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    return common


def load_settings(args):
    from appliance.config import ConfigError, load_config

    state_dir = args.state_dir or (DEV_STATE_DIR if args.dev else None)
    try:
        return load_config(args.config, {"state_dir": state_dir})
    except ConfigError as e:
        raise CliError(str(e), code=2) from None


def control_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", type=Path, help="the service's control socket (default: from the config, "
                                                     "/run/appliance/control.sock)")
    common.add_argument("--config", type=Path, help="config file (default: /etc/appliance/config.toml if present)")
    common.add_argument("--dev", action="store_true", help="talk to `appliance serve --dev`")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    return common


def open_client(args):
    from appliance.control.client import ControlClient, resolve_socket

    socket = args.socket
    if socket is None and args.config is not None:
        socket = load_settings(args).control_socket
    return ControlClient(resolve_socket(socket, args.dev))


def show_help(parser: argparse.ArgumentParser) -> int:
    """A command group given without its subcommand."""
    parser.print_help(sys.stderr)
    return 2


def short_time(value: str | None, missing: str = "-") -> str:
    """A key record's ISO time (UTC, as the key store writes it) as 2026-11-22 13:56."""
    from appliance.keys.records import parse_dt

    return parse_dt(value).strftime("%Y-%m-%d %H:%M") if value is not None else missing


def dash(value) -> str:
    return str(value) if value is not None else "-"


def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def print_json(data) -> None:
    print(json.dumps(data, indent=2))
