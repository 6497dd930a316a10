"""`appliance ops …`: what an operator installs next to Prometheus and Grafana, from the package.

`appliance ops export-dashboards DIR` writes the alert rules (appliance.rules.yml, for Prometheus's
rule_files) and the Grafana dashboard (appliance.grafana.json, to import) shipped in appliance/ops/dashboards.
"""

from __future__ import annotations

import argparse
from importlib.resources import files
from pathlib import Path

from appliance.cli.common import CliError, print_json, show_help

SHIPPED = ("appliance.rules.yml", "appliance.grafana.json")


def add_ops_commands(commands) -> None:
    ops = commands.add_parser("ops", help="alert rules and dashboards for Prometheus and Grafana",
                              description="What an operator installs next to Prometheus and Grafana.")
    sub = ops.add_subparsers(title="ops commands", metavar="COMMAND")
    export = sub.add_parser("export-dashboards", help="write the Prometheus alert rules and the Grafana dashboard",
                            description="Write appliance.rules.yml (Prometheus rule_files) and appliance.grafana.json "
                                        "(Grafana: Dashboards > Import) into DIR.")
    export.add_argument("dir", type=Path, metavar="DIR", help="the folder to write them to (made if missing)")
    export.add_argument("--force", action="store_true", help="replace files of the same name already there")
    export.add_argument("--json", action="store_true", help="machine-readable output")
    export.set_defaults(handler=export_dashboards)
    ops.set_defaults(handler=lambda args: show_help(ops))


def export_dashboards(args: argparse.Namespace) -> int:
    target: Path = args.dir
    existing = [name for name in SHIPPED if (target / name).exists()]
    if existing and not args.force:
        raise CliError(f"{', '.join(str(target / n) for n in existing)} already exist(s): "
                       "pass --force to replace, or choose another DIR")
    try:
        target.mkdir(parents=True, exist_ok=True)
        written = []
        for name in SHIPPED:
            (target / name).write_bytes((files("appliance.ops") / "dashboards" / name).read_bytes())
            written.append(str(target / name))
    except OSError as e:
        raise CliError(f"cannot write to {target}: {e.strerror or e}") from None
    if args.json:
        print_json({"written": written})
    else:
        print("\n".join(f"wrote {path}" for path in written))
        print("Prometheus: add appliance.rules.yml to rule_files (and a scrape job for 127.0.0.1:9100); "
              "Grafana: Dashboards > New > Import the JSON.")
    return 0
