"""`appliance tls generate | show`: the HTTPS listener's certificate.

`generate` makes the self-signed certificate install.sh installs when the operator configures
none; it keeps an existing one (clients trust that very file) unless --force. `show` says what
the configured certificate is: names, validity, fingerprint, and what a client should trust.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from appliance.cli.common import CliError, load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="config file (default: /etc/appliance/config.toml if present)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    actions = parser.add_subparsers(title="tls commands", metavar="COMMAND", dest="action", required=True)
    generate = actions.add_parser("generate", parents=[common],
                                  help="a self-signed certificate for this host (kept if one exists)")
    generate.add_argument("--cert", type=Path, help="where the certificate goes (default: the config's tls_cert)")
    generate.add_argument("--key", type=Path, help="where the private key goes, mode 0600 (default: tls_key)")
    generate.add_argument("--name", action="append", default=[], metavar="NAME",
                          help="another DNS name or address clients use (repeatable); this host's own are included")
    generate.add_argument("--days", type=int, default=None, help="validity in days (default: 3650)")
    generate.add_argument("--force", action="store_true",
                          help="replace an existing certificate (clients that trust the old file must get the new one)")
    actions.add_parser("show", parents=[common], help="the configured certificate: names, validity, SHA-256 fingerprint")


def run(args) -> int:
    from appliance.ops.certificates import VALIDITY_DAYS, CertificateError, generate, host_names, read_certificate

    args.state_dir, args.dev = None, False  # load_settings reads them; the certificate does not depend on them
    settings = load_settings(args)
    try:
        if args.action == "show":
            info, state = read_certificate(settings.tls_cert_path), "configured"
        else:
            cert = args.cert or settings.tls_cert_path
            key = args.key or settings.tls_key_path
            if cert.exists() and key.exists() and not args.force:
                info, state = read_certificate(cert), "kept (--force replaces it)"
            else:
                names = host_names() + [n for n in args.name if n]
                info, state = generate(cert, key, names, args.days or VALIDITY_DAYS), "generated"
    except (CertificateError, OSError) as e:
        raise CliError(str(e)) from None
    if args.json:
        print(json.dumps({**info.to_dict(), "state": state.split(" ")[0]}, indent=2))
        return 0
    print(f"certificate  {info.path} ({state})")
    print(f"names        {', '.join(info.names)}")
    print(f"valid        {info.not_before:%Y-%m-%d} to {info.not_after:%Y-%m-%d} ({info.key_type})")
    print(f"SHA-256      {info.fingerprint_sha256}")
    if info.self_signed:
        print(f"clients      trust this file: httpx.Client(verify=\"{info.path}\"), curl --cacert {info.path}")
    else:
        print(f"clients      issued by {info.issuer}: clients need its CA, usually already trusted")
    return 0
