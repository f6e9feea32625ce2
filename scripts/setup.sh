#!/usr/bin/env bash
# Set up a development environment for xdpstack on Debian 12: the Debian packages it
# needs, and a virtual environment in .venv with the project installed in editable mode.
# Idempotent: a second run checks and returns quickly.
#
# The venv is made from Debian's /usr/bin/python3 with --system-site-packages, so that it
# can import Debian-only modules built for that interpreter (bcc from python3-bpfcc).
#
# bcc compiles bpf/xdpstack.bpf.c at daemon start and needs kernel headers. When the running
# kernel has none (/lib/modules/$(uname -r)/build missing, as on a custom or cloud kernel),
# Debian 12's newest linux-headers-6.1.0-NN-amd64 (+ -common) is installed and linked in as
# /lib/modules/$(uname -r)/{build,source}; an XDP program only needs the UAPI and helper
# declarations, which those headers provide for a newer kernel too (the verifier checks the
# program against the running kernel; CO-RE is not used).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=/usr/bin/python3
VENV=.venv
STAMP="$VENV/.stamp"
APT_PACKAGES=(python3-venv python3-dev gcc make curl redis-server)

say() { printf 'setup: %s\n' "$*"; }

if [[ $(id -u) -eq 0 ]]; then
    SUDO=()
else
    SUDO=(sudo)
fi

# Datapath packages: bcc's Python module (Debian-only, for /usr/bin/python3), iproute2 (ip,
# netns, veth) and ethtool (tx checksum offload off on test veths).
DATAPATH_APT_PACKAGES=(python3-bpfcc iproute2 ethtool)
APT_PACKAGES+=("${DATAPATH_APT_PACKAGES[@]}")

# tests/systemd: systemd-analyze verify/security (systemd), setpriv and unshare
# (util-linux), mount, strace (the unit's system call filter).
SYSTEMD_TEST_APT_PACKAGES=(systemd util-linux mount strace)
APT_PACKAGES+=("${SYSTEMD_TEST_APT_PACKAGES[@]}")

pkg_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true) == "install ok installed" ]]
}
apt_updated=0
apt_update_once() {
    if ((!apt_updated)); then
        "${SUDO[@]}" apt-get update -q
        apt_updated=1
    fi
}
export DEBIAN_FRONTEND=noninteractive

# 1. Debian packages: install only what is missing; refresh the index only then.
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    pkg_installed "$pkg" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    apt_update_once
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    say "Debian packages present: ${APT_PACKAGES[*]}"
fi

# 1b. Kernel headers for bcc (see the top of this file). Nothing to do when the running
# kernel has its own headers; otherwise reuse an installed Debian 6.1 headers package, or
# install the newest one apt knows of, and point build/source at it.
KREL=$(uname -r)
KMOD=/lib/modules/$KREL
kernel_has_headers() {
    # build (a dir or a link) leads to a configured headers tree.
    [[ -f $KMOD/build/Makefile || -f $KMOD/build/include/generated/autoconf.h ]]
}
newest_installed_headers() {
    # dpkg-query fails when nothing matches: that is an empty answer, not an error.
    { dpkg-query -W -f='${Package} ${Status}\n' 'linux-headers-6.1.0-*-amd64' 2>/dev/null || true; } |
        awk '$NF == "installed" {print $1}' | sort -V | tail -n 1
}
link_to() { # link_to TARGET LINK: make LINK a symlink to TARGET unless it already is
    local target=$1 link=$2
    if [[ -L $link && $(readlink "$link") == "$target" ]]; then
        return 0
    fi
    if [[ -e $link && ! -L $link ]]; then
        echo "setup: $link exists and is not a symlink; leaving it alone" >&2
        return 1
    fi
    "${SUDO[@]}" mkdir -p "$(dirname "$link")"
    "${SUDO[@]}" ln -sfn "$target" "$link"
    say "linked $link -> $target"
}
own_headers() {
    # Headers the kernel came with: a build dir, or a link that is not one of our fallbacks.
    kernel_has_headers || return 1
    [[ ! -L $KMOD/build ]] && return 0
    local target
    target=$(readlink "$KMOD/build")
    [[ $target != /usr/src/linux-headers-6.1.0-*-amd64 || $target == "/usr/src/linux-headers-$KREL" ]]
}
hdr_ok=1
if own_headers; then
    say "kernel $KREL has its own headers in $KMOD/build"
else
    hdr=$(newest_installed_headers)
    if [[ -z $hdr ]]; then
        apt_update_once
        hdr=$({ apt-cache search --names-only '^linux-headers-6\.1\.0-[0-9]+-amd64$' || true; } |
            awk '{print $1}' | sort -V | tail -n 1)
        if [[ -z $hdr ]]; then
            echo "setup: no linux-headers-6.1.0-NN-amd64 package found by apt-cache;" \
                "bcc will not be able to compile the XDP program" >&2
            hdr_ok=0
        else
            say "installing kernel headers for bcc: $hdr ${hdr%-amd64}-common"
            "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$hdr" "${hdr%-amd64}-common"
        fi
    elif ! pkg_installed "${hdr%-amd64}-common"; then
        apt_update_once
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${hdr%-amd64}-common"
    fi
    if ((hdr_ok)); then
        hver=${hdr#linux-headers-}
        link_to "/usr/src/linux-headers-$hver" "$KMOD/build" || hdr_ok=0
        link_to "/usr/src/linux-headers-${hver%-amd64}-common" "$KMOD/source" || hdr_ok=0
        if ((hdr_ok)); then
            say "kernel $KREL uses Debian's $hdr for bcc"
        fi
    fi
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

# 3. The project, editable, with test and bench extras; redone when the packaging or the
#    C extension's sources change (the cffi module is built at install).
want=$(cat pyproject.toml setup.py daemon/xdpstackd/datapath/_xsk.c \
    daemon/xdpstackd/datapath/_xsk_build.py daemon/xdpstackd/inetstack/csum.h \
    daemon/xdpstackd/inetstack/_checksum_build.py \
    daemon/xdpstackd/inetstack/layer4/tcp/syncookie.h 2>/dev/null | sha256sum | cut -d' ' -f1)
have=$(cat "$STAMP" 2>/dev/null || true)
if [[ $want == "$have" ]]; then
    say "$VENV is up to date with the packaging and C sources (stamp matches); nothing to install"
else
    say "installing xdpstack (editable, extras test,bench) into $VENV"
    rm -f "$STAMP"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test,bench]'
    printf '%s\n' "$want" >"$STAMP"
    say "done"
fi

# 4. bcc must be importable from the venv (python3-bpfcc through system site packages).
if ! ls daemon/xdpstackd/datapath/_xsk*.so >/dev/null 2>&1; then
    say "building the AF_XDP extension (cffi)"
    "$VENV/bin/python" daemon/xdpstackd/datapath/_xsk_build.py
fi
if ! ls daemon/xdpstackd/inetstack/_checksum*.so >/dev/null 2>&1; then
    say "building the checksum extension (cffi)"
    "$VENV/bin/python" daemon/xdpstackd/inetstack/_checksum_build.py
fi
if ! "$VENV/bin/python" -c 'import bcc' 2>/dev/null; then
    echo "setup: $VENV/bin/python cannot import bcc (python3-bpfcc for $PYTHON)" >&2
    exit 1
fi
say "bcc importable from $VENV"
