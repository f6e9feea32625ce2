"""Helpers for the tests of ``systemd/``: read the unit files, make test copies of them, and
run ``xdpstackd`` the way a unit does, without a running systemd.

Imported as ``systemd_units`` (pytest puts this directory on ``sys.path``; the name is
unique in the repository, as it must be for modules outside packages).

What "the way the unit does" means here, line by line of the unit:

``ExecStart=``
    :func:`exec_argv` turns the unit's own line into an argv: specifiers (``%i``, ``%I``,
    ``%%``) replaced, words split as systemd splits them, ``$$`` made ``$``, and the paths
    a test cannot use (``/usr/local/bin/xdpstackd``, ``/run/xdpstack``, ``/etc/xdpstack``)
    replaced by the repository's ``.venv/bin/xdpstackd`` and temporary directories.
``Type=notify``, ``NotifyAccess=main``, ``WatchdogSec=``
    :class:`NotifyListener` is the manager's end of the notify protocol: a Unix datagram
    socket named by ``$NOTIFY_SOCKET``, with ``SO_PASSCRED`` so each message carries the
    sender's PID (the manager drops messages from other PIDs under ``NotifyAccess=main``).
    :func:`unit_environment` is the environment systemd gives a system service.
``User=``, ``CapabilityBoundingSet=``, ``AmbientCapabilities=``, ``NoNewPrivileges=``,
``ProtectSystem=strict``, ``PrivateTmp=``, ``ProtectKernelTunables=`` + ``ReadWritePaths=``,
``MemoryDenyWriteExecute=``, ``LimitMEMLOCK=``
    :func:`sandbox_argv` wraps an argv in ``unshare``/``mount``/``setpriv`` commands that
    set the same restrictions up (see its docstring for the details and the one stand-in).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import struct
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
MAIN_UNIT = SYSTEMD_DIR / "xdpstackd.service"
TEMPLATE_UNIT = SYSTEMD_DIR / "xdpstackd@.service"
EXAMPLE_CONFIG = REPO / "examples" / "xdpstackd.toml"

#: Where the units expect the daemon (``pip install`` as root puts console scripts there).
INSTALLED_XDPSTACKD = "/usr/local/bin/xdpstackd"
RUNTIME_DIR = "/run/xdpstack"
CONFIG_DIR = "/etc/xdpstack"

#: The capabilities the units grant: the least that works (systemd/README.md).
EXPECTED_CAPABILITIES = ("CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF", "CAP_PERFMON")

#: A non-root user and group standing for the units' ``User=xdpstack`` (nobody/nogroup).
SERVICE_UID = 65534
SERVICE_GID = 65534

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def venv_xdpstackd() -> Path | None:
    """``<repo>/.venv/bin/xdpstackd``, else the one next to this Python; None if neither."""
    for path in (REPO / ".venv" / "bin" / "xdpstackd", Path(sys.executable).parent / "xdpstackd"):
        if path.exists():
            return path
    return None


# --------------------------------------------------------------------------- unit files
def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file: ``{section: [(key, value), ...]}`` in file order, comments
    dropped, backslash-continued lines joined."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit file line: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(unit: Mapping[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def unit_value(unit: Mapping[str, list[tuple[str, str]]], section: str, key: str) -> str | None:
    """The last assignment of ``key`` (what systemd uses for a single-valued setting)."""
    values = unit_values(unit, section, key)
    return values[-1] if values else None


def load_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    return parse_unit(path.read_text())


def unit_capabilities(unit: Mapping[str, list[tuple[str, str]]], key: str) -> list[str]:
    caps: list[str] = []
    for value in unit_values(unit, "Service", key):
        caps.extend(value.split())
    return caps


def unit_copy(text: str, replacements: Mapping[str, str]) -> str:
    """The unit's text with each path in ``replacements`` replaced, all in one pass (so a
    replacement is never itself replaced again), longest first where two overlap."""
    if not replacements:
        return text
    pattern = "|".join(re.escape(old) for old in sorted(replacements, key=len, reverse=True))
    return re.sub(pattern, lambda m: replacements[m.group(0)], text)


def expand_specifiers(value: str, instance: str | None) -> str:
    """``%i`` / ``%I`` (the instance; escaped and unescaped are the same for names without
    ``-`` or ``\\``) and ``%%``; any other specifier is an error here."""

    def one(match: re.Match[str]) -> str:
        spec = match.group(1)
        if spec == "%":
            return "%"
        if spec in "iI":
            assert instance is not None, f"%{spec} in a unit that is not an instance"
            assert re.fullmatch(r"[A-Za-z0-9_.]+", instance), f"instance {instance!r}"
            return instance
        raise AssertionError(f"specifier %{spec} not handled by the tests")

    return re.sub(r"%(.)", one, value)


def exec_argv(
    unit_path: Path,
    *,
    instance: str | None = None,
    replacements: Mapping[str, str] | None = None,
) -> list[str]:
    """The argv the unit's ``ExecStart=`` runs, as systemd builds it."""
    text = unit_copy(unit_path.read_text(), replacements or {})
    unit = parse_unit(text)
    lines = [v for v in unit_values(unit, "Service", "ExecStart") if v]
    assert len(lines) == 1, f"{unit_path.name}: expected one ExecStart=, got {lines}"
    line = lines[0]
    assert line[0] not in "-@:+!", f"{unit_path.name}: ExecStart= prefixes are not handled"
    words = shlex.split(expand_specifiers(line, instance))
    assert not any(re.search(r"(?<!\$)\$(?!\$)", w) for w in words), (
        f"{unit_path.name}: ExecStart= uses environment variables, not handled here"
    )
    return [w.replace("$$", "$") for w in words]


def unit_environment(
    *, notify_socket: str | None, watchdog_usec: int | None, runtime_directory: str
) -> dict[str, str]:
    """The environment systemd gives a system service (no variables of the caller)."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "HOME": "/",
        "RUNTIME_DIRECTORY": runtime_directory,
        "INVOCATION_ID": os.urandom(16).hex(),
    }
    if notify_socket is not None:
        env["NOTIFY_SOCKET"] = notify_socket
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    # A developer's PYTHONPATH (e.g. to try a patched package) goes through.
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


# --------------------------------------------------------------------------- notify socket
@dataclass
class NotifyMessage:
    at: float  # time.monotonic() when received
    pid: int  # the sender's PID (SCM_CREDENTIALS)
    fields: dict[str, str]


class NotifyListener:
    """The service manager's end of ``sd_notify``: a bound ``AF_UNIX`` datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[NotifyMessage] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)  # the service may run as another user, as under systemd

    def close(self) -> None:
        self.sock.close()
        path = Path(self.path)
        if path.exists():
            path.unlink()

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def receive(self, timeout: float) -> NotifyMessage | None:
        """The next message, or None after ``timeout`` seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("=iII", payload[:12])
        fields: dict[str, str] = {}
        for line in data.decode(errors="replace").split("\n"):
            key, sep, value = line.partition("=")
            if sep:
                fields[key] = value
        message = NotifyMessage(time.monotonic(), pid, fields)
        self.messages.append(message)
        return message

    def wait_for(self, key: str, value: str, timeout: float, alive: object = None) -> NotifyMessage:
        """Receive until a message has ``key=value``; AssertionError on timeout. ``alive``:
        a callable returning False once the service is gone (then fail at once)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {key}={value} within {timeout:.0f}s; got {self.summary()}"
                )
            message = self.receive(min(left, 0.5))
            if message is not None and message.fields.get(key) == value:
                return message
            if message is None and callable(alive) and not alive():
                # the service exited: take what it sent before, then give up
                while (late := self.receive(0.05)) is not None:
                    if late.fields.get(key) == value:
                        return late
                raise AssertionError(
                    f"the service exited before {key}={value}; got {self.summary()}"
                )

    def summary(self) -> str:
        return repr([(round(m.at, 3), m.pid, m.fields) for m in self.messages][-20:])


# --------------------------------------------------------------------------- the sandbox
def mdwe_supported() -> bool:
    """Whether this kernel has ``PR_SET_MDWE`` (Linux 6.3): tried in a child process, since
    it cannot be undone."""
    import subprocess

    code = (
        "import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True); "
        f"sys.exit(0 if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) == 0 "
        "else 1)"
    )
    return subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def memlock_can_be_unlimited() -> bool:
    """Whether this process may raise RLIMIT_MEMLOCK to infinity (needs CAP_SYS_RESOURCE,
    which systemd has and some containers do not give even to root)."""
    import resource

    return resource.getrlimit(resource.RLIMIT_MEMLOCK)[1] == resource.RLIM_INFINITY or (
        _has_capability(24)  # CAP_SYS_RESOURCE
    )


def _has_capability(number: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> number & 1)
    return False


def raise_memlock() -> None:
    """preexec_fn: LimitMEMLOCK=infinity."""
    import resource

    resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))


def _setpriv_caps(caps: Sequence[str]) -> str:
    names = [c.lower().removeprefix("cap_") for c in caps]
    return ",".join(["-all", *(f"+{n}" for n in names)])


def sandbox_argv(
    argv: Sequence[str],
    *,
    unit: Mapping[str, list[tuple[str, str]]],
    runtime_directory: str,
    capabilities: Sequence[str],
    mdwe: bool,
) -> list[str]:
    """``argv`` run under the unit's restrictions, set up by hand (as root, in a private mount
    namespace, then as a non-root user):

    * ``ProtectSystem=strict`` + ``RuntimeDirectory=xdpstack``: ``/`` is remounted
      read-only; ``runtime_directory`` (owned by the service user, the unit's mode) is bound
      read-write onto ``/run/xdpstack``, so the daemon sees it where the unit puts it and
      the test reaches the same files under ``runtime_directory``.
    * ``PrivateTmp=yes``: fresh tmpfs on ``/tmp`` and ``/var/tmp``.
    * ``ProtectKernelTunables=yes``: ``/proc/sys`` read-only, ``/proc/kallsyms`` unreadable;
      each ``ReadWritePaths=`` entry under ``/proc/sys`` bound read-write on top.
    * ``User=``/``Group=``: uid/gid 65534, no supplementary groups.
    * ``CapabilityBoundingSet=``/``AmbientCapabilities=``: ``capabilities`` as bounding,
      inheritable and ambient sets (the caller passes the unit's, plus CAP_IPC_LOCK where
      RLIMIT_MEMLOCK cannot be made infinite here: see :func:`memlock_can_be_unlimited`).
    * ``NoNewPrivileges=yes``: ``setpriv --no-new-privs``.
    * ``MemoryDenyWriteExecute=yes``: ``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)`` when
      ``mdwe`` (the kernel's version of the same rule: no writable+executable mapping, no
      mapping made executable later).
    """
    assert unit_value(unit, "Service", "ProtectSystem") == "strict"
    assert unit_value(unit, "Service", "PrivateTmp") == "yes"
    assert unit_value(unit, "Service", "ProtectKernelTunables") == "yes"
    assert unit_value(unit, "Service", "RuntimeDirectory") == RUNTIME_DIR.removeprefix("/run/")
    assert Path(RUNTIME_DIR).is_dir(), f"{RUNTIME_DIR} must exist to be mounted on"
    proc_sys_rw = [p for v in unit_values(unit, "Service", "ReadWritePaths") for p in v.split()]
    assert all(p.startswith("/proc/sys/") for p in proc_sys_rw), proc_sys_rw
    q = shlex.quote
    # A checkout under /tmp (CI clones may live there) would vanish under PrivateTmp's
    # fresh tmpfs; a real install is never there. Carry the checkout across the new /tmp.
    repo_in_tmp = any(REPO.is_relative_to(t) for t in ("/tmp", "/var/tmp"))
    stash = os.path.join(runtime_directory, ".repo")
    carry_in = [f"mkdir -p {q(stash)} && mount --bind {q(str(REPO))} {q(stash)}"]
    carry_out = [f"mkdir -p {q(str(REPO))} && mount --bind {q(stash)} {q(str(REPO))}"]
    steps = [
        "set -e",
        *(carry_in if repo_in_tmp else []),
        "mount --bind / / && mount -o remount,bind,ro /",
        "mount -t tmpfs -o mode=1777 tmpfs /tmp && mount -t tmpfs -o mode=1777 tmpfs /var/tmp",
        *(carry_out if repo_in_tmp else []),
        f"mount --bind {q(runtime_directory)} {RUNTIME_DIR}",
        f"mount -o remount,bind,rw {RUNTIME_DIR}",
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys",
        *(f"mount --bind {q(p)} {q(p)} && mount -o remount,bind,rw {q(p)}" for p in proc_sys_rw),
        "touch /tmp/.inaccessible && chmod 000 /tmp/.inaccessible",
        "mount --bind /tmp/.inaccessible /proc/kallsyms",
        'exec "$@"',
    ]
    caps = _setpriv_caps(capabilities)
    setpriv = [
        "setpriv",
        f"--reuid={SERVICE_UID}",
        f"--regid={SERVICE_GID}",
        "--clear-groups",
        f"--bounding-set={caps}",
        f"--inh-caps={caps}",
        f"--ambient-caps={caps}",
        "--no-new-privs",
        "--",
    ]
    mdwe_wrapper: list[str] = []
    if mdwe:
        mdwe_wrapper = [
            "/usr/bin/python3",
            "-c",
            "import ctypes, os, sys\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            f"if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:\n"
            "    sys.exit('PR_SET_MDWE: ' + os.strerror(ctypes.get_errno()))\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n",
        ]
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        "\n".join(steps),
        "sandbox",
        *setpriv,
        *mdwe_wrapper,
        *argv,
    ]


def capabilities_of(pid: int) -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process, as integers."""
    caps = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            caps[key] = int(value.strip(), 16)
    return caps


CAPABILITY_NUMBERS = {
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_SYS_ADMIN": 21,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
}


def capability_mask(caps: Sequence[str]) -> int:
    mask = 0
    for cap in caps:
        mask |= 1 << CAPABILITY_NUMBERS[cap]
    return mask


def uids_of(pid: int) -> tuple[int, int]:
    """(real uid, real gid) of a process."""
    uid = gid = -1
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
        elif line.startswith("Gid:"):
            gid = int(line.split()[1])
    return uid, gid
