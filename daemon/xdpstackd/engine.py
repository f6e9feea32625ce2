"""The engine: the event loop's view of the sans-IO stack.

It is the only place where the stack meets real time and real I/O. Three event
sources drive it: the datapath's file descriptor (frames arrive), the API server's
calls (applications act), and one timer armed at the stack's next deadline. After each
of them it runs the same epilogue, in this order:

1. steering: make the XDP program's map equal the stack's ports *before* any frame goes
   out, so a SYN-ACK answering our SYN can never reach the kernel first;
2. transmit every frame the stack produced, as one batch;
3. hand every completion to the API server;
4. re-arm the timer if the next deadline moved.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from xdpstackd.inetstack.completion import Completion
from xdpstackd.inetstack.stack import InetStack

if TYPE_CHECKING:
    from xdpstackd.datapath.xdp_program import XdpProgram

log = logging.getLogger(__name__)

RX_BATCH_FRAMES = 64
RX_BATCHES_PER_WAKEUP = 16  # then yield to the loop so API clients and timers get a turn


Tap = Callable[[str, bytes, float], None]


class Datapath(Protocol):
    def fileno(self) -> int: ...
    def receive(self, max_frames: int = 64) -> list[bytes]: ...
    def transmit(self, frames: list[bytes]) -> int: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class Engine:
    def __init__(
        self,
        stack: InetStack,
        datapath: Datapath,
        *,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] | None = None,
        xdp: XdpProgram | None = None,
    ) -> None:
        self.stack = stack
        self.datapath = datapath
        self.loop = loop
        # time.monotonic, not loop.time(): uvloop's loop clock has millisecond steps
        self.clock = clock if clock is not None else time.monotonic
        self.xdp = xdp
        self.completion_sink: Callable[[Completion], None] = lambda completion: None
        self.started_at = time.time()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._ports_version = -1
        self._steered: set[int] = set()
        self._running = False
        self.wakeups = 0
        # capture taps (xdpstackctl capture): called with ("in" | "out", frame, wall time);
        # an empty tuple costs one truth test per batch when nobody captures
        self._taps: tuple[Tap, ...] = ()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        self.loop.add_reader(self.datapath.fileno(), self._on_readable)
        self._epilogue()

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self.loop.remove_reader(self.datapath.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.xdp is not None:
            for port in sorted(self._steered):
                self.xdp.steer_remove(self.stack.ip, port)
        self._steered.clear()

    # -- event sources ------------------------------------------------------------------
    def _on_readable(self) -> None:
        self.wakeups += 1
        receive = self.datapath.receive
        stack = self.stack
        now = self.clock()
        for _ in range(RX_BATCHES_PER_WAKEUP):
            frames = receive(RX_BATCH_FRAMES)
            if not frames:
                break
            if self._taps:
                self._tap("in", frames)
            stack.receive_frames(frames, now)
            if len(frames) < RX_BATCH_FRAMES:
                break
        self._epilogue()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        counters = self.stack.counters
        timeouts = counters["tcp_timeouts"]  # connections time out in timers only
        self.stack.handle_timers(self.clock())
        if counters["tcp_timeouts"] != timeouts:
            log.info(
                "%d connection(s) timed out (ETIMEDOUT): retransmissions or keep-alive "
                "probes unanswered",
                counters["tcp_timeouts"] - timeouts,
            )
        self._epilogue()

    def _epilogue(self) -> None:
        stack = self.stack
        if stack.tcp.ports_version != self._ports_version:
            self._sync_steering()
        frames = stack.poll_transmit()
        if frames:
            if self._taps:
                self._tap("out", frames)
            self.datapath.transmit(frames)
        completions = stack.poll_completions()
        if completions:
            sink = self.completion_sink
            for completion in completions:
                sink(completion)
        if self._running:
            self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.stack.next_deadline()
        if deadline == self._timer_deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None:
            delay = deadline - self.clock()
            self._timer = self.loop.call_later(max(delay, 0.0), self._on_timer)

    def _sync_steering(self) -> None:
        tcp = self.stack.tcp
        self._ports_version = tcp.ports_version
        wanted = set(tcp.ports_in_use())
        if self.xdp is not None:
            ip = self.stack.ip
            for port in wanted - self._steered:
                self.xdp.steer_add(ip, port)
            for port in self._steered - wanted:
                self.xdp.steer_remove(ip, port)
        if wanted != self._steered:
            log.debug("steering %d ports", len(wanted))
        self._steered = wanted

    # -- capture ------------------------------------------------------------------------
    def add_tap(self, tap: Tap) -> None:
        """Copy every frame received and sent to ``tap`` until ``remove_tap``."""
        self._taps = (*self._taps, tap)

    def remove_tap(self, tap: Tap) -> None:
        self._taps = tuple(t for t in self._taps if t != tap)  # == : bound methods

    def _tap(self, direction: str, frames: list[bytes]) -> None:
        stamp = time.time()
        for tap in self._taps:
            for frame in frames:
                try:
                    tap(direction, frame, stamp)
                except Exception:  # a broken capture must never stop the datapath
                    log.exception("capture tap failed; removing it")
                    self.remove_tap(tap)
                    break

    # -- application calls ----------------------------------------------------------------
    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        finally:
            self._epilogue()

    def socket(self) -> int:
        return self.stack.socket()

    def bind(self, qd: int, addr: tuple[str, int]) -> None:
        self._run(self.stack.bind, qd, addr)

    def listen(self, qd: int, backlog: int = 128) -> None:
        self._run(self.stack.listen, qd, backlog)

    def accept(self, qd: int) -> int:
        return self._run(self.stack.accept, qd)

    def connect(self, qd: int, addr: tuple[str, int]) -> int:
        return self._run(self.stack.connect, qd, addr, self.clock())

    def push(self, qd: int, data: bytes) -> int:
        return self._run(self.stack.push, qd, data, self.clock())

    def pop(self, qd: int, size: int | None = None) -> int:
        return self._run(self.stack.pop, qd, size, self.clock())

    def close(self, qd: int, *, discard_pending: bool = False) -> None:
        """``discard_pending``: the client went away; drop pushes not yet buffered."""
        self._run(self._close, qd, discard_pending)

    def _close(self, qd: int, discard_pending: bool) -> None:
        self.stack.close(qd, self.clock(), discard_pending=discard_pending)

    def abort(self, qd: int) -> None:
        self._run(self.stack.abort, qd, self.clock())

    def shutdown(self, qd: int) -> None:
        self._run(self.stack.tcp.shutdown, qd, self.clock())

    def abort_connection(self, conn_id: int) -> bool:
        """Reset the connection with this id (from ``connections()``), whoever owns it."""
        return self._run(self.stack.tcp.abort_connection, conn_id, self.clock())

    def steering(self) -> list[tuple[str, int]]:
        """What the XDP program steers to us, as (address, port)."""
        if self.xdp is not None:
            from xdpstackd.inetstack.layer3.ipv4 import ip_to_str

            return [(ip_to_str(ip), port) for ip, port in self.xdp.steering()]
        return [(self.stack.ip_str, port) for port in sorted(self._steered)]

    def setsockopt(self, qd: int, name: str | int, value: Any) -> None:
        self._run(self.stack.setsockopt, qd, name, value)

    def getsockopt(self, qd: int, name: str | int) -> Any:
        return self.stack.getsockopt(qd, name)

    def getsockname(self, qd: int) -> tuple[str, int]:
        return self.stack.getsockname(qd)

    def getpeername(self, qd: int) -> tuple[str, int]:
        return self.stack.getpeername(qd)

    def snapshot(self, qd: int) -> dict[str, Any]:
        return self.stack.snapshot(qd)

    def connections(self) -> list[dict[str, Any]]:
        return self.stack.connections()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stack": self.stack.counters.snapshot(),
            "datapath": self.datapath.stats(),
            "connections": len(self.stack.tcp.conns),
            "sockets": len(self.stack.tcp.sockets),
            "steered_ports": sorted(self._steered),
            "wakeups": self.wakeups,
            "uptime_s": time.time() - self.started_at,
        }
        if self.xdp is not None:
            out["xdp"] = self.xdp.counters()
        return out
