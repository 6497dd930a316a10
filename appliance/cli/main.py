"""`appliance`: the command line.

`status`, `keys` and `models` talk to the service over its control socket (appliance.control.client);
`keys --offline` works on the key store directly, so a key can be made before the service exists. Commands that need heavy imports (`serve` pulls in torch) are
imported only when they run: `appliance keys ...` stays fast and works without a GPU stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from appliance.cli.common import CliError

# Subcommands whose module defines add_arguments(parser) and run(args); imported only when chosen.
LAZY_COMMANDS = {
    "serve": ("appliance.serve", "run the OpenAI-compatible service"),
    "bench": ("appliance.cli.bench", "load-test a running service over HTTP (like `vllm bench serve`)"),
    "health": ("appliance.ops.health", "check the driver, GPUs, disk and the service; exit 1 when something is wrong"),
    "tls": ("appliance.cli.tls", "the HTTPS certificate: generate one for this host, or show the configured one"),
    "tui": ("tui.app", "the operator's dashboard: live telemetry, models, keys, health and logs"),
}


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
    from appliance.cli.fleet import add_fleet_commands
    from appliance.cli.keys import add_keys_commands
    from appliance.cli.models import add_models_commands, add_status_command
    from appliance.cli.ops import add_ops_commands

    add_status_command(commands)
    add_keys_commands(commands)
    add_models_commands(commands)
    add_ops_commands(commands)
    add_fleet_commands(commands)
    return parser
