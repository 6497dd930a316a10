"""`appliance health`: is this box fit to serve? One function per check, results kept for the TUI.

Each check returns a `Check` with a status:
  ok    all is well
  warn  worth a look, not broken (exit code stays 0)
  fail  something is wrong (exit code 1)
  n/a   does not apply here (no NVIDIA GPU, no driver pinned, no health key)

The canary goes through the public API with the internal key `appliance-health`, whose secret
install.sh keeps in <state_dir>/health.key (mode 0640, owner appliance). Without that file the
check falls back to /ready, which itself needs a recent 1-token canary inside the service.

No heavy imports (no torch): it runs every minute from appliance-health.timer.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from appliance.ops.checks import FAIL, NA, OK, WARN, Check, Report
from appliance.config import Config, is_loopback
from appliance.ops.gpu_checks import check_cuda, check_driver, check_nvml

HEALTH_KEY_NAME = "health.key"
RESULTS_NAME = "health.json"
MIN_FREE_BYTES = 2 << 30  # below this: fail
WARN_FREE_BYTES = 10 << 30  # below this: warn
MIN_FREE_FRACTION = 0.05
CERT_WARN_DAYS = 14  # a certificate that expires sooner: warn (certbot renews at 30 days left)


# -- disk --------------------------------------------------------------------------------------


def check_disk(path: Path, min_free_bytes: int = MIN_FREE_BYTES, warn_free_bytes: int = WARN_FREE_BYTES) -> Check:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    free_gib = usage.free / (1 << 30)
    details = {"path": str(path), "free_bytes": usage.free, "total_bytes": usage.total}
    text = f"{free_gib:.1f} GiB free of {usage.total / (1 << 30):.1f} GiB for {path}"
    if usage.free < min_free_bytes or usage.free < usage.total * MIN_FREE_FRACTION:
        return Check("disk", FAIL, f"only {text}: free space (models, keys.db and logs need room)", details)
    if usage.free < warn_free_bytes:
        return Check("disk", WARN, f"{text}: getting low", details)
    return Check("disk", OK, text, details)


# -- the service -------------------------------------------------------------------------------


def check_tls(config: Config, now: datetime | None = None) -> Check:
    """Whether API keys cross the network encrypted, and whether the certificate is fit to serve."""
    from appliance.ops.certificates import CertificateError, read_certificate

    if not config.https_enabled:
        if is_loopback(config.host):
            return Check("tls", OK, f"plain HTTP on loopback only ({config.host}:{config.port}): nothing leaves "
                                    "this machine unencrypted unless a proxy you run forwards it")
        return Check("tls", WARN, f"tls = false and the API listens on {config.host}:{config.port}: API keys and "
                                  "prompts cross the network in clear text. Put a TLS proxy in front and set "
                                  "host = \"127.0.0.1\", or set tls = true")
    try:
        info = read_certificate(config.tls_cert_path)
    except CertificateError as e:
        return Check("tls", FAIL, f"{e}: the HTTPS listener cannot start", {"path": str(config.tls_cert_path)})
    now = now or datetime.now(timezone.utc)
    days = (info.not_after - now).total_seconds() / 86400
    details = info.to_dict()
    text = f"HTTPS on port {config.https_port}, certificate SHA-256 {info.fingerprint_sha256}"
    if days <= 0:
        return Check("tls", FAIL, f"the certificate {info.path} expired on {info.not_after.date()}: renew it, then "
                                  "systemctl reload appliance", details)
    if days < CERT_WARN_DAYS:
        return Check("tls", WARN, f"{text} expires in {days:.0f} days ({info.not_after.date()}): renew it, then "
                                  "systemctl reload appliance", details)
    return Check("tls", OK, f"{text}, valid until {info.not_after.date()}", details)


def check_key_store(config: Config, timeout_s: int = 3) -> Check:
    """Whether the key store's database answers: this box's keys.db, or the fleet's PostgreSQL."""
    if config.keys_database_url is None:
        path = config.keys_db_path
        if not path.exists():
            return Check("key store", NA, f"no keys yet ({path} is created with the first key)")
        return Check("key store", OK, f"keys in {path} (this box only)")
    import psycopg

    where = config.keys_database_url.rsplit("@", 1)[-1]  # host/database, never the password
    try:
        with psycopg.connect(config.keys_database_url, connect_timeout=timeout_s) as conn:
            version = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]
    except psycopg.Error as e:
        return Check("key store", FAIL,
                     f"the fleet's PostgreSQL at {where} does not answer ({type(e).__name__}: {str(e).strip()}): keys "
                     f"this box verified in the last {config.keys_outage_grace_s:.0f} s keep working, every other key "
                     "gets 503 until it answers", {"database": where})
    return Check("key store", OK, f"the fleet's PostgreSQL at {where} answers (schema version {version})",
                 {"database": where, "schema_version": version})


def local_base_url(config: Config) -> str:
    host = config.http_host
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.port}"


def check_ready(base_url: str, timeout_s: float = 10.0) -> Check:
    try:
        response = httpx.get(f"{base_url}/ready", timeout=timeout_s)
    except httpx.HTTPError as e:
        return Check("ready", FAIL, f"the service does not answer at {base_url} ({type(e).__name__}: {e}); "
                                    "`systemctl status appliance` and `journalctl -u appliance` say why",
                     {"url": base_url})
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code == 200:
        return Check("ready", OK, f"ready, serving {body.get('model')}", {"url": base_url, "body": body})
    reasons = "; ".join(body.get("reasons", [])) or f"HTTP {response.status_code}"
    return Check("ready", FAIL, f"not ready: {reasons}", {"url": base_url, "body": body})


def check_canary(base_url: str, model: str, key_file: Path, timeout_s: float = 60.0) -> Check:
    """A 1-token completion through the public API, authenticated like any client."""
    try:
        api_key = key_file.read_text().strip()
    except FileNotFoundError:
        return Check("canary", NA, f"no health key at {key_file} (install.sh creates it); /ready covers the "
                                   "service's own canary")
    except PermissionError:
        return Check("canary", NA, f"cannot read {key_file}: run as root or the appliance user")
    started = time.monotonic()
    try:
        response = httpx.post(
            f"{base_url}/v1/completions", timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"},
            json={"model": model, "prompt": "Hello", "max_tokens": 1, "temperature": 0},
        )
    except httpx.HTTPError as e:
        return Check("canary", FAIL, f"the canary request failed: {type(e).__name__}: {e}")
    latency = time.monotonic() - started
    details = {"status_code": response.status_code, "latency_s": round(latency, 3)}
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        return Check("canary", FAIL, f"the canary got HTTP {response.status_code}: {message}", details)
    usage = response.json().get("usage") or {}
    details["completion_tokens"] = usage.get("completion_tokens")
    return Check("canary", OK, f"1-token completion through the public API in {latency * 1000:.0f} ms", details)


# -- all of it ---------------------------------------------------------------------------------


def run_checks(config: Config, service: bool = True) -> Report:
    checks = [check_driver()]
    checks.extend(check_nvml())
    checks.append(check_cuda())
    checks.append(check_disk(config.state_dir))
    checks.append(check_tls(config))
    checks.append(check_key_store(config))
    if service:
        base_url = local_base_url(config)
        checks.append(check_ready(base_url))
        checks.append(check_canary(base_url, config.model_name, config.state_dir / HEALTH_KEY_NAME))
    return Report(datetime.now(timezone.utc).isoformat(timespec="seconds"), checks)


def save_report(report: Report, state_dir: Path) -> Path:
    """Atomically replace <state_dir>/health.json (read by the TUI and the control API)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / RESULTS_NAME
    tmp = path.with_name(f".{RESULTS_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_report(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / RESULTS_NAME).read_text())
    except (OSError, ValueError):
        return None


def format_report(report: Report) -> str:
    marks = {OK: "ok  ", WARN: "WARN", FAIL: "FAIL", NA: "n/a "}
    width = max(len(c.name) for c in report.checks)
    lines = [f"{marks[c.status]}  {c.name.ljust(width)}  {c.message}" for c in report.checks]
    lines.append("all is well" if report.ok else "something is wrong: see the FAIL lines above")
    return "\n".join(lines)


# -- the command -------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--config", type=Path, help="config file (default: /etc/appliance/config.toml if present)")
    parser.add_argument("--state-dir", type=Path, help="where health.json and health.key live (default: from the config)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-service", action="store_true", help="only the machine checks, not /ready and the canary")
    parser.add_argument("--no-save", action="store_true", help=f"do not write <state-dir>/{RESULTS_NAME}")


def run(args) -> int:
    import sys

    from appliance.config import ConfigError, load_config

    try:
        config = load_config(args.config, {"state_dir": args.state_dir})
    except ConfigError as e:
        print(f"appliance health: error: {e}", file=sys.stderr)
        return 2
    report = run_checks(config, service=not args.no_service)
    saved_note = None
    if not args.no_save:
        try:
            save_report(report, config.state_dir)
        except OSError as e:
            saved_note = f"(not saved: {e.strerror} for {config.state_dir / RESULTS_NAME})"
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    if saved_note:
        print(saved_note, file=sys.stderr)
    return 0 if report.ok else 1
