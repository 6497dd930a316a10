"""What the subcommands share: the error they exit with, common options, the control client, table output."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from appliance.config import DEV_STATE_DIR


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


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
