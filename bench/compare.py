#!/usr/bin/env python3
"""xdpstack against the Linux kernel's TCP, in one run, on one veth pair.

    .venv/bin/python bench/compare.py            # the default run (a few minutes)
    .venv/bin/python bench/compare.py --smoke    # seconds: every metric, tiny sizes

It makes two network namespaces joined by a veth pair: the *stack end* (where the server
runs: on the kernel's TCP, or on ``xdpstackd`` attached to that end) and the *client end*
(the client, always on the kernel's TCP, with tx checksum offload off as the stack needs).
The client and server programs (``compare_workload.py``) are the same Python code on both
stacks: the kernel's server uses the standard library's ``socket``, xdpstack's uses
``xdpstack.socket``. For each repetition and MTU the kernel runs first (with its offloads as
they are, then with TSO/GSO/GRO off), then a fresh daemon is started, measured and stopped
(SIGTERM), so the kernel is never measured with an XDP program on the link.

Metrics: bulk goodput each direction on one connection (``up``: client to stack end,
``down``: stack end to client) at each MTU; request/response round trips of 64-byte
messages (p50, p99, round trips per second); connections per second (connect, one
exchange, close: the server closes first and the client resets, so nobody keeps a
TIME_WAIT; checked after each run); how many idle connections the server side holds
(ramped to ``--conns``, 100,000, within ``--hold-seconds``, with the reason it stopped; on
several ports, one server and one client process per port, as RLIMIT_NOFILE is per
process), the memory per connection (the daemon's VmRSS delta; for the kernel, its slab
growth less the client sockets' share, measured in the xdpstack run), and how many
connections the stack still holds after the clients reset them all at ``--release-rate``.

Results: ``bench/results/compare-<timestamp>.json`` and ``.png``, and a table of medians with
the ratio xdpstack/kernel. Everything it creates (namespaces, veth pair, daemon, workers) is
removed at the end, also on Ctrl-C, SIGTERM and errors; only processes it started are
signalled, by PID. Needs root, AF_XDP and ``ethtool``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _root in ("daemon", "client"):  # run from a checkout without installing
    if str(REPO / _root) not in sys.path:
        sys.path.append(str(REPO / _root))

import compare_report  # noqa: E402  (bench/ is this script's directory)

import xdpstack  # noqa: E402
from xdpstack.protocol import Op  # noqa: E402
from xdpstackd.netns import (  # noqa: E402
    VethPair,
    cleanup_stale,
    create_veth_pair,
    destroy,
    unique_prefix,
)

WORKLOAD = HERE / "compare_workload.py"
RESULTS = HERE / "results"
PREFIX_TAG = "bench"  # namespaces xdps-bench-<pid>-<n>-{host,peer}
#: Native XDP on a veth takes at most this MTU (the daemon refuses more in native mode;
#: generic mode would allow 3826 but runs the slow skb path, so native it is).
NATIVE_VETH_MAX_MTU = 3506
READY_TIMEOUT_S = 90.0
#: Idle connections one process (a hold server or a hold client) keeps at most: a process
#: holds at most RLIMIT_NOFILE descriptors (the hard limit here is 20,000 and, without
#: CAP_SYS_RESOURCE, cannot be raised), so the idle ramp runs several server processes,
#: each listening on its own port with one client process of its own, on both stacks.
#: Several server ports also widen the 4-tuple space: one client address has ~55,000
#: ephemeral ports per destination port, and connect() reuses them across destinations.
HOLD_CONNS_PER_PROCESS = 16_000
#: After the paced release, how long the stack may take to drop the reset connections,
#: and how long an unchanged count means the rest will stay (their RSTs were lost).
RELEASE_SETTLE_S = 60.0
RELEASE_STUCK_S = 5.0
#: RSTs per second when the idle connections are released (--release-rate), in batches of
#: RELEASE_BATCH: a burst of RSTs overruns the receiver (xdpstackd's AF_XDP fill ring).
RELEASE_RATE = 5000.0
RELEASE_BATCH = 100
KERNEL = "kernel"
KERNEL_NO_OFFLOAD = "kernel-no-offload"
XDPSTACK = "xdpstack"
OFFLOADS = ("tso", "gso", "gro")


class BenchError(RuntimeError):
    """A measurement that could not be made; the message says which and why."""


def log(message: str) -> None:
    print(message, flush=True)


# =====================================================================================
# processes
# =====================================================================================
class Worker:
    """A process this script started (by PID); its stdout's JSON lines go to a queue."""

    def __init__(self, name: str, argv: list[str], stderr_path: Path, stdin: bool = False):
        self.name = name
        self.argv = argv
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,  # Ctrl-C reaches only compare.py, which stops us in order
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                try:
                    self.events.put(json.loads(line))
                except ValueError:
                    self.events.put({"event": "garbage", "line": line})
        self.events.put(None)

    def stderr_tail(self, lines: int = 15) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def expect(self, name: str, timeout: float) -> dict[str, Any]:
        """The next ``name`` event (others are skipped); BenchError on error, exit or
        timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                event = self.events.get(timeout=max(left, 0.001))
            except queue.Empty:
                raise BenchError(f"{self.name}: no {name!r} within {timeout:g} s") from None
            if event is None:
                self.events.put(None)
                raise BenchError(
                    f"{self.name} exited (status {self.proc.wait()}) before {name!r}: "
                    f"{self.stderr_tail()}"
                )
            if event.get("event") == "error":
                raise BenchError(f"{self.name}: {event.get('error')}")
            if event.get("event") == name:
                return event

    def drain(self) -> list[dict[str, Any]]:
        """The events already there (without waiting)."""
        found = []
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return found
            if event is None:
                self.events.put(None)
                return found
            found.append(event)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
        """Signal (by PID) and reap; SIGKILL if it does not exit within ``timeout``."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self._thread.join(timeout=2)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr.close()
        return self.proc.returncode


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (also readable while it is a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def slab_kb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    return 0


def memory(server_pids: list[int], daemon_pid: int | None) -> dict[str, int]:
    return {
        "server_rss_kb": sum(rss_kb(pid) for pid in server_pids),
        "daemon_rss_kb": rss_kb(daemon_pid) if daemon_pid else 0,
        "slab_kb": slab_kb(),
    }


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Counters that moved, by how much."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal positive shares."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def established_count(ns: str, ports: list[int]) -> int:
    """Established connections on the local ``ports`` in namespace ``ns`` (``ss``)."""
    flt = "( " + " or ".join(f"sport = :{port}" for port in ports) + " )"
    out = run(["ip", "netns", "exec", ns, "ss", "-Htn", "state", "established", flt])
    return len([line for line in out.splitlines() if line.strip()])


def ramp_reason(holdings: list[dict[str, Any]], established: int, bound: int) -> str:
    """Why the idle ramp stopped, over all client processes (each says why it did)."""
    if established >= bound:
        return f"reached the bound of {bound} connections"
    reasons: dict[str, int] = {}
    for h in holdings:
        text = str(h["reason"])
        if text.startswith("reached the bound"):
            text = "reached its share of the bound"
        reasons[text] = reasons.get(text, 0) + 1
    return "; ".join(
        f"{text} ({n} of {len(holdings)} clients)" for text, n in sorted(reasons.items())
    )


def run(argv: list[str], check: bool = True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}")
    return proc.stdout


# =====================================================================================
# the lab: namespaces, the veth pair, the daemon, the workers
# =====================================================================================
class Lab:
    """Everything one run creates; :meth:`close` removes it, whatever happened."""

    def __init__(self, workdir: Path, python: str) -> None:
        self.workdir = workdir
        self.python = python
        self.pair: VethPair | None = None
        self.workers: list[Worker] = []
        self.finished: list[Worker] = []  # of the current measurement (for its errors)
        self.daemon: Worker | None = None
        self.daemon_log = workdir / "xdpstackd.log"
        self.socket_path = workdir / "xdpstackd.sock"
        self._port = 20000
        self._offload_defaults: dict[str, dict[str, str]] = {}
        self.cprofile_dir: Path | None = None
        self.daemon_options: list[str] = []  # extra [daemon] lines: KEY = VALUE
        self._daemon_starts = 0

    # -- the link ---------------------------------------------------------------------
    def create(self, mtu: int) -> VethPair:
        cleanup_stale(f"xdps-{PREFIX_TAG}-")  # leftovers of earlier runs that died
        self.pair = create_veth_pair(prefix=unique_prefix(PREFIX_TAG), host_ns="new", mtu=mtu)
        # The client end churns through ports (connections per second, 20k idle ones).
        self.sysctl(self.client_ns, "net.ipv4.ip_local_port_range", "10000 65000")
        for ns in (self.stack_ns, self.client_ns):
            self.sysctl(ns, "net.core.somaxconn", "4096")
            self.sysctl(ns, "net.ipv4.tcp_max_syn_backlog", "4096")
        self._offload_defaults = {
            self.pair.host_if: self.offloads(self.stack_ns, self.pair.host_if),
            self.pair.peer_if: self.offloads(self.client_ns, self.pair.peer_if),
        }
        return self.pair

    @property
    def stack_ns(self) -> str:
        assert self.pair is not None and self.pair.host_ns is not None
        return self.pair.host_ns

    @property
    def client_ns(self) -> str:
        assert self.pair is not None
        return self.pair.netns

    @property
    def stack_ip(self) -> str:
        assert self.pair is not None and self.pair.host_ip is not None
        return self.pair.host_ip

    def ends(self) -> list[tuple[str, str]]:
        assert self.pair is not None
        return [(self.stack_ns, self.pair.host_if), (self.client_ns, self.pair.peer_if)]

    @staticmethod
    def sysctl(ns: str, name: str, value: str) -> None:
        run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{name}={value}"])

    def set_mtu(self, mtu: int) -> None:
        for ns, ifname in self.ends():
            run(["ip", "-n", ns, "link", "set", "dev", ifname, "mtu", str(mtu)])

    @staticmethod
    def offloads(ns: str, ifname: str) -> dict[str, str]:
        """tx checksumming, TSO, GSO, GRO of ``ifname``: {"tx": "on", "tso": "off", ...}."""
        names = {
            "tx-checksumming": "tx",
            "tcp-segmentation-offload": "tso",
            "generic-segmentation-offload": "gso",
            "generic-receive-offload": "gro",
        }
        out = {}
        for line in run(["ip", "netns", "exec", ns, "ethtool", "-k", ifname]).splitlines():
            key, _, value = line.partition(":")
            if key.strip() in names:
                out[names[key.strip()]] = value.split()[0] if value.split() else "?"
        return out

    def offload_state(self) -> dict[str, dict[str, str]]:
        return {ifname: self.offloads(ns, ifname) for ns, ifname in self.ends()}

    def set_offloads(self, on: bool) -> None:
        """TSO/GSO/GRO off on both ends, or back to what they were at creation."""
        for ns, ifname in self.ends():
            defaults = self._offload_defaults.get(ifname, {})
            args = []
            for feature in OFFLOADS:
                value = "off" if not on else defaults.get(feature, "on")
                args += [feature, value]
            # ethtool exits non-zero when a feature cannot change (fixed): not an error here
            run(["ip", "netns", "exec", ns, "ethtool", "-K", ifname, *args], check=False)

    # -- processes --------------------------------------------------------------------
    def spawn(self, name: str, ns: str, argv: list[str], stdin: bool = False) -> Worker:
        worker = Worker(
            name,
            ["ip", "netns", "exec", ns, *argv],  # ip netns exec execs: the PID is argv's
            self.workdir / f"{name.replace(' ', '-')}.stderr",
            stdin=stdin,
        )
        self.workers.append(worker)
        return worker

    def worker_errors(self) -> str:
        """What the workers of the failed measurement said (errors, stderr), for the report."""
        notes = []
        for worker in self.finished[-4:]:
            errors = [e.get("error") for e in worker.drain() if e.get("event") == "error"]
            tail = worker.stderr_tail(3).strip()
            if errors or tail:
                notes.append(f"{worker.name}: {'; '.join(map(str, errors)) or tail}")
        self.finished.clear()
        return "".join(f"\n    {note}" for note in notes)

    def next_port(self) -> int:
        self._port += 1
        return self._port

    def server(self, stack: str, mode: str, port: int, **opts: Any) -> Worker:
        argv = [self.python, "-u", str(WORKLOAD), "server", f"--stack={stack}"]
        argv += [f"--mode={mode}", f"--port={port}", f"--socket={self.socket_path}"]
        argv += [f"--{key.replace('_', '-')}={value}" for key, value in opts.items()]
        worker = self.spawn(f"{stack} server {mode} {port}", self.stack_ns, argv)
        worker.expect("ready", 30)
        return worker

    def client(self, mode: str, port: int, stdin: bool = False, **opts: Any) -> Worker:
        argv = [self.python, "-u", str(WORKLOAD), "client", f"--mode={mode}"]
        argv += [f"--host={self.stack_ip}", f"--port={port}"]
        argv += [f"--{key.replace('_', '-')}={value}" for key, value in opts.items()]
        return self.spawn(f"client {mode} {port}", self.client_ns, argv, stdin=stdin)

    def finish(self, *workers: Worker) -> None:
        for worker in workers:
            worker.stop()
            self.finished.append(worker)
            if worker in self.workers:
                self.workers.remove(worker)

    # -- the daemon -------------------------------------------------------------------
    def start_daemon(self) -> Worker:
        assert self.pair is not None
        exe = Path(self.python).parent / "xdpstackd"
        config = self.workdir / "xdpstackd.toml"
        lines = ["[daemon]", 'log_level = "info"', 'xdp_mode = "native"', *self.daemon_options]
        config.write_text("\n".join(lines) + "\n")
        with open(self.daemon_log, "a") as f:
            f.write(f"### start at {time.strftime('%H:%M:%S')}\n")
        argv = [str(exe) if exe.exists() else shutil.which("xdpstackd") or "xdpstackd"]
        if self.cprofile_dir is not None:  # the daemon under cProfile: one file per start
            self._daemon_starts += 1
            out = self.cprofile_dir / f"xdpstackd-{self._daemon_starts}.prof"
            argv = [self.python, "-m", "cProfile", "-o", str(out), *argv]
        argv += ["--interface", self.pair.host_if]
        argv += ["--socket", str(self.socket_path), "--config", str(config)]
        daemon = Worker("xdpstackd", ["ip", "netns", "exec", self.stack_ns, *argv], self.daemon_log)
        self.daemon = daemon
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "ready:" not in self.daemon_log.read_text(errors="replace").split("### start")[-1]:
            if daemon.proc.poll() is not None:
                raise BenchError(
                    f"xdpstackd exited with status {daemon.proc.returncode} before it was "
                    f"ready:\n{daemon.stderr_tail(20)}"
                )
            if time.monotonic() > deadline:
                raise BenchError(f"xdpstackd not ready in {READY_TIMEOUT_S:g} s")
            time.sleep(0.05)
        while True:
            try:
                xdpstack.connect(self.socket_path).disconnect()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        return daemon

    def daemon_stats(self) -> dict[str, Any]:
        with xdpstack.connect(self.socket_path) as lib:
            return lib.control(Op.STATS)

    def stop_daemon(self) -> None:
        daemon, self.daemon = self.daemon, None
        if daemon is None:
            return
        status = daemon.stop(signal.SIGTERM, timeout=30)
        if status not in (0, None):
            log(f"  warning: xdpstackd exited with status {status}: {daemon.stderr_tail(5)}")

    # -- teardown ---------------------------------------------------------------------
    def close(self) -> None:
        for worker in reversed(self.workers):
            with contextlib.suppress(Exception):
                worker.stop(signal.SIGKILL)
        self.workers.clear()
        with contextlib.suppress(Exception):
            self.stop_daemon()
        if self.pair is not None:
            # Our processes are gone; nothing else runs in namespaces with our names.
            try:
                destroy(self.pair, kill_processes=False)
            except Exception as exc:
                log(f"compare.py: could not remove {self.pair.prefix}-*: {exc}")
            self.pair = None


# =====================================================================================
# measurements
# =====================================================================================
@dataclass
class Options:
    reps: int
    mtus: list[int]
    metrics: list[str]
    bulk_seconds: float
    chunk: int
    rr_seconds: float
    msg: int
    cps_seconds: float
    conns: int
    hold_seconds: float
    hold_reps: int
    window: int
    conns_per_process: int = HOLD_CONNS_PER_PROCESS
    release_rate: float = RELEASE_RATE
    profile_dir: Path | None = None


@dataclass
class Record:
    metric: str  # bulk_up, bulk_down, rr, cps, hold
    stack: str
    mtu: int
    rep: int
    values: dict[str, Any] = field(default_factory=dict)


def kernel_tcp_counters(ns: str) -> dict[str, int]:
    """The kernel's ``Tcp:`` counters (/proc/net/snmp) in namespace ``ns``."""
    lines = [
        line.split()
        for line in run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]).splitlines()
        if line.startswith("Tcp:")
    ]
    return dict(zip(lines[0][1:], map(int, lines[1][1:]))) if len(lines) >= 2 else {}


def time_wait_count(ns: str, port: int) -> int:
    """Kernel TIME_WAIT sockets with ``port`` at either end, in namespace ``ns``."""
    flt = f"( sport = :{port} or dport = :{port} )"
    out = run(["ip", "netns", "exec", ns, "ss", "-Htan", "state", "time-wait", flt], check=False)
    return len([line for line in out.splitlines() if line.strip()])


class Profiler:
    """``py-spy record`` on the daemon and on the xdpstack server (the client library's
    process) during xdpstack measurements, when ``--profile-dir`` is given."""

    def __init__(self, directory: Path | None, python: str) -> None:
        self.directory = directory
        self.exe = shutil.which("py-spy") or str(Path(python).parent / "py-spy")
        self.procs: list[subprocess.Popen[bytes]] = []
        if directory is not None:
            if not Path(self.exe).exists():
                raise BenchError("--profile-dir needs py-spy (.venv/bin/pip install py-spy)")
            directory.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def record(self, label: str, pids: dict[str, int]) -> Iterator[None]:
        if self.directory is None:
            yield
            return
        started = []
        for who, pid in pids.items():
            out = self.directory / f"{label}-{who}.txt"
            argv = [self.exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
            argv += ["--nonblocking", "--output", str(out)]
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            started.append(proc)
            self.procs.append(proc)
        time.sleep(0.3)  # py-spy attaches
        try:
            yield
        finally:
            for proc in started:
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
            for proc in started:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(5)
                self.procs.remove(proc)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.procs.clear()


class Bench:
    def __init__(self, lab: Lab, opts: Options, profiler: Profiler) -> None:
        self.lab = lab
        self.opts = opts
        self.profiler = profiler
        self.records: list[Record] = []
        self.errors: list[dict[str, Any]] = []
        self.offloads: dict[str, Any] = {}
        self.step = 0
        self.total_steps = 0
        self.started = time.monotonic()

    # -- bookkeeping ------------------------------------------------------------------
    def progress(
        self, stack: str, mtu: int, what: str, rep: int, text: str, count: bool = True
    ) -> None:
        self.step += count
        elapsed = time.monotonic() - self.started
        log(
            f"[{self.step:3d}/{self.total_steps} {int(elapsed) // 60}:{int(elapsed) % 60:02d}] "
            f"{stack:<18} mtu {mtu:<5} {what:<10} rep {rep}/{self.opts.reps}: {text}"
        )

    def attempt(self, stack: str, mtu: int, what: str, rep: int) -> None:
        """Run one measurement (``what``: bulk-up, bulk-down, rr, cps, hold). A failure is
        reported and recorded in ``errors`` (with the workers' last words and, for xdpstack,
        the daemon's counters), then the measurement is tried once more, so one flaky run
        does not leave a hole; the run goes on either way."""
        for attempt in (1, 2):
            self.lab.finished.clear()
            try:
                if what.startswith("bulk-"):
                    text = self.bulk(stack, what.removeprefix("bulk-"), mtu, rep)
                else:
                    text = getattr(self, what)(stack, mtu, rep)
            except Exception as exc:
                message = (
                    str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
                )
                message += self.lab.worker_errors()
                error: dict[str, Any] = {"stack": stack, "mtu": mtu, "metric": what, "rep": rep}
                error.update(attempt=attempt, error=message, recovered=False)
                if stack == XDPSTACK and self.lab.daemon is not None:
                    with contextlib.suppress(Exception):
                        error["daemon_counters"] = self.daemon_counters()
                with contextlib.suppress(Exception):  # who sent a reset, say
                    error["kernel_tcp"] = {
                        "stack_end": kernel_tcp_counters(self.lab.stack_ns),
                        "client_end": kernel_tcp_counters(self.lab.client_ns),
                    }
                self.errors.append(error)
                again = " (trying once more)" if attempt == 1 else ""
                self.progress(stack, mtu, what, rep, f"FAILED{again}: {message}", count=False)
                continue
            if attempt == 2:
                self.errors[-1]["recovered"] = True
            self.progress(stack, mtu, what, rep, text)
            return
        self.step += 1

    def add(self, metric: str, stack: str, mtu: int, rep: int, **values: Any) -> None:
        self.records.append(Record(metric, stack, mtu, rep, values))

    @contextlib.contextmanager
    def observed(self, stack: str, label: str, server: Worker) -> Iterator[dict[str, Any]]:
        """CPU time of the server app (and of the daemon) while the block runs, the
        daemon's segment counts, and a py-spy profile with ``--profile-dir``; the dict it
        yields is filled in at the end."""
        usage: dict[str, Any] = {}
        daemon = self.lab.daemon if stack == XDPSTACK else None
        pids = {"server_app": server.pid}
        if daemon is not None:
            pids["daemon"] = daemon.pid
        cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        counters = self.daemon_counters() if daemon is not None else {}
        profile: Any = contextlib.nullcontext()
        if daemon is not None:
            profile = self.profiler.record(label, {"daemon": daemon.pid, "client": server.pid})
        started = time.monotonic()
        with profile:
            yield usage
        usage["wall_s"] = wall = time.monotonic() - started
        for name, pid in pids.items():
            used = max(0.0, cpu_seconds(pid) - cpu[name])
            usage[f"{name}_cpu_s"] = used
            usage[f"{name}_cpu_pct"] = used / wall * 100
        if daemon is not None:
            moved = diff(self.daemon_counters(), counters)
            segments = moved.get("stack.tcp_segments_in", 0) + moved.get(
                "stack.tcp_segments_out", 0
            )
            usage["daemon_segments_in"] = moved.get("stack.tcp_segments_in", 0)
            usage["daemon_segments_out"] = moved.get("stack.tcp_segments_out", 0)
            if segments:
                usage["daemon_cpu_us_per_segment"] = usage["daemon_cpu_s"] / segments * 1e6
            usage["daemon_counters"] = moved

    @staticmethod
    def usage_text(usage: dict[str, Any]) -> str:
        text = f"; server app {usage.get('server_app_cpu_pct', 0):.0f}% CPU"
        if "daemon_cpu_pct" in usage:
            text += f", daemon {usage['daemon_cpu_pct']:.0f}% CPU"
        if "daemon_cpu_us_per_segment" in usage:
            text += f" ({usage['daemon_cpu_us_per_segment']:.1f} us/segment)"
        return text

    # -- one measurement each ---------------------------------------------------------
    def bulk(self, stack: str, direction: str, mtu: int, rep: int) -> str:
        lab, opts = self.lab, self.opts
        port = lab.next_port()
        server_stack = XDPSTACK if stack == XDPSTACK else KERNEL
        mode = "sink" if direction == "up" else "source"
        server = lab.server(server_stack, mode, port, chunk=opts.chunk)
        label = f"bulk-{direction}-mtu{mtu}-rep{rep}"
        client = None
        try:
            with self.observed(stack, label, server) as usage:
                client = lab.client(
                    f"bulk-{direction}", port, seconds=opts.bulk_seconds, chunk=opts.chunk
                )
                result = client.expect("result", opts.bulk_seconds + 120)
            server.expect("result", 30)
        finally:
            lab.finish(*(w for w in (client, server) if w is not None))
        mbit = result["bits_per_s"] / 1e6
        self.add(f"bulk_{direction}", stack, mtu, rep, goodput_mbit_s=mbit, **result, **usage)
        return (
            f"{mbit:,.0f} Mbit/s ({result['bytes'] / 1e6:,.0f} MB in {result['seconds']:.2f} s)"
            + self.usage_text(usage)
        )

    def rr(self, stack: str, mtu: int, rep: int) -> str:
        lab, opts = self.lab, self.opts
        port = lab.next_port()
        server = lab.server(stack, "echo", port)
        client = None
        try:
            with self.observed(stack, f"rr-rep{rep}", server) as usage:
                client = lab.client("rr", port, seconds=opts.rr_seconds, msg=opts.msg)
                result = client.expect("result", opts.rr_seconds + 60)
            server.expect("result", 30)
        finally:
            lab.finish(*(w for w in (client, server) if w is not None))
        per_s = result["round_trips"] / result["seconds"]
        self.add("rr", stack, mtu, rep, round_trips_per_s=per_s, **result, **usage)
        return (
            f"p50 {result['p50_us']:.0f} us, p99 {result['p99_us']:.0f} us, "
            f"{per_s:,.0f} round trips/s" + self.usage_text(usage)
        )

    def cps(self, stack: str, mtu: int, rep: int) -> str:
        lab, opts = self.lab, self.opts
        port = lab.next_port()
        server = lab.server(stack, "cps", port)
        client = None
        try:
            with self.observed(stack, f"cps-rep{rep}", server) as usage:
                client = lab.client("cps", port, seconds=opts.cps_seconds, msg=opts.msg)
                result = client.expect("result", opts.cps_seconds + 60)
        finally:
            lab.finish(*(w for w in (client, server) if w is not None))
        if not result["connections"]:
            raise BenchError(f"no connection completed: {result['errors']}")
        per_s = result["connections"] / result["seconds"]
        # Nobody may keep TIME_WAIT (or any state) for this port after the run.
        tw = {
            "client": time_wait_count(lab.client_ns, port),
            "stack": time_wait_count(lab.stack_ns, port),
        }
        if stack == XDPSTACK:
            tw["daemon"] = sum(self.daemon_states(port).values())
        self.add("cps", stack, mtu, rep, connections_per_s=per_s, time_wait=tw, **result, **usage)
        errors = f", errors {result['errors']}" if result["errors"] else ""
        return (
            f"{per_s:,.0f} connections/s (p50 {result['p50_us']:.0f} us); "
            f"left in TIME_WAIT (or any state in the daemon): {tw}{errors}" + self.usage_text(usage)
        )

    def hold(self, stack: str, mtu: int, rep: int) -> str:
        lab, opts = self.lab, self.opts
        # Several server processes, each on its own port with one client process of its
        # own: a process holds at most RLIMIT_NOFILE descriptors (see
        # HOLD_CONNS_PER_PROCESS). The same layout for both stacks.
        shares = split(opts.conns, -(-opts.conns // opts.conns_per_process))
        window = max(1, opts.window // len(shares))
        ports = [lab.next_port() for _ in shares]
        servers: list[Worker] = []
        clients: list[Worker] = []
        daemon_pid = lab.daemon.pid if stack == XDPSTACK and lab.daemon else None
        counters_before = self.daemon_counters() if daemon_pid else {}
        # the client end's kernel TCP counters: SYN retransmissions (RetransSegs) when
        # SYN-ACKs go missing, connects that failed (AttemptFails)
        client_tcp_before = kernel_tcp_counters(lab.client_ns)
        try:
            for port, share in zip(ports, shares):
                servers.append(lab.server(stack, "hold", port, conns=share))
            before = memory([s.pid for s in servers], daemon_pid)
            started = time.monotonic()
            for port, share in zip(ports, shares):
                clients.append(
                    lab.client(
                        "hold",
                        port,
                        stdin=True,
                        conns=share,
                        seconds=opts.hold_seconds,
                        window=window,
                        release_batch=RELEASE_BATCH if opts.release_rate else share,
                        release_pause=RELEASE_BATCH / opts.release_rate if opts.release_rate else 0,
                    )
                )
            holdings = [c.expect("holding", opts.hold_seconds + 60) for c in clients]
            ramp_wall = time.monotonic() - started
            established = sum(int(h["established"]) for h in holdings)
            accepted, accept_errors = self.wait_accepted(
                servers, [int(h["established"]) for h in holdings]
            )
            time.sleep(0.3)  # settle (the last ACKs, the allocator)
            after = memory([s.pid for s in servers], daemon_pid)
            held = self.held(stack, ports)
            counters = diff(self.daemon_counters(), counters_before) if daemon_pid else {}
            client_tcp = diff(kernel_tcp_counters(lab.client_ns), client_tcp_before)
            release = self.release(stack, ports, clients, held)
            stop_before = self.daemon_counters() if daemon_pid else {}
        finally:
            lab.finish(*clients, *servers)
        if stack == XDPSTACK:
            # The apps close what the release left (FINs to a peer that has forgotten them,
            # answered by RSTs): how long the daemon takes to be rid of them, and how.
            release["idle_after_stop_seconds"], release["left_after_stop"] = self.wait_daemon_idle()
            release["stop_counters"] = diff(self.daemon_counters(), stop_before)
        errors: dict[str, int] = {}
        for h in holdings:
            for name, count in h["errors"].items():
                errors[name] = errors.get(name, 0) + count
        reason = ramp_reason(holdings, established, opts.conns)
        for error, count in accept_errors.items():
            reason += f"; {count} server app(s) stopped accepting ({error})"
        per = max(held, 1)
        values = {
            "held": held,  # by the stack: the daemon's connections, or the kernel's (ss)
            "established": established,  # as the client ends see them
            "accepted": accepted,  # by the server apps
            "reason": reason,
            "errors": errors,
            "ramp_seconds": max(h["seconds"] for h in holdings),  # as the clients see it
            "ramp_wall_seconds": ramp_wall,  # from starting the clients to the last one done
            "client_processes": len(shares),
            "server_processes": len(shares),
            "ports": ports,
            "daemon_counters": counters,  # what moved in the daemon during the ramp
            "client_end_tcp": client_tcp,  # and in the client end's kernel
            "server_rss_per_conn_b": (after["server_rss_kb"] - before["server_rss_kb"])
            * 1024
            / per,
            "daemon_rss_per_conn_b": (after["daemon_rss_kb"] - before["daemon_rss_kb"])
            * 1024
            / per,
            "slab_per_conn_b": (after["slab_kb"] - before["slab_kb"]) * 1024 / per,
            "before": before,
            "after": after,
            **release,
        }
        self.add("hold", stack, mtu, rep, **values)
        mem = (
            f"daemon {values['daemon_rss_per_conn_b']:,.0f} B/conn"
            if stack == XDPSTACK
            else f"slab (both ends) {values['slab_per_conn_b']:,.0f} B/conn"
        )
        text = (
            f"{held:,} held on {len(ports)} ports, ramp {values['ramp_wall_seconds']:.1f} s "
            f"({reason}); {mem}, server apps {values['server_rss_per_conn_b']:,.0f} B/conn; "
            f"released in {release['release_seconds']:.1f} s, "
            f"{release['left_after_release']:,} left after it"
        )
        if "left_after_stop" in release:
            text += (
                f", {release['left_after_stop']:,} after the apps stopped "
                f"({release['idle_after_stop_seconds']:.1f} s)"
            )
        return text

    def held(self, stack: str, ports: list[int]) -> int:
        """Connections the stack holds: the daemon's (it runs nothing else then), or the
        kernel's established sockets on ``ports``."""
        if stack == XDPSTACK:
            return int(self.lab.daemon_stats().get("connections", 0))
        return established_count(self.lab.stack_ns, ports)

    def release(
        self, stack: str, ports: list[int], clients: list[Worker], held: int
    ) -> dict[str, Any]:
        """Reset the held connections, then wait for the stack to drop them.

        The clients close with SO_LINGER 0 (an RST each), one client after the other, so
        the pace is one client's (``--release-rate``, 5,000/s by default); with rate 0 all
        clients close all at once. A burst of RSTs overruns the receiver (xdpstackd's
        AF_XDP fill ring), and a connection whose RST is lost stays: what stays is
        recorded, not hidden."""
        counters_before = self.daemon_counters() if stack == XDPSTACK else {}
        started = time.monotonic()
        if self.opts.release_rate:
            for client in clients:
                client.send("release")
                client.expect("released", 120)
        else:
            for client in clients:
                client.send("release")
            for client in clients:
                client.expect("released", 120)
        sent = time.monotonic() - started
        settle_start = time.monotonic()
        last, last_change = -1, settle_start
        while True:
            left = self.held(stack, ports)
            now = time.monotonic()
            waited = now - settle_start
            if left != last:
                last, last_change = left, now
            if left == 0 or now - last_change >= RELEASE_STUCK_S or waited >= RELEASE_SETTLE_S:
                break
            time.sleep(0.25)
        out: dict[str, Any] = {
            "release_seconds": sent,
            "release_rsts_per_s": held / sent if sent else 0.0,
            "left_after_release": left,
            "release_settle_seconds": waited,
        }
        if stack == XDPSTACK:
            out["release_counters"] = diff(self.daemon_counters(), counters_before)
        return out

    @staticmethod
    def wait_accepted(servers: list[Worker], targets: list[int]) -> tuple[int, dict[str, int]]:
        """(accepted by all, {accept error: servers}) once every server app has accepted
        what its client established, failed to accept, or none progressed for 3 s."""
        accepted = [0] * len(servers)
        done = [False] * len(servers)
        errors: dict[str, int] = {}
        last, last_change = -1, time.monotonic()
        while not all(done) and time.monotonic() - last_change < 3:
            for i, server in enumerate(servers):
                for event in server.drain():
                    if event.get("event") == "progress":
                        accepted[i] = int(event["accepted"])
                    elif event.get("event") == "accept_error":
                        accepted[i] = int(event["accepted"])
                        errors[str(event["error"])] = errors.get(str(event["error"]), 0) + 1
                        done[i] = True
                done[i] = done[i] or accepted[i] >= targets[i]
            if sum(accepted) != last:
                last, last_change = sum(accepted), time.monotonic()
            time.sleep(0.05)
        return sum(accepted), errors

    def daemon_states(self, port: int | None = None) -> dict[str, int]:
        """The daemon's connections (on local ``port``, or all) by state."""
        states: dict[str, int] = {}
        with xdpstack.connect(self.lab.socket_path) as lib:
            for conn in lib.control(Op.CONNECTIONS):
                cm = conn.get("connection_management", {})
                if port is None or tuple(cm.get("local", ("", 0)))[1] == port:
                    state = str(cm.get("state"))
                    states[state] = states.get(state, 0) + 1
        return states

    def daemon_counters(self) -> dict[str, int]:
        """The daemon's stack counters and datapath drop counters (flat)."""
        stats = self.lab.daemon_stats()
        out = {f"stack.{k}": v for k, v in stats.get("stack", {}).items()}
        for key, value in stats.get("datapath", {}).items():
            if isinstance(value, int) and ("drop" in key or "full" in key or "empty" in key):
                out[f"datapath.{key}"] = value
        xdp = stats.get("xdp", {})
        for key, value in xdp.items() if isinstance(xdp, dict) else ():
            if isinstance(value, int):
                out[f"xdp.{key}"] = value
        return out

    def wait_daemon_idle(self, timeout: float = 60.0) -> tuple[float, int]:
        """(seconds, connections left) until the daemon holds no connection, after the
        apps of a measurement are gone (their close sends FINs or RSTs); a warning with
        the states of what is left after ``timeout``."""
        started = time.monotonic()
        deadline = started + timeout
        left = 0
        while time.monotonic() < deadline:
            left = int(self.lab.daemon_stats().get("connections", 0))
            if left == 0:
                return time.monotonic() - started, 0
            time.sleep(0.2)
        try:
            states = self.daemon_states()
        except OSError as exc:  # a daemon gone or refusing: report, don't fail the bench
            states = {"unknown": left}
            log(f"  (CONNECTIONS failed: {exc})")
        log(f"  warning: the daemon still has connections after the idle ramp: {states}")
        return time.monotonic() - started, left

    # -- the run ----------------------------------------------------------------------
    def plan_steps(self) -> int:
        opts = self.opts
        bulk = sum(1 for m in ("bulk_up", "bulk_down") if m in opts.metrics)
        first = [m for m in ("rr", "cps") if m in opts.metrics]
        steps = 0
        for rep in range(1, opts.reps + 1):
            for index, _mtu in enumerate(opts.mtus):
                steps += bulk * 3
                if index == 0:
                    steps += 2 * len(first)
                    if "hold" in opts.metrics and rep <= opts.hold_reps:
                        steps += 2
        return steps

    def run(self) -> None:
        opts, lab = self.opts, self.lab
        self.total_steps = self.plan_steps()
        bulk = [f"bulk-{d}" for d in ("up", "down") if f"bulk_{d}" in opts.metrics]
        small = [m for m in ("rr", "cps") if m in opts.metrics]
        for rep in range(1, opts.reps + 1):
            for index, mtu in enumerate(opts.mtus):
                lab.set_mtu(mtu)
                first = index == 0
                hold = (
                    ["hold"] if first and "hold" in opts.metrics and rep <= opts.hold_reps else []
                )
                # the kernel, offloads as they are; then without TSO/GSO/GRO (bulk only)
                lab.set_offloads(True)
                self.offloads.setdefault(f"{KERNEL} mtu {mtu}", lab.offload_state())
                for what in bulk + (hold + small if first else []):
                    self.attempt(KERNEL, mtu, what, rep)
                if bulk:
                    lab.set_offloads(False)
                    self.offloads.setdefault(f"{KERNEL_NO_OFFLOAD} mtu {mtu}", lab.offload_state())
                    for what in bulk:
                        self.attempt(KERNEL_NO_OFFLOAD, mtu, what, rep)
                    lab.set_offloads(True)
                # xdpstack: a fresh daemon for each repetition and MTU; the idle ramp first,
                # so the daemon's RSS growth is the connections' own
                try:
                    lab.start_daemon()
                except BenchError as exc:
                    log(f"  xdpstackd did not start at MTU {mtu}: {exc}")
                    self.errors.append({"stack": XDPSTACK, "mtu": mtu, "rep": rep})
                    self.errors[-1]["error"] = str(exc)
                    continue
                try:
                    self.offloads.setdefault(f"{XDPSTACK} mtu {mtu}", lab.offload_state())
                    for what in hold + bulk + (small if first else []):
                        self.attempt(XDPSTACK, mtu, what, rep)
                finally:
                    lab.stop_daemon()


# =====================================================================================
# main
# =====================================================================================
ALL_METRICS = ("bulk_up", "bulk_down", "rr", "cps", "hold")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast run of every metric")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--mtus",
        default=f"1500,{NATIVE_VETH_MAX_MTU}",
        help=f"MTUs for bulk goodput, comma-separated; the first one is used for the other "
        f"metrics (default 1500,{NATIVE_VETH_MAX_MTU}: native XDP on a veth takes at most "
        f"{NATIVE_VETH_MAX_MTU})",
    )
    parser.add_argument(
        "--metrics",
        default=",".join(ALL_METRICS),
        help=f"comma-separated subset of {','.join(ALL_METRICS)} (default all)",
    )
    parser.add_argument("--bulk-seconds", type=float, default=2.0, help="per bulk run (2)")
    parser.add_argument("--chunk-kb", type=int, default=256, help="bulk send/recv size (256)")
    parser.add_argument("--rr-seconds", type=float, default=2.0, help="per round-trip run (2)")
    parser.add_argument("--msg", type=int, default=64, help="round-trip message bytes (64)")
    parser.add_argument("--cps-seconds", type=float, default=2.0, help="per connection run (2)")
    parser.add_argument(
        "--conns", type=int, default=100_000, help="idle connections bound (100,000)"
    )
    parser.add_argument(
        "--hold-seconds", type=float, default=120.0, help="time budget of the idle ramp (120)"
    )
    parser.add_argument(
        "--hold-reps",
        type=int,
        default=1,
        help="repetitions of the idle ramp, in the first ones of --reps (default 1: 100,000 "
        "connections take ~80 s per repetition, most of it the paced release; the count and "
        "the memory per connection vary by <1%% between repetitions, the ramp time with the "
        "load of the machine)",
    )
    parser.add_argument("--window", type=int, default=128, help="connects in flight (128)")
    parser.add_argument(
        "--daemon-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [daemon] key for xdpstackd's config, VALUE in TOML (repeatable; e.g. "
        "xdp_syn_rate=0); the default run uses the daemon's defaults",
    )
    parser.add_argument(
        "--release-rate",
        type=float,
        default=RELEASE_RATE,
        help=f"RSTs per second that release the idle connections (default {RELEASE_RATE:,.0f}; "
        "0: every client closes all of its connections at once)",
    )
    parser.add_argument(
        "--conns-per-process",
        type=int,
        default=HOLD_CONNS_PER_PROCESS,
        help="idle connections per server process and port, and per client process "
        f"(default {HOLD_CONNS_PER_PROCESS:,}: RLIMIT_NOFILE is per process)",
    )
    parser.add_argument("--output", type=Path, help="JSON path (default bench/results/...)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help="record py-spy profiles (raw collapsed stacks) of the daemon and the xdpstack "
        "server during xdpstack measurements into this directory (skews those numbers)",
    )
    parser.add_argument(
        "--cprofile-dir",
        type=Path,
        help="run each daemon under cProfile (python -m cProfile -o DIR/xdpstackd-N.prof); "
        "with one metric and MTU, one file is one measurement (skews those numbers)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.reps = 1
        args.mtus = f"1500,{NATIVE_VETH_MAX_MTU}"
        args.bulk_seconds = 0.3
        args.rr_seconds = 0.3
        args.cps_seconds = 0.3
        args.conns = 200
        args.conns_per_process = 100  # two ports, two servers and two clients
        args.hold_seconds = 15.0
    return args


def daemon_options(given: list[str]) -> list[str]:
    """``KEY=VALUE`` (a ``[daemon]`` key, a TOML value) as config lines; SystemExit if
    malformed."""
    lines = []
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier() or not value.strip():
            raise SystemExit(f"compare.py: --daemon-option {item!r}: expected KEY=VALUE")
        lines.append(f"{key.strip()} = {value.strip()}")
    return lines


def options_from(args: argparse.Namespace) -> Options:
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown:
        raise SystemExit(f"compare.py: unknown metrics {unknown} (known: {ALL_METRICS})")
    mtus = [int(m) for m in args.mtus.split(",") if m.strip()]
    if args.conns < 1 or args.conns_per_process < 1:
        raise SystemExit("compare.py: --conns and --conns-per-process must be at least 1")
    for mtu in mtus:
        if not 576 <= mtu <= NATIVE_VETH_MAX_MTU:
            raise SystemExit(
                f"compare.py: MTU {mtu} out of range: native XDP on a veth takes "
                f"576..{NATIVE_VETH_MAX_MTU}"
            )
    return Options(
        reps=max(1, args.reps),
        mtus=mtus,
        metrics=metrics,
        bulk_seconds=args.bulk_seconds,
        chunk=args.chunk_kb << 10,
        rr_seconds=args.rr_seconds,
        msg=args.msg,
        cps_seconds=args.cps_seconds,
        conns=args.conns,
        hold_seconds=args.hold_seconds,
        hold_reps=min(max(1, args.hold_reps), max(1, args.reps)),
        window=args.window,
        conns_per_process=args.conns_per_process,
        release_rate=args.release_rate,
        profile_dir=args.profile_dir,
    )


def preflight() -> None:
    if os.geteuid() != 0:
        raise SystemExit("compare.py: needs root (namespaces, veth, XDP, AF_XDP)")
    for tool in ("ip", "ethtool", "ss"):
        if shutil.which(tool) is None:
            raise SystemExit(f"compare.py: `{tool}` is not installed")


def git_state() -> dict[str, Any]:
    """The commit that ran and the files changed in the working tree on top of it (the
    daemon and the client library run from this checkout)."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
        "modified": [line[3:] for line in status.splitlines() if line.strip()],
    }


def machine_facts() -> dict[str, Any]:
    return {
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    opts = options_from(args)
    extra = daemon_options(args.daemon_option)
    preflight()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    output = args.output or RESULTS / f"compare-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    python = sys.executable

    def on_signal(signum: int, _frame: Any) -> None:
        signal.signal(signum, signal.SIG_IGN)  # a second Ctrl-C must not break the cleanup
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # SIGINT too: a shell starts background jobs with it ignored, and Ctrl-C must clean up
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
            continue  # nohup
        signal.signal(sig, on_signal)

    facts = machine_facts()
    git_start = git_state()  # others may commit while it runs: both ends are recorded
    workdir = Path(tempfile.mkdtemp(prefix="xdpstack-compare-"))
    lab = Lab(workdir, python)
    if args.cprofile_dir is not None:
        args.cprofile_dir.mkdir(parents=True, exist_ok=True)
        lab.cprofile_dir = args.cprofile_dir
    lab.daemon_options = extra
    profiler = Profiler(opts.profile_dir, python)
    bench = Bench(lab, opts, profiler)
    log(
        f"compare.py: kernel TCP vs xdpstack, {opts.reps} repetition(s), MTUs {opts.mtus}, "
        f"metrics {','.join(opts.metrics)}; work files in {workdir}"
    )
    interrupted = False
    failed: BaseException | None = None
    try:
        pair = lab.create(opts.mtus[0])
        log(
            f"veth {pair.host_if} (stack end, namespace {pair.host_ns}, {pair.host_ip}) <-> "
            f"{pair.peer_if} (client end, namespace {pair.netns}, {pair.peer_ip}); "
            f"tx checksum offload off on the client end"
        )
        bench.run()
    except KeyboardInterrupt as exc:
        interrupted = True
        log(f"compare.py: interrupted ({exc or 'Ctrl-C'}); cleaning up")
    except (BenchError, OSError) as exc:  # the link could not be made or changed
        failed = exc
        log(f"compare.py: {exc}; cleaning up")
    finally:
        profiler.close()
        lab.close()
        if bench.errors:  # the daemon's log and the workers' stderr, for the post-mortem
            kept = output.with_name(output.stem + "-logs")
            shutil.move(str(workdir), kept)
            log(f"compare.py: logs of the failed run kept in {kept}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if interrupted:
        return 130
    if failed is not None:
        return 1
    doc = {
        "generated": stamp,
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {**facts, "loadavg_end": os.getloadavg()},
        "git": {"start": git_start, "end": git_state()},
        "link": {
            "layout": "server at the stack end (kernel TCP or xdpstackd), client at the "
            "client end on the kernel's TCP; same client and server code for both",
            "xdp_mode": "native",
            "client_end_tx_checksum_offload": "off",
            "offloads_seen": bench.offloads,
        },
        "records": [vars(r) for r in bench.records],
        "errors": bench.errors,
    }
    doc["summary"] = compare_report.summarise(bench.records)
    output.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    plot_path = None
    if not args.no_plot:
        plot_path = output.with_suffix(".png")
        compare_report.plot(doc["summary"], plot_path, title=f"xdpstack vs kernel TCP ({stamp})")
    log("")
    log(compare_report.table(doc["summary"]))
    log("")
    log(f"results: {output}")
    if plot_path is not None:
        log(f"plot:    {plot_path}")
    lost = [e for e in bench.errors if not e.get("recovered") and e.get("attempt", 2) == 2]
    if bench.errors:
        log(
            f"{len(bench.errors)} measurement attempt(s) failed, {len(lost)} of them again on "
            f"the second try: see 'errors' in the JSON"
        )
    return 1 if lost or any("attempt" not in e for e in bench.errors) else 0


if __name__ == "__main__":
    sys.exit(main())
