#!/usr/bin/env bash
# Development entry point, from a checkout, without root.
#   ./dev.sh          set up .venv, install the default model, serve it on http://127.0.0.1:8000
#   ./dev.sh test     set up .venv and run the whole test suite (what CI runs)
#   ./dev.sh setup    only set up .venv
set -euo pipefail

main() {
    cd "$(dirname "$0")"
    setup_venv
    case "${1:-serve}" in
        serve) shift || true; exec .venv/bin/appliance serve --dev "$@" ;;
        test) shift; exec .venv/bin/python -m pytest -q "$@" ;;
        setup) ;;
        *) echo "usage: ./dev.sh [serve [FLAGS…] | test [PYTEST ARGS…] | setup]" >&2; exit 2 ;;
    esac
}

setup_venv() {
    local python="${PYTHON:-python3}"
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
        echo "error: $python is $("$python" --version 2>&1); Python 3.10 or newer is needed (set PYTHON=...)" >&2
        exit 1
    fi
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    # Reinstall only when the lock files or the package metadata changed.
    local stamp=.venv/.installed
    local want
    want="$(cat requirements.lock requirements-reference.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
        .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
        # the tests' references, outside .venv's import path (requirements-reference.lock says why)
        rm -rf .venv/reference
        .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --target .venv/reference \
            -r requirements-reference.lock
        echo "$want" > "$stamp"
    fi
}

main "$@"
