"""A daemon without a kernel, for the API tests: Engine + SimulatedDatapath + ApiServer.

The event loop (uvloop by default, as ``xdpstackd`` runs it) lives in a background
thread; tests use the real client library (``xdpstack.connect``) from the test thread,
over a real Unix socket in a temporary directory. The simulated link's far end is a
second ``InetStack`` (10.0.0.2); ``Far`` drives it from the test thread through
``SimulatedDatapath.far_call``, which runs each call on the loop thread.

Our stack is 10.0.0.1. Both ends own their addresses (ARP over the simulated link).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import xdpstack
from xdpstackd.api.server import ApiServer
from xdpstackd.datapath.sim import SimulatedDatapath
from xdpstackd.engine import Engine
from xdpstackd.inetstack.completion import Completion
from xdpstackd.inetstack.config import StackConfig, TcpConfig
from xdpstackd.inetstack.stack import InetStack

OUR_IP = "10.0.0.1"
FAR_IP = "10.0.0.2"
OUR_MAC = bytes.fromhex("020000000001")
FAR_MAC = bytes.fromhex("020000000002")


def test_config() -> StackConfig:
    # Short TIME_WAIT and timeouts so closed connections clear quickly in real time.
    return StackConfig(tcp=TcpConfig(msl_s=0.2, fin_wait_2_timeout_s=2.0, connect_timeout_s=10.0))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that are not periodic at any small stride (catches reordering)."""
    out = bytearray()
    block = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{block}".encode()).digest()
        block += 1
    return bytes(out[:n])


class Daemon:
    """Everything ``xdpstackd`` runs above the datapath, on a loop in a thread."""

    def __init__(
        self,
        socket_path: str,
        *,
        use_uvloop: bool = True,
        config: StackConfig | None = None,
        **server_kwargs: Any,
    ) -> None:
        self.path = socket_path
        self.use_uvloop = use_uvloop
        self.config = config or test_config()
        self.server_kwargs = server_kwargs
        self.loop: asyncio.AbstractEventLoop | None = None
        self.engine: Engine | None = None
        self.server: ApiServer | None = None
        self.datapath: SimulatedDatapath | None = None
        self.ours: InetStack | None = None
        self.far: Far | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._loop_errors: list[dict[str, Any]] = []

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> Daemon:
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.result(10)
        return self

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        if self.use_uvloop:
            import uvloop

            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._on_loop_error)
        try:
            loop.run_until_complete(self._main(ready))
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
        finally:
            loop.close()

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self.ours = InetStack(
            self.config, mac=OUR_MAC, ip=OUR_IP, prefix_len=24, isn_secret=b"o" * 16, seed=1
        )
        far = InetStack(
            self.config, mac=FAR_MAC, ip=FAR_IP, prefix_len=24, isn_secret=b"f" * 16, seed=2
        )
        self.datapath = SimulatedDatapath(loop, far)
        self.far = Far(self.datapath)
        self.engine = Engine(self.ours, self.datapath, loop=loop)
        self.server = ApiServer(self.engine, self.path, **self.server_kwargs)
        await self.server.start()
        self.engine.start()
        ready.set_result(None)
        await self._stopped.wait()
        await self.server.stop()
        self.engine.stop()
        self.datapath.close()

    def stop(self) -> None:
        if self._thread is None:
            return
        if self.loop is not None and self._stopped is not None and self.loop.is_running():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)
        self._thread = None

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self._loop_errors.append(context)
        loop.default_exception_handler(context)

    def check_healthy(self) -> None:
        """No exception escaped into the loop, the stacks counted no internal error and
        the server counted none."""
        assert not self._loop_errors, self._loop_errors
        assert self.ours is not None and self.far is not None
        assert self.ours.counters["stack_internal_errors"] == 0, self.ours.last_internal_error
        far_stack = self.far.stack
        assert far_stack.counters["stack_internal_errors"] == 0, far_stack.last_internal_error
        assert self.server is not None
        assert self.server.counters["internal_errors"] == 0, self.server.counters

    # -- helpers ---------------------------------------------------------------------------
    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run ``fn(*args)`` on the loop thread and return its result."""
        assert self.loop is not None

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def connect(self) -> xdpstack.Lib:
        return xdpstack.connect(self.path)

    def sessions(self) -> list[dict[str, Any]]:
        assert self.server is not None
        return self.call(self.server.clients)

    def our_sockets(self) -> set[int]:
        assert self.ours is not None
        return self.call(lambda: set(self.ours.tcp.sockets))


class Far:
    """The far end's stack (10.0.0.2), driven from the test thread."""

    def __init__(self, datapath: SimulatedDatapath) -> None:
        self.dp = datapath
        self.stack = datapath.far

    def _now(self) -> float:
        return self.dp.clock()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.dp.far_call(fn, *args)

    def listen(self, port: int, backlog: int = 16) -> int:
        def run() -> int:
            qd = self.stack.socket()
            self.stack.bind(qd, (FAR_IP, port))
            self.stack.listen(qd, backlog)
            return qd

        return self.call(run)

    def accept(self, qd: int) -> int:
        return self.call(self.stack.accept, qd)

    def connect(self, addr: tuple[str, int]) -> tuple[int, int]:
        def run() -> tuple[int, int]:
            qd = self.stack.socket()
            return qd, self.stack.connect(qd, addr, self._now())

        return self.call(run)

    def push(self, qd: int, data: bytes) -> int:
        return self.call(lambda: self.stack.push(qd, data, self._now()))

    def pop(self, qd: int, size: int | None = None) -> int:
        return self.call(lambda: self.stack.pop(qd, size, self._now()))

    def close(self, qd: int) -> None:
        self.call(lambda: self.stack.close(qd, self._now()))

    def abort(self, qd: int) -> None:
        self.call(lambda: self.stack.abort(qd, self._now()))

    def completion(self, qt: int, timeout: float = 10.0) -> Completion:
        """Wait for the far end's completion of ``qt`` (and take it)."""
        deadline = time.monotonic() + timeout

        def take() -> Completion | None:
            for i, c in enumerate(self.dp.far_completions):
                if c.qt == qt:
                    return self.dp.far_completions.pop(i)
            return None

        while True:
            c = self.call(take)
            if c is not None:
                return c
            if time.monotonic() > deadline:
                raise TimeoutError(f"far end: no completion for qt {qt} in {timeout} s")
            time.sleep(0.002)

    def wait_ok(self, qt: int, timeout: float = 10.0) -> Completion:
        c = self.completion(qt, timeout)
        assert c.errno == 0, f"far end: qt {qt} failed with {os.strerror(c.errno)}"
        return c

    def recv_until_eof(self, qd: int, timeout: float = 30.0) -> bytes:
        out = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            c = self.completion(self.pop(qd), max(0.1, deadline - time.monotonic()))
            if c.errno:
                raise OSError(c.errno, f"far end pop: {os.strerror(c.errno)}")
            if not c.data:
                return bytes(out)
            out += c.data

    def recv_exactly(self, qd: int, n: int, timeout: float = 30.0) -> bytes:
        out = bytearray()
        deadline = time.monotonic() + timeout
        while len(out) < n:
            c = self.wait_ok(self.pop(qd, n - len(out)), max(0.1, deadline - time.monotonic()))
            if not c.data:
                raise EOFError(f"far end: EOF after {len(out)} of {n} bytes")
            out += c.data
        return bytes(out)

    def state(self, qd: int) -> str:
        return self.call(lambda: self.stack.tcp.socket_state(qd).value)


def lib_recv_exactly(lib: xdpstack.Lib, qd: int, n: int, timeout: float = 30.0) -> bytes:
    out = bytearray()
    while len(out) < n:
        r = lib.wait(lib.pop(qd, n - len(out)), timeout)
        if not r.data:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += r.data
    return bytes(out)


def lib_recv_until_eof(lib: xdpstack.Lib, qd: int, timeout: float = 30.0) -> bytes:
    out = bytearray()
    while True:
        r = lib.wait(lib.pop(qd), timeout)
        if not r.data:
            return bytes(out)
        out += r.data
