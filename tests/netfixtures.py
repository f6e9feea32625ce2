"""Shared fixtures and helpers for integration tests on veth pairs and network namespaces.

Use from a test module (``tests`` is on pytest's ``pythonpath``)::

    from netfixtures import kernel_tcp_client, kernel_tcp_server, veth_pair_fixture  # noqa: F401

The fixtures are defined as ``*_fixture`` functions with ``name=`` set, so importing them
into a test module does not make ruff report every test parameter as a redefinition
(F811); only the import needs the ``F401`` noqa. (Listing ``"netfixtures"`` in
``pytest_plugins`` of ``tests/conftest.py`` would make them available without imports.)


    @pytest.mark.integration
    def test_something(veth_pair):
        server = kernel_tcp_server(veth_pair.netns, 0, "sink")
        ...

What the fixtures give:

``veth_pair``
    A fresh :class:`~xdpstackd.netns.VethPair` per test: the stack end ``host_if`` in its own
    namespace ``veth_pair.host_ns`` (address ``10.77.0.1/24`` on it), the kernel peer end
    ``peer_if`` in ``veth_pair.netns`` (``10.77.0.2/24``), tx checksum offload off on the
    peer, IPv6 off on both. Nothing touches the root namespace. Torn down after the test,
    failing or not: kernel peers started with the helpers below are stopped, processes
    left in the namespaces are killed, namespaces and veth removed.
``veth_pair_factory``
    ``veth_pair_factory(**create_veth_pair_kwargs)`` for pairs with other settings (MTU,
    addresses, offload on, ``host_addr=None`` for owned-address mode...); ``prefix`` and
    ``host_ns`` default to a unique prefix and ``"new"``. Same teardown.

Kernel TCP peers (plain Python ``socket`` code in ``tests/peers/tcp_peer.py``, run with
``ip netns exec NS /usr/bin/python3``); modes are what the *kernel* side does:

``kernel_tcp_server(netns, port, mode, ...)``
    ``"echo"`` (echo until EOF), ``"sink"`` (read until EOF, SHA-256), ``"source"`` (send
    ``nbytes`` pattern bytes, FIN, read until EOF). Returns once it listens (``.port`` is
    the real port when 0 was asked). ``.results(n)`` waits for ``n`` finished connections.
``kernel_tcp_client(netns, host, port, mode, ...)``
    Connects from the kernel side into the stack: ``"source"`` (send ``nbytes``, FIN, read
    until EOF), ``"sink"`` (read until EOF), ``"echo"`` (send ``nbytes`` and read as many
    back). ``.result()`` waits for the (first) connection's outcome; ``count=N`` makes N
    parallel connections (``.results(N)``).

A result is a dict: ``local``, ``peer`` (``"ip:port"``), ``rx_bytes``, ``rx_sha256``,
``tx_bytes``, ``tx_sha256``, ``eof``, ``error`` (None or an errno name such as
``"ECONNREFUSED"``/``"ECONNRESET"``), ``duration_s``. :func:`pattern_bytes` and
:func:`pattern_sha256` give the data the peers send, to send or check from the stack side.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from xdpstackd.netns import (
    InNetns,
    VethPair,
    cleanup_stale,
    create_veth_pair,
    destroy,
    run_in_netns,
    unique_prefix,
)

__all__ = [
    "PEER_PYTHON",
    "PEER_SCRIPT",
    "KernelPeer",
    "kernel_tcp_client",
    "kernel_tcp_server",
    "pattern_bytes",
    "pattern_sha256",
    "require_netns",
    "veth_pair_factory_fixture",
    "veth_pair_fixture",
    "xdp_attached",
]

PEER_SCRIPT = Path(__file__).resolve().parent / "peers" / "tcp_peer.py"
PEER_PYTHON = "/usr/bin/python3"


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_tcp_peer = _load("_xdpstack_tcp_peer", PEER_SCRIPT)

from integration_support import require_integration  # noqa: E402

#: ``pattern_bytes(nbytes, seed=0)``: the bytes a ``source`` / ``echo`` peer sends.
pattern_bytes: Callable[..., bytes] = _tcp_peer.pattern_bytes
#: ``pattern_sha256(nbytes, seed=0)``: their SHA-256, hex.
pattern_sha256: Callable[..., str] = _tcp_peer.pattern_sha256


def require_netns() -> None:
    """Skip (locally) or fail (CI=true) unless namespaces and veth pairs can be made here."""
    if os.geteuid() != 0:
        require_integration("needs root for network namespaces and veth pairs")
    if shutil.which("ip") is None:
        require_integration("the `ip` command (iproute2) is not installed")
    if not os.path.exists(PEER_PYTHON):
        require_integration(f"{PEER_PYTHON} is missing (runs the kernel TCP peers)")


# --------------------------------------------------------------------------- kernel peers
_live_peers: list[KernelPeer] = []
_live_lock = threading.Lock()


class KernelPeer:
    """A ``tcp_peer.py`` process in a namespace; its JSON lines are read in a thread."""

    def __init__(self, netns: str | None, args: list[str]) -> None:
        self.netns = netns
        self.argv = [PEER_PYTHON, "-u", str(PEER_SCRIPT), *args]
        self.proc = run_in_netns(
            netns,
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.conns: list[dict[str, Any]] = []
        self.done = False
        self._stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()
        with _live_lock:
            _live_peers.append(self)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "garbage", "line": line}
            self.events.put(event)
        self.events.put(None)  # EOF: the process is gone

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def _next_event(self, deadline: float) -> dict[str, Any] | None:
        """The next event; None when the process has exited and everything was read."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            event = self.events.get(timeout=left)
        except queue.Empty:
            raise TimeoutError from None
        if event is None:
            self.events.put(None)  # stay at EOF for later callers
            return None
        if event.get("event") == "conn":
            self.conns.append(event)
        elif event.get("event") == "done":
            self.done = True
        return event

    def wait_event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self._next_event(deadline)
            except TimeoutError:
                raise TimeoutError(
                    f"kernel peer {self.argv[3:]} in {self.netns}: no {name!r} event "
                    f"within {timeout}s; stderr: {self.stderr.strip()!r}"
                ) from None
            if event is None:
                raise RuntimeError(
                    f"kernel peer {self.argv[3:]} in {self.netns} exited "
                    f"(rc={self.proc.poll()}) before {name!r}; stderr: {self.stderr.strip()!r}"
                )
            if event.get("event") == name:
                return event

    def results(self, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The first ``count`` finished connections (waits for them)."""
        deadline = time.monotonic() + timeout
        while len(self.conns) < count:
            try:
                event = self._next_event(deadline)
            except TimeoutError:
                raise TimeoutError(
                    f"kernel peer {self.argv[3:]} in {self.netns}: {len(self.conns)} of "
                    f"{count} connections finished within {timeout}s; "
                    f"stderr: {self.stderr.strip()!r}"
                ) from None
            if event is None:
                raise RuntimeError(
                    f"kernel peer exited (rc={self.proc.poll()}) after {len(self.conns)} "
                    f"of {count} connections; stderr: {self.stderr.strip()!r}"
                )
        return self.conns[:count]

    def result(self, timeout: float = 30.0) -> dict[str, Any]:
        return self.results(1, timeout)[0]

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit by itself; its return code."""
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(timeout=5)
        while True:  # collect what is left
            try:
                if self._next_event(time.monotonic() + 0.001) is None:
                    break
            except TimeoutError:
                break
        return rc

    def stop(self) -> None:
        """Terminate the process (SIGTERM, then SIGKILL) and reap it. Idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=3)
        for t in self._threads:
            t.join(timeout=2)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        with _live_lock:
            if self in _live_peers:
                _live_peers.remove(self)

    def __enter__(self) -> KernelPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class KernelTcpServer(KernelPeer):
    host: str
    port: int


def kernel_tcp_server(
    netns: str | None,
    port: int = 0,
    mode: str = "echo",
    *,
    host: str = "0.0.0.0",
    nbytes: int = 0,
    seed: int = 0,
    connections: int = 0,
    backlog: int = 128,
    linger_rst: bool = False,
    io_timeout: float = 60.0,
    ready_timeout: float = 10.0,
) -> KernelTcpServer:
    """Start a kernel TCP server in ``netns``; returns once it listens.

    ``connections``: exit after that many (0: serve until stopped). ``linger_rst``: close
    each connection with RST instead of FIN. ``nbytes``/``seed`` for ``source`` mode.
    """
    args = [
        "server",
        f"--host={host}",
        f"--port={port}",
        f"--mode={mode}",
        f"--bytes={nbytes}",
        f"--seed={seed}",
        f"--connections={connections}",
        f"--backlog={backlog}",
        f"--io-timeout={io_timeout}",
    ]
    if linger_rst:
        args.append("--linger-rst")
    server = KernelTcpServer(netns, args)
    try:
        event = server.wait_event("listening", ready_timeout)
    except BaseException:
        server.stop()
        raise
    server.host = event["host"]
    server.port = int(event["port"])
    return server


def kernel_tcp_client(
    netns: str | None,
    host: str,
    port: int,
    mode: str = "source",
    *,
    nbytes: int = 0,
    seed: int = 0,
    count: int = 1,
    bind: str | None = None,
    bind_port: int = 0,
    connect_timeout: float = 10.0,
    io_timeout: float = 60.0,
    linger_rst: bool = False,
) -> KernelPeer:
    """Start ``count`` kernel TCP connections from ``netns`` to ``host:port``; returns at once."""
    args = [
        "client",
        f"--host={host}",
        f"--port={port}",
        f"--mode={mode}",
        f"--bytes={nbytes}",
        f"--seed={seed}",
        f"--count={count}",
        f"--connect-timeout={connect_timeout}",
        f"--io-timeout={io_timeout}",
        f"--bind-port={bind_port}",
    ]
    if bind:
        args.append(f"--bind={bind}")
    if linger_rst:
        args.append("--linger-rst")
    return KernelPeer(netns, args)


def stop_all_peers() -> None:
    """Stop every kernel peer still running (fixture teardown)."""
    with _live_lock:
        peers = list(_live_peers)
    for peer in peers:
        try:
            peer.stop()
        except Exception:
            pass


# --------------------------------------------------------------------------- veth fixtures
_stale_cleaned = False


def _cleanup_stale_once() -> None:
    global _stale_cleaned
    if not _stale_cleaned:
        _stale_cleaned = True
        cleanup_stale()


@contextlib.contextmanager
def xdp_attached(
    ns: str, ifname: str, source: str, function: str, cflags: list[str] | None = None
) -> Iterator[None]:
    """A test's own XDP program (bcc ``source``, entry ``function``), native, on ``ifname``
    in ``ns`` while the block runs; detached and unloaded after, also on failure."""
    from bcc import BPF

    bpf = BPF(text=source.encode(), cflags=cflags or [])
    try:
        fn = bpf.load_func(function.encode(), BPF.XDP)
        with InNetns(ns):
            BPF.attach_xdp(ifname.encode(), fn, 0)
        try:
            yield
        finally:
            with InNetns(ns):
                BPF.remove_xdp(ifname.encode(), 0)
    finally:
        bpf.cleanup()


@contextlib.contextmanager
def _veth_pairs() -> Iterator[Callable[..., VethPair]]:
    """A pair maker whose pairs (and the kernel peers still running) go away at the end."""
    require_netns()
    _cleanup_stale_once()
    pairs: list[VethPair] = []

    def make(**kwargs: Any) -> VethPair:
        kwargs.setdefault("prefix", unique_prefix("t"))
        kwargs.setdefault("host_ns", "new")
        pair = create_veth_pair(**kwargs)
        pairs.append(pair)
        return pair

    try:
        yield make
    finally:
        stop_all_peers()
        errors = []
        for pair in reversed(pairs):
            try:
                destroy(pair)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture(name="veth_pair_factory")
def veth_pair_factory_fixture() -> Iterator[Callable[..., VethPair]]:
    """Make veth pairs with :func:`~xdpstackd.netns.create_veth_pair`; all removed after."""
    with _veth_pairs() as make:
        yield make


@pytest.fixture(name="veth_pair")
def veth_pair_fixture() -> Iterator[VethPair]:
    """A fresh veth pair between two new namespaces (stack end, kernel peer)."""
    with _veth_pairs() as make:
        yield make()
