"""The real ``xdpstackd`` on a veth pair, for the integration tests in this directory.

A :class:`DaemonProcess` runs ``ip netns exec <stack_ns> .venv/bin/xdpstackd --interface
<stack_if> --socket <tmp>/xdpstackd.sock --config <tmp>/xdpstackd.toml`` with its stdout and
stderr in a log file, waits until it serves (the ``ready:`` log line, then a hello through
the client library), and stops it with SIGTERM (exit status 0 asserted, no XDP program left
on the interface asserted). Only processes started here are ever signalled, by PID.

The module also holds small helpers the tests share: waiting on conditions, reading
``ip link`` and ``ip_local_reserved_ports`` of a namespace, echo exchanges through the
client library, and :class:`Worker` (a client-library process driven over stdin/stdout).

Imported as ``xdpd_harness`` (pytest puts this directory on ``sys.path``; the name is
unique in the repository, as it must be for modules outside packages).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from netfixtures import stop_all_peers

import xdpstack
from xdpstack.protocol import Op
from xdpstackd.netns import VethPair, create_veth_pair, destroy, unique_prefix

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
WORKER_SCRIPT = HERE / "client_worker.py"

#: bcc compiles the XDP program at start-up: seconds on an idle machine, more on a busy one.
READY_TIMEOUT_S = 90.0
#: SIGTERM to exit: abort connections, close clients, detach XDP.
STOP_TIMEOUT_S = 20.0
#: The daemon's ephemeral port range (``tcp.ephemeral_ports``' default).
EPHEMERAL_PORTS = (49152, 65535)

XDP_IN_LINK = re.compile(r"\bxdp(?:generic|drv|offload)?\b|prog/xdp")


def daemon_executable() -> Path | None:
    """``<repo>/.venv/bin/xdpstackd``, else the one next to this Python; None if neither."""
    candidates = [REPO / ".venv" / "bin" / "xdpstackd", Path(sys.executable).parent / "xdpstackd"]
    for path in candidates:
        if path.exists():
            return path
    return None


def client_python() -> str:
    """A Python that imports ``xdpstack`` (the repository's venv, else this one)."""
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


# --------------------------------------------------------------------------- waiting
def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.02,
    detail: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` until it returns something true; return that. On timeout raise
    ``AssertionError`` naming ``what`` (and ``detail()``, if given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        time.sleep(interval)


# --------------------------------------------------------------------------- namespaces
def run_in(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=check
    )


def link_show(netns: str, ifname: str) -> str:
    """``ip -n NS -d link show IF`` (details: the attached XDP program and its mode)."""
    proc = subprocess.run(
        ["ip", "-n", netns, "-d", "link", "show", ifname], capture_output=True, text=True
    )
    assert proc.returncode == 0, f"ip -n {netns} link show {ifname}: {proc.stderr.strip()}"
    return proc.stdout


def xdp_attached(netns: str, ifname: str) -> bool:
    """Whether ``ip link`` shows an XDP program on ``ifname`` (any mode)."""
    return XDP_IN_LINK.search(link_show(netns, ifname)) is not None


def parse_port_ranges(text: str) -> set[int]:
    """``"1000,2000-2002"`` -> {1000, 2000, 2001, 2002}."""
    ports: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        ports.update(range(int(low), int(high or low) + 1))
    return ports


def reserved_ports(netns: str) -> set[int]:
    """``net.ipv4.ip_local_reserved_ports`` of namespace ``netns``."""
    return parse_port_ranges(
        run_in(netns, "cat", "/proc/sys/net/ipv4/ip_local_reserved_ports").stdout
    )


def set_sysctl(netns: str, name: str, value: str) -> None:
    run_in(netns, "sysctl", "-q", "-w", f"{name}={value}")


# --------------------------------------------------------------------------- the daemon
class DaemonExited(AssertionError):
    pass


@dataclass
class DaemonProcess:
    """One ``xdpstackd`` on ``pair.host_if`` in namespace ``pair.host_ns``."""

    pair: VethPair
    workdir: Path
    name: str = "xdpstackd"
    socket_path: Path | None = None
    config_text: str = '[daemon]\nlog_level = "info"\n'
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    config_path: Path = field(init=False)
    exit_status: int | None = None
    ready: bool = False  # it served (the "ready:" line and a hello)
    signalled: bool = False  # this harness sent it SIGTERM or SIGKILL
    _clients: list[xdpstack.Lib] = field(default_factory=list)
    _log_file: Any = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.socket_path is None:
            self.socket_path = self.workdir / "xdpstackd.sock"
        self.log_path = self.workdir / f"{self.name}.log"
        self.config_path = self.workdir / f"{self.name}.toml"

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc is not None else None
        return f"<DaemonProcess {self.name} pid {pid} on {self.pair.host_if} log {self.log_path}>"

    # -- facts ------------------------------------------------------------------------
    @property
    def stack_ns(self) -> str:
        assert self.pair.host_ns is not None
        return self.pair.host_ns

    @property
    def peer_ns(self) -> str:
        return self.pair.netns

    @property
    def stack_if(self) -> str:
        return self.pair.host_if

    @property
    def peer_if(self) -> str:
        return self.pair.peer_if

    @property
    def stack_ip(self) -> str:
        assert self.pair.host_ip is not None
        return self.pair.host_ip

    @property
    def peer_ip(self) -> str:
        return self.pair.peer_ip

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 300) -> str:
        text = self.log().splitlines()
        head = (
            [f"[... {len(text) - lines} earlier lines in {self.log_path}]"]
            if len(text) > lines
            else []
        )
        return "\n".join(head + text[-lines:])

    def describe(self) -> str:
        status = "running" if self.running else f"exited {self.proc.poll() if self.proc else None}"
        return (
            f"{self.name} pid {self.proc.pid if self.proc else None} ({status}) on "
            f"{self.stack_if} in {self.stack_ns}; log {self.log_path}:\n{self.log_tail(80)}"
        )

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = READY_TIMEOUT_S) -> DaemonProcess:
        exe = daemon_executable()
        assert exe is not None, "xdpstackd is not installed: run scripts/setup.sh"
        self.config_path.write_text(self.config_text)
        argv = [
            "ip", "netns", "exec", self.stack_ns, str(exe),
            "--interface", self.stack_if,
            "--socket", str(self.socket_path),
            "--config", str(self.config_path),
        ]  # fmt: skip
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("XDPSTACK_SOCKET", None)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 (closed in wait_exit)
        self._log_file.write(f"### {' '.join(argv)}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.workdir,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        def ready_line() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise DaemonExited(
                    f"{self.name} exited with status {self.proc.returncode} before it was "
                    f"ready:\n{self.log_tail(80)}"
                )
            return "ready:" in self.log()

        wait_until(ready_line, timeout, f"{self.name} to log 'ready:'", 0.05, self.describe)

        def hello() -> bool:
            try:
                lib = xdpstack.connect(self.socket_path)
            except OSError:
                return False
            lib.disconnect()
            return True

        wait_until(hello, 10.0, f"a hello from {self.name}", 0.05, self.describe)
        self.ready = True

    def client(self) -> xdpstack.Lib:
        """A new client-library connection; disconnected at teardown."""
        lib = xdpstack.connect(self.socket_path)
        self._clients.append(lib)
        return lib

    def stats(self) -> dict[str, Any]:
        """The daemon's STATS control reply (engine, datapath, XDP and API counters)."""
        with xdpstack.connect(self.socket_path) as lib:
            return lib.control(Op.STATS)

    def connections(self) -> list[dict[str, Any]]:
        with xdpstack.connect(self.socket_path) as lib:
            return lib.control(Op.CONNECTIONS)

    def kill(self) -> int:
        """SIGKILL (a crash): nothing is cleaned up by the daemon. Returns the status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signalled = True
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.wait_exit(STOP_TIMEOUT_S)

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait for the exit; its status (SIGKILL and AssertionError if the
        daemon does not exit within ``timeout``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.signalled = True
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.wait_exit(STOP_TIMEOUT_S)
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s of SIGTERM (killed):\n"
                f"{self.log_tail(80)}"
            ) from None

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        status = self.proc.wait(timeout)
        self.exit_status = status
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return status

    def stop_and_check(self) -> None:
        """SIGTERM; assert exit status 0 and no XDP program left on the interface."""
        if self.proc is None:
            return
        was_running = self.proc.poll() is None
        status = self.terminate()
        self.disconnect_clients()
        if was_running:
            assert status == 0, f"{self.name} exited with status {status}:\n{self.log_tail(80)}"
            link = link_show(self.stack_ns, self.stack_if)
            assert XDP_IN_LINK.search(link) is None, (
                f"XDP program left on {self.stack_if} after SIGTERM:\n{link}"
            )

    def disconnect_clients(self) -> None:
        for lib in self._clients:
            lib.disconnect()
        self._clients.clear()

    def force_cleanup(self) -> None:
        """Never leave the process behind (teardown after a failure)."""
        self.disconnect_clients()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


# --------------------------------------------------------------------------- the lab
#: The daemons a test (item stash) or a module (module stash) used: their logs go into the
#: report of a failing test (conftest.py's makereport hook).
DAEMONS_KEY = pytest.StashKey[list[DaemonProcess]]()


def _remember(node: pytest.Item | pytest.Collector, daemon: DaemonProcess) -> None:
    node.stash.setdefault(DAEMONS_KEY, []).append(daemon)


class DaemonLab:
    """Veth pairs and daemons on them; everything removed by :meth:`close`."""

    def __init__(self, node: pytest.Item | pytest.Collector, workdir: Path) -> None:
        self.node = node
        self.workdir = workdir
        self.pairs: list[VethPair] = []
        self.daemons: list[DaemonProcess] = []

    def pair(self, **kwargs: Any) -> VethPair:
        kwargs.setdefault("prefix", unique_prefix("it"))
        kwargs.setdefault("host_ns", "new")
        pair = create_veth_pair(**kwargs)
        self.pairs.append(pair)
        return pair

    def daemon(
        self,
        pair: VethPair | None = None,
        *,
        name: str | None = None,
        start: bool = True,
        **kw: Any,
    ) -> DaemonProcess:
        """A daemon on ``pair`` (a new pair if None), started unless ``start=False``."""
        if pair is None:
            pair = self.pair()
        name = name or f"xdpstackd-{len(self.daemons) + 1}"
        daemon = DaemonProcess(pair=pair, workdir=self.workdir, name=name, **kw)
        self.daemons.append(daemon)
        _remember(self.node, daemon)
        if start:
            daemon.start()
        return daemon

    def close(self) -> None:
        """Stop every daemon still running (SIGTERM, status 0, no XDP left: asserted),
        then remove everything, whatever happened. Raises the first failure."""
        errors: list[BaseException] = []
        stop_all_peers()
        for daemon in reversed(self.daemons):
            try:
                if daemon.running:
                    daemon.stop_and_check()
                elif daemon.ready and not daemon.signalled:
                    raise AssertionError(
                        f"{daemon.name} exited by itself during the test (status "
                        f"{daemon.proc.poll() if daemon.proc else None}):\n{daemon.log_tail(80)}"
                    )
            except BaseException as exc:
                errors.append(exc)
            finally:
                with contextlib.suppress(Exception):
                    daemon.force_cleanup()
        for pair in reversed(self.pairs):
            try:
                destroy(pair)
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


# --------------------------------------------------------------------------- data
def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def echo_exchange(lib: xdpstack.Lib, qd: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Push ``data`` and pop until as many bytes came back (pipelined, so large data does
    not deadlock against an echo peer); returns what came back."""
    deadline = time.monotonic() + timeout
    chunk = 256 << 10
    sent = 0
    received = bytearray()
    push_qt: int | None = None
    pop_qt = lib.pop(qd)
    while len(received) < len(data):
        if push_qt is None and sent < len(data):
            push_qt = lib.push(qd, data[sent : sent + chunk])
            sent += min(chunk, len(data) - sent)
        tokens = [t for t in (pop_qt, push_qt) if t is not None]
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"echo: {len(received)} of {len(data)} bytes back in {timeout}s")
        index, result = lib.wait_any(tokens, timeout=left)
        if tokens[index] == pop_qt:
            assert result.data, f"echo: EOF after {len(received)} of {len(data)} bytes"
            received += result.data
            pop_qt = lib.pop(qd) if len(received) < len(data) else None
        else:
            push_qt = None
    if pop_qt is not None:  # pragma: no cover (the loop consumes it)
        lib.wait(pop_qt, timeout=timeout)
    return bytes(received)


def pop_until_eof(lib: xdpstack.Lib, qd: int, timeout: float = 30.0) -> tuple[int, str]:
    """Pop until end of stream; (bytes, sha256 hex)."""
    deadline = time.monotonic() + timeout
    digest = hashlib.sha256()
    total = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no EOF within {timeout}s ({total} bytes popped)")
        data = lib.wait(lib.pop(qd), timeout=left).data
        if not data:
            return total, digest.hexdigest()
        digest.update(data)
        total += len(data)


def errno_name(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- client worker
class Worker:
    """``client_worker.py`` in its own process (the client library in another process):
    JSON lines out, JSON lines in. Killed by PID at :meth:`stop`."""

    def __init__(self, *args: str) -> None:
        self.argv = [client_python(), "-u", str(WORKER_SCRIPT), *args]
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                try:
                    self.events.put(json.loads(line))
                except ValueError:
                    self.events.put({"event": "garbage", "line": line})
        self.events.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def expect(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """The next event named ``name`` (other events are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise AssertionError(
                    f"worker pid {self.pid}: no {name!r} within {timeout}s; "
                    f"stderr: {self.stderr.strip()}"
                ) from None
            if event is None:
                self.events.put(None)
                raise AssertionError(
                    f"worker pid {self.pid} exited (rc={self.proc.wait()}) before {name!r}; "
                    f"stderr: {self.stderr.strip()}"
                )
            if event.get("event") == "error":
                raise AssertionError(f"worker pid {self.pid} failed: {event}")
            if event.get("event") == name:
                return event

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(10)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for thread in self._threads:
            thread.join(timeout=2)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
