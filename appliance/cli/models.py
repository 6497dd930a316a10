"""`appliance status` and `appliance models ...`, through the control socket.

Long operations (pull, import, load) start a task in the service; the command follows it and
prints its progress until it ends (Ctrl-C stops following, not the task).
"""

from __future__ import annotations

import sys
from pathlib import Path

from appliance.cli.common import CliError, control_options, format_table, load_settings, open_client, print_json, show_help, store_options
from appliance.cli.plan import add_plan_command
from appliance.control.execution_text import execution, prefix_caching_off, state_slots


def call(args, method: str, *params, **fields):
    from appliance.control.client import ControlError

    with open_client(args) as client:
        try:
            return getattr(client, method)(*params, **fields)
        except ControlError as e:
            raise CliError(e.message, 2 if e.status == 400 else 1) from None


# -- status --------------------------------------------------------------------------------------


def add_status_command(commands) -> None:
    status = commands.add_parser("status", parents=[control_options()], help="the service at a glance: model, "
                                 "queue, KV cache, latency, GPUs, host, health")
    status.set_defaults(handler=show_status)


def show_status(args) -> int:
    snapshot = call(args, "status")
    if args.json:
        print_json(snapshot)
    else:
        print(format_status(snapshot, call(args, "cost")))
    return 0 if snapshot["service"]["ready"] else 1


def format_status(s: dict, cost: dict | None = None) -> str:
    """The snapshot in lines; `cost` (/v1/cost) adds each model's figures for today."""
    service, engine, host = s["service"], s["engine"], s.get("host") or {}
    ready = "ready" if service["ready"] else "NOT READY: " + "; ".join(service["ready_reasons"])
    lines = [
        f"service   {service['state']}, {ready}; up {duration(service['uptime_s'])}",
        f"model     {service['model']} ({service['loaded_model'] or 'none loaded'})",
        f"engine    {execution(engine.get('execution')) or 'no model loaded'}{encoder_budget(engine.get('execution'))}",
        f"queue     {engine['running']} running, {engine['waiting']} waiting; {engine['requests_per_s']:.2f} req/s, "
        f"{engine['errors']} errors, {engine['preemptions']} preemptions",
        f"kv cache  {engine['kv_usage']:.0%} ({engine['kv_blocks_used']}/{engine['kv_blocks_total']} blocks"
        f"{kv_layout(engine.get('execution'))}{state_slots(engine)}), {prefix_text(engine)}",
        f"tokens/s  {engine['prompt_tokens_per_s']:.1f} in, {engine['generation_tokens_per_s']:.1f} out",
        f"latency   TTFT p50 {ms(engine['ttft_s']['p50'])} p99 {ms(engine['ttft_s']['p99'])}; "
        f"ITL p50 {ms(engine['itl_s']['p50'])} p99 {ms(engine['itl_s']['p99'])}",
    ]
    lines.extend(engine_lines(s.get("engines") or []))
    lines.extend(cost_lines(cost or s.get("cost")))
    lines.extend(listener_lines(s.get("listeners")))
    if service.get("task"):
        task = service["task"]
        lines.append(f"task      {task['kind']} {task['target']}: {task['message'] or task['stage']}")
    if not s["gpus"]:
        lines.append(f"gpu       {s['gpu_status']}")
    for gpu in s["gpus"]:
        lines.append(f"gpu {gpu['index']}     {gpu['name']}: {percent(gpu['utilization_pct'], 100)} busy, "
                     f"{gib(gpu['memory_used_bytes'])}/{gib(gpu['memory_total_bytes'])} GiB, "
                     f"{gpu['temperature_c']} °C, {gpu['power_w']} W"
                     + (f", throttled: {', '.join(gpu['throttle_reasons'])}" if gpu.get("throttle_reasons") else ""))
    if host:
        lines.append(f"host      cpu {percent(host.get('cpu_pct'), 100)}, memory {gib(host['memory_used_bytes'])}/"
                     f"{gib(host['memory_total_bytes'])} GiB")
    health = s.get("health") or {}
    if health.get("checked_at"):
        verdict = "ok" if health["ok"] else "PROBLEMS"
        lines.append(f"health    {verdict} (checked {health['checked_at']})")
        lines.extend(f"          {p}" for p in health["problems"])
    return "\n".join(lines)


def prefix_text(engine: dict) -> str:
    """"prefix hits 34%", or why prefix caching is off ("prefix caching off: num_state_snapshots is 0, ...")."""
    off = prefix_caching_off(engine)
    return f"prefix caching {off}" if off else f"prefix hits {percent(engine['prefix_cache_hit_rate'])}"


def kv_layout(path: dict | None) -> str:
    """How the KV cache's layers share its blocks, where the engine says ("; 1 full + 5 sliding window 1024 groups …")."""
    return f"; {path['kv_cache']}" if path and path.get("kv_cache") else ""


def encoder_budget(path: dict | None) -> str:
    """For a model that takes images, how many of their placeholder tokens a step encodes at most (the engine's
    max_num_encoder_tokens: ", encoding at most 2,048 image tokens a step")."""
    budget = path.get("max_num_encoder_tokens") if path else None
    return f", encoding at most {budget:,} image tokens a step" if budget else ""


def engine_lines(engines: list[dict]) -> list[str]:
    """With several models loaded, a line for each: its queue, KV cache, tokens/s and TTFT."""
    if len(engines) < 2:
        return []
    return [f"  {e['model']}{' (default)' if e['default'] else ''}: {e['running']} running, {e['waiting']} waiting; "
            f"kv {e['kv_usage']:.0%}{state_slots(e)}; {e['generation_tokens_per_s']:.1f} tok/s out; "
            f"TTFT p50 {ms(e['ttft_s']['p50'])}" for e in engines]


def cost_lines(cost: dict | None) -> list[str]:
    """What the box costs per million tokens: each window, then each model today."""
    from appliance.control.cost_text import NOT_PRICED, WINDOW_NAMES, money, window_text

    if not cost:
        return []
    if not cost["configured"]:
        return [f"cost      {NOT_PRICED}"]
    currency, reference = cost["currency"], cost["reference_price_per_million"]
    head = f"cost      {money(cost['gpu_cost_per_hour'], currency)}/h"
    if reference is not None:
        head += (f"; hosted price {money(reference, currency)}/M tokens: break-even at "
                 f"{cost['break_even_tokens_per_day'] / 1e6:,.1f}M tokens a day")
    lines = [head] + [f"  {WINDOW_NAMES[name]:<9} {window_text(window, currency)}"
                      for name, window in cost["windows"].items()]
    for model, windows in (cost.get("models") or {}).items():
        if "today" in windows:
            lines.append(f"  {model} today: {window_text(windows['today'], currency)}")
    return lines


def listener_lines(listeners: dict | None) -> list[str]:
    """Where clients connect, and the certificate they should see (its fingerprint) and trust."""
    if not listeners:
        return []
    urls = ", ".join(u for u in (listeners["https"], listeners["http"]) if u)
    lines = [f"listen    {urls}; {listeners['connections']} of {listeners['max_connections']} connections open"]
    tls = listeners.get("tls")
    if tls:
        trust = f"clients trust {tls['trust_file']}" if tls["trust_file"] else f"issued by {tls['issuer']}"
        mtls = f"; client certificates from {listeners['client_ca']}" if listeners.get("client_ca") else ""
        lines.append(f"tls       SHA-256 {tls['fingerprint_sha256']}")
        lines.append(f"          {trust}; valid until {tls['not_after'][:10]}{mtls}")
    return lines


def duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def percent(value, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value / scale:.0%}"


def ms(value) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def gib(value) -> str:
    return "-" if value is None else f"{value / 2**30:.1f}"


# -- models --------------------------------------------------------------------------------------


def add_models_commands(commands) -> None:
    models = commands.add_parser("models", help="list, pull, import, delete, load, unload and pin models")
    models.set_defaults(handler=lambda args: show_help(models))
    sub = models.add_subparsers(title="model commands", metavar="COMMAND")
    common = control_options()

    sub.add_parser("list", parents=[common], help="the models in the store").set_defaults(handler=models_list)

    pull = sub.add_parser("pull", parents=[common], help="download a model from the Hugging Face hub at a pinned commit")
    pull.add_argument("repo", help="repository id, e.g. HuggingFaceTB/SmolLM2-360M-Instruct")
    pull.add_argument("--revision", default="main", help="branch, tag or commit (recorded as the commit; default main)")
    pull.add_argument("--name", help="name in the store (default: from the repository)")
    pull.set_defaults(handler=models_pull)

    imp = sub.add_parser("import", parents=[common], help="copy a local model folder or convert a .gguf file into the store")
    imp.add_argument("path", type=Path, help="a Hugging Face model folder or a .gguf file (readable by the service)")
    imp.add_argument("--name", help="name in the store (default: from the path)")
    imp.set_defaults(handler=models_import)

    delete = sub.add_parser("delete", parents=[common], help="delete a model from the store (not the loaded one)")
    delete.add_argument("name")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    delete.set_defaults(handler=models_delete)

    load = task_command(sub, common, "load", models_load, "load a model next to the loaded ones, or in place of one "
                        "(--replace: a hot swap, requests keep flowing)")
    load.add_argument("--replace", metavar="OLD", help="the loaded model it replaces (its names then reach NAME)")
    task_command(sub, common, "unload", models_unload, "let a loaded model finish its requests, then stop it")

    pin = sub.add_parser("pin", parents=[common], help="never evict a model to make room (until a restart; "
                         "pinned = true in [models.NAME] keeps it)")
    pin.add_argument("name")
    pin.add_argument("--off", action="store_true", help="unpin: it may be evicted when idle")
    pin.set_defaults(handler=models_pin)

    add_plan_command(sub)

    install = sub.add_parser("install-default", parents=[store_options()],
                             help="install the embedded default model (SmolLM2-135M) without the service")
    install.set_defaults(handler=models_install_default)


def task_command(sub, common, name: str, handler, help_text: str):
    """A command on one model that runs as a task in the service, followed to its end unless --no-wait."""
    command = sub.add_parser(name, parents=[common], help=help_text)
    command.add_argument("name")
    command.add_argument("--no-wait", action="store_true", help=f"start the {name} and return")
    command.set_defaults(handler=handler)
    return command


def models_list(args) -> int:
    answer = call(args, "models")
    if args.json:
        print_json(answer)
        return 0
    if not answer["models"]:
        print("No models in the store. Add one: appliance models pull REPO or appliance models import PATH")
        return 0
    rows = [[m["name"], pool_state(m), gib(m["size_bytes"]) + " GiB" if m.get("size_bytes") else "-",
             gib((m["memory"] or {}).get("total_bytes")) + " GiB" if m["memory"] else "-",
             m.get("architecture") or "-", m.get("dtype") or "-", m.get("source") or m.get("path") or "-",
             (m.get("revision") or "-")[:12]] for m in answer["models"]]
    print(format_table(["NAME", "STATE", "SIZE", "MEMORY", "ARCHITECTURE", "DTYPE", "SOURCE", "REVISION"], rows))
    memory = answer["memory"]
    budget = f" of a {gib(memory['budget_bytes'])} GiB budget" if memory["budget_bytes"] else ""
    print(f"memory: {gib(sum(memory['used_bytes'].values()))} GiB planned for {len(memory['used_bytes'])} loaded "
          f"model(s){budget}, {gib(memory['free_bytes'])} GiB free")
    return 0


def pool_state(model: dict) -> str:
    """resident / loading / on_demand / stored, with default, pinned and idle time."""
    marks = [m for m in ("default", "pinned") if model.get(m)]
    if model.get("idle_s") is not None and not model.get("default"):
        marks.append(f"idle {duration(model['idle_s'])}")
    if model.get("load_error"):
        marks.append("last load failed")
    return model["state"] + (f" ({', '.join(marks)})" if marks else "")


def models_pull(args) -> int:
    return follow(args, call(args, "pull_model", args.repo, args.revision, args.name))


def models_import(args) -> int:
    return follow(args, call(args, "import_model", str(args.path.resolve()), args.name))


def models_load(args) -> int:
    return follow_unless(args, call(args, "load_model", args.name, args.replace))


def models_unload(args) -> int:
    return follow_unless(args, call(args, "unload_model", args.name))


def follow_unless(args, task: dict) -> int:
    """Follow a task to its end, unless --no-wait."""
    if not args.no_wait:
        return follow(args, task)
    print_json(task) if args.json else print(f"started {task['id']}: follow it with appliance status")
    return 0


def models_pin(args) -> int:
    answer = call(args, "pin_model", args.name, not args.off)
    if args.json:
        print_json(answer)
    else:
        print(f"{answer['name']} is {'pinned: never evicted' if answer['pinned'] else 'unpinned: evicted when idle and room is needed'}")
    return 0


def models_delete(args) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(f"deleting {args.name} needs confirmation: add --yes", 2)
        if input(f"Delete the model {args.name} and its files? [y/N] ").strip().lower() not in ("y", "yes"):
            print("Not deleted.")
            return 1
    answer = call(args, "delete_model", args.name)
    if args.json:
        print_json(answer)
    else:
        print(f"Deleted {answer['deleted']}.")
    return 0


def follow(args, task: dict) -> int:
    """Print a task's progress events until it ends; exit 0 when it is done, 1 when it failed."""
    from appliance.control.client import ControlError

    shown = None
    with open_client(args) as client:
        try:
            for event, data in client.events():
                if event == "snapshot":  # about once a second: also catches a task that ended before we listened
                    data = client.task(task["id"])
                elif data.get("id") != task["id"]:
                    continue
                line = progress_line(data)
                if line != shown and not args.json:
                    print(line, file=sys.stderr, flush=True)
                    shown = line
                if data["state"] != "running":
                    task = data
                    break
        except ControlError as e:
            raise CliError(f"lost the service while following {task['id']}: {e.message}") from None
    if args.json:
        print_json(task)
    elif task["state"] == "done":
        print(f"{task['kind']} {task['target']}: done")
    else:
        print(f"{task['kind']} {task['target']} failed: {task['error']}", file=sys.stderr)
    return 0 if task["state"] == "done" else 1


def progress_line(task: dict) -> str:
    fraction = f"{task['fraction']:.0%} " if task.get("fraction") is not None else ""
    sizes = ""
    if task.get("bytes_total"):
        sizes = f" ({gib(task.get('bytes_done') or 0)}/{gib(task['bytes_total'])} GiB)"
    return f"[{task['stage']}] {fraction}{task['message']}{sizes}"


def models_install_default(args) -> int:
    from appliance.models.default_model import MODEL_NAME, DefaultModelError, install_default_model

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
