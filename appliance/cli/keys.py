"""`appliance keys ...`: through the control socket, or on the key store directly with --offline.

The socket is the normal way (the service audits every change). Offline (--offline or
--state-dir) works on the store itself (keys.db, or the fleet's PostgreSQL when the config names
one), so install.sh can make a key before the service runs. `keys migrate --to URL` copies a
box's keys.db into a fleet's PostgreSQL.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone

from appliance.cli.common import (CliError, control_options, dash, format_table, load_settings, open_client,
                           print_json, short_time, show_help, store_options)


UNSET = object()  # default of the limit options, so `--rpm none` (None: no limit) differs from not given


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


def network_list(text: str) -> list[str]:
    from appliance.keys.networks import parse_networks

    try:
        return parse_networks([n.strip() for n in text.split(",") if n.strip()])
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("allowed_networks", "--networks")) from None


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
    parser.add_argument("--priority", type=int, metavar="N",
                        help="its requests' default priority: lower runs first (default 0; a request may say its own)")
    parser.add_argument("--weight", type=float, metavar="W",
                        help="its share of the engine among keys of equal priority, against theirs (default 1)")
    networks = parser.add_mutually_exclusive_group()
    networks.add_argument("--networks", type=network_list, metavar="CIDR,…",
                          help="only from these client networks, e.g. 10.0.0.0/8,203.0.113.7 (default: any address)")
    if updating:
        networks.add_argument("--any-network", action="store_true", help="allow every client address")


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
    if args.networks is not None:
        fields["allowed_networks"] = args.networks
    elif getattr(args, "any_network", False):
        fields["allowed_networks"] = None
    for name in ("priority", "weight"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if getattr(args, "new_name", None) is not None:
        fields["name"] = args.new_name
    return fields


# -- where the keys are ------------------------------------------------------------------------


class OfflineKeys:
    """The key store itself, with the control client's method names and JSON-shaped answers."""

    def __init__(self, args):
        from appliance.keys import KeyStore, KeyStoreError

        location = load_settings(args).keys_location
        try:
            self.store = KeyStore(location)
        except KeyStoreError as e:
            raise CliError(
                f"{e}\n  Use --state-dir DIR for a folder you can write, or run as the service's user"
                f" (sudo -u appliance appliance keys ...) or root."
            ) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.store.close()

    def call(self, fn, *args, **kwargs):
        from appliance.keys import KeyNotFound

        try:
            return fn(*args, **kwargs)
        except KeyNotFound:
            raise CliError(unknown_key(args[0])) from None
        except ValueError as e:
            raise CliError(str(e), 2) from None

    def keys(self) -> list[dict]:
        return [r.to_dict() for r in self.store.list()]

    def create_key(self, name: str, **fields) -> dict:
        record, api_key = self.call(self.store.create, name, **fields)
        return {"key": record.to_dict(), "api_key": api_key}

    def revoke_key(self, key_id: str) -> dict:
        return self.call(self.store.revoke, key_id).to_dict()

    def update_key(self, key_id: str, **fields) -> dict:
        return self.call(self.store.update, key_id, **fields).to_dict()

    def key_usage(self, key_id: str, days: int) -> list[dict]:
        if self.store.get(key_id) is None:
            raise CliError(unknown_key(key_id))
        return [d.to_dict() for d in self.store.usage(key_id, days)]


class OnlineKeys:
    """The control socket; datetimes travel as ISO text."""

    def __init__(self, args):
        self.client = open_client(args)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()

    def __getattr__(self, name):
        method = getattr(self.client, name)

        def call(*args, **fields):
            from appliance.control.client import ControlError

            fields = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in fields.items()}
            try:
                return method(*args, **fields)
            except ControlError as e:
                raise CliError(e.message, 2 if e.status == 400 else 1) from None

        return call


def key_source(args):
    return OfflineKeys(args) if args.offline or args.state_dir is not None else OnlineKeys(args)


# -- the commands --------------------------------------------------------------------------------


def add_keys_commands(commands) -> None:
    keys = commands.add_parser("keys", help="create, list, revoke and update API keys")
    keys.set_defaults(handler=lambda args: show_help(keys))
    sub = keys.add_subparsers(title="key commands", metavar="COMMAND")
    common = key_options()

    create = sub.add_parser("create", parents=[common], help="create a key (its secret is shown once)")
    create.add_argument("name", help="who or what the key is for")
    add_limit_options(create, updating=False)
    create.set_defaults(handler=keys_create)

    sub.add_parser("list", parents=[common], help="list keys (never their secrets)").set_defaults(handler=keys_list)

    revoke = sub.add_parser("revoke", parents=[common], help="revoke a key: it stops working at once")
    revoke.add_argument("key_id", metavar="ID")
    revoke.set_defaults(handler=keys_revoke)

    update = sub.add_parser("update", parents=[common], help="change a key's name, limits, expiry, models or networks")
    update.add_argument("key_id", metavar="ID")
    update.add_argument("--name", dest="new_name", help="new name")
    add_limit_options(update, updating=True)
    update.set_defaults(handler=keys_update)

    usage = sub.add_parser("usage", parents=[common], help="a key's usage per day")
    usage.add_argument("key_id", metavar="ID")
    usage.add_argument("--days", type=int, default=30, help="how many days back (default: 30)")
    usage.set_defaults(handler=keys_usage)

    migrate = sub.add_parser("migrate", parents=[store_options()],
                             help="copy this box's keys and usage into a fleet's PostgreSQL (keys_database_url)")
    migrate.add_argument("--to", required=True, metavar="URL", dest="to_url",
                         help="postgresql://USER@HOST/DB (the password in ~/.pgpass or PGPASSWORD)")
    migrate.set_defaults(handler=keys_migrate)


def key_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False, parents=[store_options(), control_options()], conflict_handler="resolve")
    options.add_argument("--offline", action="store_true",
                         help="work on keys.db directly instead of through the running service (implied by --state-dir)")
    return options


def keys_create(args) -> int:
    fields = limits_from_args(args, updating=False)
    fields.setdefault("budget_period", "day")
    with key_source(args) as keys:
        created = keys.create_key(args.name, **fields)
    if args.json:
        print_json(created)
    else:
        print(format_table(*key_rows([created["key"]])))
        print(f"\nAPI key: {created['api_key']}")
        print("Save it now: the secret cannot be shown again.")
    return 0


def keys_list(args) -> int:
    with key_source(args) as keys:
        records = keys.keys()
    if args.json:
        print_json({"keys": records})
    elif not records:
        print("No keys yet. Create one with: appliance keys create NAME")
    else:
        print(format_table(*key_rows(records)))
    return 0


def keys_revoke(args) -> int:
    with key_source(args) as keys:
        record = keys.revoke_key(args.key_id)
    if args.json:
        print_json(record)
    else:
        print(f"Revoked key {record['id']} ({record['name']}); requests with it now get 403, and its stored "
              "responses are deleted.")
    return 0


def keys_update(args) -> int:
    fields = limits_from_args(args, updating=True)
    if not fields:
        raise CliError("nothing to change: give at least one of --name, --rpm, --tpm, --budget-tokens, "
                       "--budget-period, --expires-in-days, --expires-at, --no-expiry, --models, --all-models, "
                       "--networks, --any-network, --priority, --weight", 2)
    with key_source(args) as keys:
        record = keys.update_key(args.key_id, **fields)
    if args.json:
        print_json(record)
    else:
        print(format_table(*key_rows([record])))
    return 0


def keys_usage(args) -> int:
    if args.days < 1:
        raise CliError(f"--days must be at least 1, got {args.days}", 2)
    with key_source(args) as keys:
        days = keys.key_usage(args.key_id, days=args.days)
    if args.json:
        print_json({"key_id": args.key_id, "days": days})
    elif not days:
        print(f"Key {args.key_id} has no usage in the last {args.days} days.")
    else:
        rows = [[d["day"], d["requests"], d["prompt_tokens"], d["completion_tokens"]] for d in days]
        print(format_table(["DAY", "REQUESTS", "PROMPT TOKENS", "COMPLETION TOKENS"], rows))
    return 0


def keys_migrate(args) -> int:
    from appliance.keys import KeyStore, KeyStoreError
    from appliance.keys.store import is_database_url

    if not is_database_url(args.to_url):
        raise CliError(f"--to must be a PostgreSQL URL such as postgresql://appliance@db.internal/keys, got "
                       f"{args.to_url!r}", 2)
    source = load_settings(args).keys_db_path
    if not source.exists():
        raise CliError(f"no key store at {source}: nothing to copy (--state-dir names another folder)")
    try:
        with KeyStore(source) as local:
            keys, usage = local.export_rows()
        with KeyStore(args.to_url) as shared:
            added_keys, added_days = shared.import_rows(keys, usage)
            where = shared.location
    except KeyStoreError as e:
        raise CliError(str(e)) from None
    result = {"from": str(source), "to": where, "keys": len(keys), "keys_added": added_keys,
              "usage_days": len(usage), "usage_days_added": added_days}
    if args.json:
        print_json(result)
    else:
        print(f"Copied {added_keys} of {len(keys)} keys and {added_days} of {len(usage)} days of usage from {source} "
              f"to {where} (what was there already is left as it was).")
        print(f'Next, on every box: keys_database_url = "{args.to_url}" in /etc/appliance/config.toml, then '
              "systemctl restart appliance.")
    return 0


def unknown_key(key_id: str) -> str:
    return f"no key with id {key_id!r}; `appliance keys list` shows the ids"


def key_rows(records: list[dict]) -> tuple[list[str], list[list]]:
    headers = ["ID", "NAME", "STATUS", "CREATED", "EXPIRES", "RPM", "TPM", "BUDGET", "MODELS", "NETWORKS", "LAST USED"]
    rows = [
        [
            r["id"], r["name"], r["status"], short_time(r["created_at"]), short_time(r["expires_at"], "never"),
            dash(r["rpm_limit"]), dash(r["tpm_limit"]),
            f"{r['budget_tokens']}/{r['budget_period']}" if r["budget_tokens"] is not None else "-",
            ",".join(r["allowed_models"]) if r["allowed_models"] is not None else "all",
            ",".join(r["allowed_networks"]) if r.get("allowed_networks") is not None else "any",
            short_time(r["last_used_at"], "never"),
        ]
        for r in records
    ]
    return headers, rows
