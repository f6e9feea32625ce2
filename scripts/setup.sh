#!/usr/bin/env bash
# Set up a development environment for xdpstack on Debian 12: the Debian packages it
# needs, and a virtual environment in .venv with the project installed in editable mode.
# Idempotent: a second run checks and returns quickly.
#
# The venv is made from Debian's /usr/bin/python3 with --system-site-packages, so that it
# can import Debian-only modules built for that interpreter (bcc from python3-bpfcc).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=/usr/bin/python3
VENV=.venv
STAMP="$VENV/.stamp"
APT_PACKAGES=(python3-venv python3-dev gcc make)

say() { printf 'setup: %s\n' "$*"; }

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
else
    SUDO=(sudo)
fi

# 1. Debian packages: install only what is missing; refresh the index only then.
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    say "Debian packages present: ${APT_PACKAGES[*]}"
fi

# 2. The virtual environment: Debian's Python, with system site packages.
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: $PYTHON is older than 3.11 ($("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
venv_ok() {
    [[ -x $VENV/bin/python && -f $VENV/pyvenv.cfg ]] &&
        grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg" &&
        grep -qx 'home = /usr/bin' "$VENV/pyvenv.cfg" &&
        "$VENV/bin/python" -c '' 2>/dev/null
}
if ! venv_ok; then
    if [[ -e $VENV ]]; then
        say "removing $VENV (not made from $PYTHON with system site packages, or broken)"
        rm -rf "$VENV"
    fi
    say "creating $VENV with $PYTHON ($("$PYTHON" --version 2>&1)), system site packages on"
    "$PYTHON" -m venv --system-site-packages "$VENV"
fi

# 3. The project, editable, with test and bench extras; redone when pyproject.toml changes.
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [[ $want == "$have" ]]; then
    say "$VENV is up to date with pyproject.toml (stamp matches); nothing to install"
else
    say "installing xdpstack (editable, extras test,bench) into $VENV"
    rm -f "$STAMP"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test,bench]'
    printf '%s\n' "$want" >"$STAMP"
    say "done"
fi
