"""Applications on the simulated link's far end (10.0.0.2), for the high-level API tests.

Our stack cannot reach itself (it has no loopback), so a high-level client or server on
``xdpstack`` needs a peer on the far stack of ``tests/api/harness.py``. The apps here run
on the daemon's loop thread, driven by the far stack's completions (a hook after each of
the simulated datapath's far-end flushes), so they keep up with bulk transfers: an echo
server, a sink server, a source server, and a client that sends data, half-closes and
collects what comes back. Results are ``concurrent.futures.Future`` objects the test
thread (or an event loop, with ``asyncio.wrap_future``) can wait on.

Completions of tokens that no app owns stay in ``far_completions`` for the harness's own
``Far`` helpers.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness import FAR_IP, Daemon

from xdpstackd.inetstack.completion import Completion


@dataclass
class Received:
    """What one far-end connection got: bytes, their SHA-256, the peer, and an error."""

    peer: tuple[str, int] | None = None
    data: bytearray = field(default_factory=bytearray)
    errno: int = 0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class FarApps:
    def __init__(self, daemon: Daemon) -> None:
        assert daemon.datapath is not None
        self.dp = daemon.datapath
        self.stack = self.dp.far
        self.handlers: dict[int, Callable[[Completion], None]] = {}
        self._running = False
        self._flush = self.dp._far_flush
        self.dp._far_flush = self._flush_and_run  # type: ignore[method-assign]

    # -- plumbing (loop thread) -------------------------------------------------------------
    def _now(self) -> float:
        return self.dp.clock()

    def _flush_and_run(self) -> None:
        self._flush()
        if self._running:
            return
        self._running = True
        try:
            while True:
                pending = self.dp.far_completions
                mine = [c for c in pending if c.qt in self.handlers]
                if not mine:
                    break
                pending[:] = [c for c in pending if c.qt not in self.handlers]
                for c in mine:
                    self.handlers.pop(c.qt)(c)
                self._flush()
        finally:
            self._running = False

    def _on(self, qt: int, handler: Callable[[Completion], None]) -> None:
        self.handlers[qt] = handler

    def _ignore(self, qt: int) -> None:
        self.handlers[qt] = lambda c: None

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the loop thread (then the far end's frames go out)."""
        return self.dp.far_call(fn, *args)

    # -- servers ----------------------------------------------------------------------------
    def _listen(self, port: int, on_conn: Callable[[int, tuple[str, int]], None]) -> int:
        stack = self.stack

        def accept_loop(lqd: int) -> None:
            def accepted(c: Completion) -> None:
                if c.errno:
                    return  # the listener was closed
                assert c.new_qd is not None and c.addr is not None
                on_conn(c.new_qd, c.addr)
                accept_loop(lqd)

            self._on(stack.accept(lqd), accepted)

        def start() -> int:
            qd = stack.socket()
            stack.bind(qd, (FAR_IP, port))
            stack.listen(qd, 128)
            accept_loop(qd)
            return qd

        return self.run(start)

    def echo_server(self, port: int) -> int:
        """Echo every byte back; close after the peer's FIN (and the echoes)."""
        stack = self.stack

        def serve(qd: int, _addr: tuple[str, int]) -> None:
            def popped(c: Completion) -> None:
                if c.errno or not c.data:
                    try:
                        stack.close(qd, self._now())
                    except OSError:
                        pass
                    return
                self._ignore(stack.push(qd, c.data, self._now()))
                self._on(stack.pop(qd, None, self._now()), popped)

            self._on(stack.pop(qd, None, self._now()), popped)

        return self._listen(port, serve)

    def sink_server(self, port: int) -> list[Received]:
        """Read every connection until EOF, then close it; the list (filled on the loop
        thread) gets one :class:`Received` per finished connection."""
        stack = self.stack
        self.sunk: list[Received] = []

        def serve(qd: int, addr: tuple[str, int]) -> None:
            got = Received(peer=addr)

            def popped(c: Completion) -> None:
                if c.errno or not c.data:
                    got.errno = c.errno
                    self.sunk.append(got)
                    try:
                        stack.close(qd, self._now())
                    except OSError:
                        pass
                    return
                got.data += c.data
                self._on(stack.pop(qd, None, self._now()), popped)

            self._on(stack.pop(qd, None, self._now()), popped)

        self._listen(port, serve)
        return self.sunk

    def source_server(self, port: int, data: bytes) -> int:
        """Send ``data`` to each connection, then close it (FIN)."""
        stack = self.stack

        def serve(qd: int, _addr: tuple[str, int]) -> None:
            self._ignore(stack.push(qd, data, self._now()))
            stack.close(qd, self._now())

        return self._listen(port, serve)

    # -- clients ---------------------------------------------------------------------------
    def client(
        self, addr: tuple[str, int], data: bytes, *, half_close: bool = True
    ) -> concurrent.futures.Future[Received]:
        """Connect to ``addr``, send ``data``, then (``half_close``) shut down the sending
        side (FIN after the data), and collect what comes back until EOF; the result is
        set then (or at an error, with its errno)."""
        stack = self.stack
        result: concurrent.futures.Future[Received] = concurrent.futures.Future()
        got = Received()

        def start() -> None:
            qd = stack.socket()

            def finish(errno_: int) -> None:
                got.errno = errno_
                try:
                    stack.close(qd, self._now())
                except OSError:
                    pass
                if not result.done():
                    result.set_result(got)

            def popped(c: Completion) -> None:
                if c.errno or not c.data:
                    finish(c.errno)
                    return
                got.data += c.data
                self._on(stack.pop(qd, None, self._now()), popped)

            def connected(c: Completion) -> None:
                if c.errno:
                    finish(c.errno)
                    return
                got.peer = addr
                if data:
                    self._ignore(stack.push(qd, data, self._now()))
                if half_close:
                    stack.tcp.shutdown(qd, self._now())
                self._on(stack.pop(qd, None, self._now()), popped)

            self._on(stack.connect(qd, addr, self._now()), connected)

        self.run(start)
        return result
