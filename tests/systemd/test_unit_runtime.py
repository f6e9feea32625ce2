"""``xdpstackd`` started the way ``xdpstackd@IF.service`` starts it, on a veth pair made by the
test, with no systemd running: the template's own ``ExecStart=`` (its shell, the same
arguments), systemd's environment for a notify service (``NOTIFY_SOCKET`` bound by the test,
``WATCHDOG_USEC``), then

* the notify protocol: READY=1 from the main PID once the API socket accepts connections,
  WATCHDOG=1 at half the watchdog interval, STOPPING=1 and exit 0 on SIGTERM;
* the unit's sandbox: a non-root user with only the unit's capabilities, read-only
  filesystem and ``/proc/sys`` but for the runtime directory and the reserved-ports file,
  no new privileges, no W+X memory: the daemon starts, carries a TCP echo, and stops clean.

See ``systemd_units.py`` for how each unit line is reproduced.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from integration_support import require_integration
from netfixtures import (  # noqa: F401
    kernel_tcp_server,
    pattern_bytes,
    veth_pair_fixture,
)
from systemd_units import (
    CONFIG_DIR,
    INSTALLED_XDPSTACKD,
    RUNTIME_DIR,
    SERVICE_GID,
    SERVICE_UID,
    TEMPLATE_UNIT,
    NotifyListener,
    capabilities_of,
    capability_mask,
    exec_argv,
    load_unit,
    mdwe_supported,
    memlock_can_be_unlimited,
    raise_memlock,
    sandbox_argv,
    uids_of,
    unit_capabilities,
    unit_environment,
    unit_value,
    unit_values,
    venv_xdpstackd,
)

import xdpstack
from xdpstack.protocol import Op
from xdpstackd.netns import VethPair

pytestmark = pytest.mark.integration

#: The unit's TimeoutStartSec= (bcc compiles the XDP program before READY=1).
READY_TIMEOUT_S = 180.0
#: The unit's TimeoutStopSec=.
STOP_TIMEOUT_S = 30.0
#: WATCHDOG_USEC for the keep-alive test: WATCHDOG=1 is due every second.
WATCHDOG_USEC = 2_000_000
RESERVED_PORTS = "/proc/sys/net/ipv4/ip_local_reserved_ports"


@dataclass
class UnitDirs:
    """Stand-ins for the unit's paths: ``/run/xdpstack`` (RuntimeDirectory=),
    ``/etc/xdpstack``, and the manager's notify socket directory. Under ``/run`` rather than
    pytest's tmp_path, whose parents the service user could not traverse."""

    run: Path
    conf: Path
    notify: Path
    log: Path


@pytest.fixture(name="unit_dirs")
def unit_dirs_fixture(tmp_path: Path) -> Iterator[UnitDirs]:
    made = [Path(tempfile.mkdtemp(prefix=f"xdpstack-systemd-test-{n}-", dir="/run")) for n in "rcn"]
    try:
        run, conf, notify = made
        conf.chmod(0o755)
        notify.chmod(0o755)
        yield UnitDirs(run=run, conf=conf, notify=notify, log=tmp_path / "xdpstackd.log")
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


def _require_tools(*tools: str) -> Path:
    for tool in tools:
        if shutil.which(tool) is None:
            require_integration(f"`{tool}` is not installed (scripts/setup.sh installs it)")
    exe = venv_xdpstackd()
    if exe is None:
        require_integration("xdpstackd is not installed in .venv (run scripts/setup.sh)")
    return exe


def _reserved_ports(netns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "cat", RESERVED_PORTS],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _xdp_attached(netns: str, ifname: str) -> bool:
    out = subprocess.run(
        ["ip", "-n", netns, "-d", "link", "show", ifname], capture_output=True, text=True
    ).stdout
    return re.search(r"\bxdp(?:generic|drv|offload)?\b|prog/xdp", out) is not None


class UnitRun:
    """One daemon started like the template instance ``xdpstackd@IF.service``."""

    def __init__(
        self,
        pair: VethPair,
        dirs: UnitDirs,
        *,
        watchdog_usec: int,
        wrap: Callable[[list[str]], list[str]] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        runtime_mounted: bool = False,
    ) -> None:
        """``runtime_mounted``: ``wrap`` mounts ``dirs.run`` on /run/xdpstack for the daemon,
        so the unit's paths under /run/xdpstack stay as they are."""
        exe = _require_tools("ip")
        assert pair.host_ns is not None
        self.pair = pair
        self.dirs = dirs
        self.ifname = pair.host_if
        self.socket_path = dirs.run / f"{self.ifname}.sock"
        self.config_path = dirs.conf / f"xdpstackd@{self.ifname}.toml"
        self.config_path.write_text('[daemon]\nlog_level = "info"\n')
        self.config_path.chmod(0o644)
        self.argv = exec_argv(
            TEMPLATE_UNIT,
            instance=self.ifname,
            replacements={
                INSTALLED_XDPSTACKD: str(exe),
                CONFIG_DIR: str(dirs.conf),
                **({} if runtime_mounted else {RUNTIME_DIR: str(dirs.run)}),
            },
        )
        self.notify = NotifyListener(dirs.notify / "notify")
        env = unit_environment(
            notify_socket=str(self.notify.path),
            watchdog_usec=watchdog_usec,
            runtime_directory=RUNTIME_DIR if runtime_mounted else str(dirs.run),
        )
        command = wrap(self.argv) if wrap is not None else self.argv
        self.full_argv = ["ip", "netns", "exec", pair.host_ns, *command]
        self._log = open(dirs.log, "ab")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            self.full_argv,
            env=env,
            cwd="/",
            umask=0o077,  # the unit's UMask=
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec_fn,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.dirs.log.read_text(errors="replace")

    def describe(self) -> str:
        return (
            f"argv: {self.full_argv}\nnotify: {self.notify.summary()}\nlog:\n{self.log()[-6000:]}"
        )

    def wait_ready(self) -> Any:
        try:
            return self.notify.wait_for("READY", "1", READY_TIMEOUT_S, alive=self.alive)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.describe()}") from None

    def stop(self) -> tuple[int, Any]:
        """SIGTERM as systemd sends it; (exit status, the STOPPING=1 message)."""
        os.kill(self.pid, signal.SIGTERM)
        stopping = self.notify.wait_for("STOPPING", "1", STOP_TIMEOUT_S, alive=self.alive)
        status = self.proc.wait(STOP_TIMEOUT_S)
        return status, stopping

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)
        self.notify.close()
        self._log.close()


@contextlib.contextmanager
def unit_run(*args: Any, **kwargs: Any) -> Iterator[UnitRun]:
    run = UnitRun(*args, **kwargs)
    try:
        yield run
    finally:
        run.close()


def test_notify_protocol(veth_pair: VethPair, unit_dirs: UnitDirs) -> None:
    pair = veth_pair
    assert pair.host_ns is not None
    ports_before = _reserved_ports(pair.host_ns)
    with unit_run(pair, unit_dirs, watchdog_usec=WATCHDOG_USEC) as unit:
        ready = unit.wait_ready()
        # READY=1 means "clients may connect now": the API socket must accept at once.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(unit.socket_path))
        except OSError as exc:
            raise AssertionError(f"READY=1 came before the API socket accepted: {exc}") from None
        finally:
            probe.close()
        assert ready.pid == unit.pid, "READY=1 must come from the main PID (NotifyAccess=main)"
        assert ready.fields.get("STATUS") == "serving"
        # the template's shell passed the instance's file, and became the daemon
        cmdline = Path(f"/proc/{unit.pid}/cmdline").read_bytes().split(b"\0")
        assert str(unit.config_path).encode() in cmdline, cmdline
        assert b"--interface" in cmdline and unit.ifname.encode() in cmdline, cmdline
        assert stat.S_IMODE(os.stat(unit.socket_path).st_mode) == 0o660
        with xdpstack.connect(unit.socket_path) as lib:
            assert lib.control(Op.STATUS)

        # keep-alives: every WATCHDOG_USEC / 2, from the event loop
        interval = WATCHDOG_USEC / 2e6
        until = time.monotonic() + 5.5 * interval
        while (left := until - time.monotonic()) > 0:
            unit.notify.receive(left)
        beats = [m for m in unit.notify.messages if m.fields.get("WATCHDOG") == "1"]
        assert len(beats) >= 4, unit.describe()
        assert all(m.pid == unit.pid for m in beats)
        times = [ready.at] + [m.at for m in beats]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) < 2 * interval, f"a keep-alive came late: gaps {gaps}"
        assert 0.8 * interval <= statistics.median(gaps) <= 1.3 * interval, f"gaps {gaps}"

        status, stopping = unit.stop()
        assert stopping.pid == unit.pid
        assert status == 0, unit.describe()
    assert not unit.socket_path.exists(), "the daemon left its API socket behind"
    assert not _xdp_attached(pair.host_ns, pair.host_if), "XDP program left attached"
    assert _reserved_ports(pair.host_ns) == ports_before


def _echo(lib: xdpstack.Lib, qd: int, data: bytes, timeout: float = 30.0) -> bytes:
    lib.wait(lib.push(qd, data), timeout=timeout)
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < len(data):
        result = lib.wait(lib.pop(qd), timeout=max(deadline - time.monotonic(), 0.1))
        assert result.data, "EOF before the echo was complete"
        got += result.data
    return got


def test_serves_under_the_unit_sandbox(
    veth_pair: VethPair, unit_dirs: UnitDirs, record_property: Callable[[str, Any], None]
) -> None:
    _require_tools("ip", "unshare", "setpriv", "mount")
    pair = veth_pair
    assert pair.host_ns is not None
    unit = load_unit(TEMPLATE_UNIT)
    caps = unit_capabilities(unit, "AmbientCapabilities")
    assert caps == unit_capabilities(unit, "CapabilityBoundingSet")
    assert unit_value(unit, "Service", "LimitMEMLOCK") == "infinity"
    granted = list(caps)
    preexec: Callable[[], None] | None = raise_memlock
    if not memlock_can_be_unlimited():
        # LimitMEMLOCK=infinity cannot be reproduced here (no CAP_SYS_RESOURCE even for
        # root): CAP_IPC_LOCK lifts the same limit for the UMEM (xdp_umem_account_pages).
        granted.append("CAP_IPC_LOCK")
        preexec = None
        record_property("memlock", "CAP_IPC_LOCK stands for LimitMEMLOCK=infinity")
    mdwe = mdwe_supported()
    record_property("mdwe", mdwe)
    watchdog_usec = int(float(unit_value(unit, "Service", "WatchdogSec") or 0) * 1e6)
    mode = int(unit_value(unit, "Service", "RuntimeDirectoryMode") or "0755", 8)
    os.chown(unit_dirs.run, SERVICE_UID, SERVICE_GID)
    unit_dirs.run.chmod(mode)
    ports_before = _reserved_ports(pair.host_ns)

    os.makedirs(RUNTIME_DIR, exist_ok=True)  # the mount point (root's, as on a real system)

    def wrap(argv: list[str]) -> list[str]:
        return sandbox_argv(
            argv,
            unit=unit,
            runtime_directory=str(unit_dirs.run),
            capabilities=granted,
            mdwe=mdwe,
        )

    server = kernel_tcp_server(pair.netns, 0, "echo")
    with unit_run(
        pair,
        unit_dirs,
        watchdog_usec=watchdog_usec,
        wrap=wrap,
        preexec_fn=preexec,
        runtime_mounted=True,
    ) as run:
        ready = run.wait_ready()
        assert ready.pid == run.pid
        # who it runs as: the service user, the granted capabilities and nothing else
        assert uids_of(run.pid) == (SERVICE_UID, SERVICE_GID)
        have = capabilities_of(run.pid)
        want = capability_mask(granted)
        assert have["CapEff"] == want and have["CapPrm"] == want, have
        assert have["CapBnd"] == want and have["CapAmb"] == want, have
        assert "NoNewPrivs:\t1" in Path(f"/proc/{run.pid}/status").read_text()
        # shared-address mode reserved the ephemeral ports through the read-only /proc/sys
        assert _reserved_ports(pair.host_ns) != ports_before
        st = os.stat(run.socket_path)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            SERVICE_UID,
            SERVICE_GID,
            0o660,
        )
        # it serves: a TCP connection from the stack to the kernel's echo server
        data = pattern_bytes(64 * 1024)
        with xdpstack.connect(run.socket_path) as lib:
            qd = lib.socket()
            lib.wait(lib.connect(qd, (pair.peer_ip, server.port)), timeout=30)
            assert _echo(lib, qd, data) == data
            lib.close(qd)
        status, _stopping = run.stop()
        assert status == 0, run.describe()
    server.stop()
    assert not _xdp_attached(pair.host_ns, pair.host_if), "XDP program left attached"
    assert _reserved_ports(pair.host_ns) == ports_before, "reserved ports not given back"


def _syscall_groups() -> dict[str, list[str]]:
    """``systemd-analyze syscall-filter``: group name -> members (names and @groups)."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif line.strip() and not line.strip().startswith("#") and current is not None:
            current.append(line.strip())
    return groups


def _expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= _expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def _unit_syscall_filter(unit: Any, groups: dict[str, list[str]]) -> set[str]:
    """The system calls the unit's SystemCallFilter= lines allow (an allow list, then ~deny
    lists taken out of it)."""
    allowed: set[str] = set()
    for value in unit_values(unit, "Service", "SystemCallFilter"):
        if value.startswith("~"):
            allowed -= _expand(value[1:].split(), groups)
        else:
            allowed |= _expand(value.split(), groups)
    return allowed


def test_system_calls_and_socket_families_within_the_unit_filters(
    veth_pair: VethPair, unit_dirs: UnitDirs, tmp_path: Path
) -> None:
    """Every system call the service makes (the template's shell included) from start-up
    through a TCP echo to its exit is in the unit's SystemCallFilter=, and every socket
    family it opens is in RestrictAddressFamilies=: traced with strace."""
    _require_tools("ip", "strace", "systemd-analyze")
    pair = veth_pair
    unit = load_unit(TEMPLATE_UNIT)
    allowed = _unit_syscall_filter(unit, _syscall_groups())
    families = set(" ".join(unit_values(unit, "Service", "RestrictAddressFamilies")).split())
    trace = tmp_path / "strace.out"

    def wrap(argv: list[str]) -> list[str]:
        return ["strace", "-f", "-qq", "-o", str(trace), "--", *argv]

    server = kernel_tcp_server(pair.netns, 0, "echo")
    with unit_run(pair, unit_dirs, watchdog_usec=WATCHDOG_USEC, wrap=wrap) as run:
        ready = run.wait_ready()
        data = pattern_bytes(16 * 1024)
        with xdpstack.connect(run.socket_path) as lib:
            qd = lib.socket()
            lib.wait(lib.connect(qd, (pair.peer_ip, server.port)), timeout=30)
            assert _echo(lib, qd, data) == data
            lib.close(qd)
        os.kill(ready.pid, signal.SIGTERM)  # the daemon (strace is the process we started)
        assert run.proc.wait(STOP_TIMEOUT_S) == 0, run.describe()
    server.stop()
    used: set[str] = set()
    opened: set[str] = set()
    for line in trace.read_text(errors="replace").splitlines():
        m = re.match(r"\d+\s+(?:<\.\.\. )?([a-z_0-9]+)[( ]", line)
        if m and not line.split(None, 1)[1].startswith(("+++", "---")):
            used.add(m.group(1))
        if f := re.search(r"\bsocket\((AF_[A-Z0-9]+)", line):
            opened.add(f.group(1))
    assert used, "strace recorded nothing"
    assert "bpf" in used and "execve" in used
    assert not used - allowed, f"system calls the unit's filter refuses: {sorted(used - allowed)}"
    assert opened and not opened - families, f"socket families refused: {opened - families}"
