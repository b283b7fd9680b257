# shellcheck shell=bash
# scripts/lib.sh — helpers shared by scripts/{test,run,install,prepare-env}.
# Source it, do not execute it:   . "$(dirname "$0")/lib.sh"
#
# Sourcing it turns on strict mode (set -euo pipefail), defines PC_ROOT (the
# repository root), sets CARGO_TERM_COLOR=never and CARGO_INCREMENTAL=0 under
# CI=true, and installs an EXIT trap that names the step that was running when a script fails.

set -euo pipefail

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    echo "scripts/lib.sh is meant to be sourced, not executed" >&2
    exit 2
fi

PC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
PC_SCRIPT="$(basename "$0")"
PC_STEP=""
export PC_ROOT

# CI logs have no terminal; keep cargo output free of escape codes.
if [[ "${CI:-}" == "true" ]]; then
    export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
    # A clean clone never reuses incremental caches; writing them only costs
    # disk (gigabytes across the test binaries) and time.
    export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
fi

# ---------------------------------------------------------------- messages

pc_info() { printf '%s: %s\n' "$PC_SCRIPT" "$*" >&2; }
pc_warn() { printf '%s: WARNING: %s\n' "$PC_SCRIPT" "$*" >&2; }

pc_die() {
    printf '%s: ERROR: %s\n' "$PC_SCRIPT" "$*" >&2
    exit 1
}

# pc_step "description" — announce a step; a later failure names it.
pc_step() {
    PC_STEP="$*"
    printf '\n==> [%s] %s\n' "$PC_SCRIPT" "$*" >&2
}

pc__on_exit() {
    local rc=$?
    if (( rc != 0 )) && [[ -n "$PC_STEP" ]]; then
        printf '%s: FAILED (exit %d) during step: %s\n' "$PC_SCRIPT" "$rc" "$PC_STEP" >&2
    fi
}
trap pc__on_exit EXIT

pc_is_root() { [[ "$(id -u)" -eq 0 ]]; }

# ---------------------------------------------------------------- root

# pc_need_root "$@" — continue as root: re-exec the calling script through
# sudo (keeping its arguments and the few environment variables the scripts
# read), or fail loudly when that is impossible.
pc_need_root() {
    pc_is_root && return 0
    if [[ -n "${PC_REEXECED:-}" ]]; then
        pc_die "re-executed through sudo but still not root (uid $(id -u))"
    fi
    command -v sudo >/dev/null 2>&1 \
        || pc_die "$PC_SCRIPT must run as root, and sudo is not installed; run it as root"
    local self var
    self="$(readlink -f -- "$0")"
    # sudo resets the environment; pass what the scripts use explicitly
    # (as arguments to env, which no sudoers policy forbids).
    local -a keep=(PC_REEXECED=1)
    for var in CI DESTDIR CARGO_TERM_COLOR CARGO_INCREMENTAL RUST_LOG RUST_BACKTRACE PORTCULLIS_KEEP_KDC; do
        if [[ -n "${!var+set}" ]]; then keep+=("$var=${!var}"); fi
    done
    pc_info "not root; re-running through sudo: $self $*"
    exec sudo -- env "${keep[@]}" "$self" "$@"
}

# Run a command as root: directly if we are root, else through sudo.
pc_as_root() {
    if pc_is_root; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -- "$@"
    else
        pc_die "need root for: $* (not root, and sudo is not installed)"
    fi
}

# ---------------------------------------------------------------- accounts

# pc_ensure_group NAME [groupadd options...] — create the group unless NSS knows it.
pc_ensure_group() {
    local name="$1"; shift
    if getent group "$name" >/dev/null; then
        return 0
    fi
    pc_info "creating group $name"
    groupadd "$@" "$name" || pc_die "groupadd $name failed"
}

# ---------------------------------------------------------------- packages

# The Debian packages a build needs (one per line).
pc_base_packages() {
    printf '%s\n' build-essential pkg-config libpam0g-dev libkrb5-dev \
        libclang-dev clang openssl curl ca-certificates
}

pc_pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

PC_APT_UPDATED=""

# pc_apt_install PKG... — install only the packages not installed yet;
# "apt-get update" runs once (per script run), and only if something is missing.
pc_apt_install() {
    if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
        pc_die "dpkg-query/apt-get not found: this needs a Debian-family system"
    fi
    local pkg
    local -a missing=()
    for pkg in "$@"; do
        pc_pkg_installed "$pkg" || missing+=("$pkg")
    done
    if (( ${#missing[@]} == 0 )); then
        pc_info "packages already installed: $*"
        return 0
    fi
    pc_info "installing missing packages: ${missing[*]}"
    if [[ -z "$PC_APT_UPDATED" ]]; then
        pc_as_root env DEBIAN_FRONTEND=noninteractive apt-get update \
            || pc_die "apt-get update failed"
        PC_APT_UPDATED=1
    fi
    pc_as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" \
        || pc_die "apt-get install failed for: ${missing[*]}"
    for pkg in "${missing[@]}"; do
        pc_pkg_installed "$pkg" || pc_die "package $pkg is still not installed after apt-get install"
    done
}

pc_install_base_packages() {
    local -a pkgs
    mapfile -t pkgs < <(pc_base_packages)
    pc_apt_install "${pkgs[@]}"
}

# ---------------------------------------------------------------- rust

# Oldest toolchain that knows edition 2024 (Cargo.toml uses it).
PC_MIN_RUST_MINOR=85

pc__rust_minor() {
    # "rustc 1.95.0 (…)" -> 95
    rustc --version 2>/dev/null | sed -n 's/^rustc 1\.\([0-9][0-9]*\)\..*/\1/p'
}

# pc_ensure_rust — make cargo (stable, new enough) usable in this shell,
# installing rustup non-interactively when there is none.
pc_ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        pc_info "cargo not found; installing rustup (stable toolchain) for $(id -un) from https://sh.rustup.rs"
        command -v curl >/dev/null 2>&1 || pc_apt_install curl ca-certificates
        local installer
        installer="$(mktemp)"
        curl --proto '=https' --tlsv1.2 -fsSL --retry 3 -o "$installer" https://sh.rustup.rs \
            || { rm -f "$installer"; pc_die "could not download https://sh.rustup.rs"; }
        sh "$installer" -y --no-modify-path --profile minimal --default-toolchain stable \
            || { rm -f "$installer"; pc_die "rustup installation failed"; }
        rm -f "$installer"
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env" || pc_die "rustup installed, but $HOME/.cargo/env is missing"
    fi
    command -v cargo >/dev/null 2>&1 || pc_die "cargo is still not on PATH after installing rustup"

    local minor
    minor="$(pc__rust_minor)"
    if [[ -z "$minor" ]] || (( minor < PC_MIN_RUST_MINOR )); then
        if command -v rustup >/dev/null 2>&1; then
            pc_info "rustc is too old or has no default toolchain ($(rustc --version 2>&1 || true)); installing stable"
            rustup toolchain install stable --profile minimal || pc_die "rustup toolchain install stable failed"
            rustup default stable || pc_die "rustup default stable failed"
            minor="$(pc__rust_minor)"
        fi
        if [[ -z "$minor" ]] || (( minor < PC_MIN_RUST_MINOR )); then
            pc_die "need rustc >= 1.$PC_MIN_RUST_MINOR (edition 2024), found: $(command -v rustc || echo none) $(rustc --version 2>&1 || true). Remove the distribution's rustc/cargo or install rustup."
        fi
    fi
    cargo --version >/dev/null || pc_die "cargo is installed but does not run"
    pc_info "using $(cargo --version) / $(rustc --version)"
}
