"""The engine: the event loop's view of the sans-IO stack.

It is the only place where the stack meets real time and real I/O. Three event
sources drive it: the datapath's file descriptor (frames arrive), the API server's
calls (applications act), and one timer armed at the stack's next deadline. Each of
them is followed by the same epilogue, in this order:

1. steering: make the XDP program's map equal the stack's ports *before* any frame goes
   out, so a SYN-ACK answering our SYN can never reach the kernel first;
2. transmit every frame the stack produced, as one batch (one tx kick);
3. hand every completion to the API server;
4. re-arm the timer if the next deadline moved.

Frame arrivals and timers run the epilogue at once. API calls hand over their
completions at once (so the API server sees a client's completions, and its output grow,
request by request) and only mark the engine dirty for the rest: the first call of a loop
iteration schedules one epilogue with ``call_soon``, so all the calls of an iteration
(many clients' requests read in one batch) share one steering check, one tx batch and
one kick, and one timer re-arm. A call still returns its value at once; its frames
follow in the same loop iteration. Whatever runs the epilogue first (an rx wakeup in
between) takes the dirty work with it. A callback that makes many calls (the API server
closing a departed client's thousands of descriptors) gets an epilogue every
``EPILOGUE_EVERY_CALLS`` calls, and the rx ring drained, so that its frames do not wait
for the callback's end (their retransmission timers run from the call) and the fill ring
does not run dry meanwhile. The one way out of the stack for frames is the epilogue, so
steering always comes first.

Received frames are drained from the datapath into memory (``rx_backlog``, bounded)
before each batch is processed, so that the AF_XDP fill ring gets its frames back while
the stack is busy: a burst is held here instead of dropped by the kernel. Frames waiting
in the datapath's transmit queue (XskSocket sends a bounded burst per call) go out a
burst per loop iteration and one per rx batch, so that the replies a burst draws are
received in between; if a burst made no progress (no frame or slot free), the next try
is after ``TX_RETRY_S``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from xdpstackd.inetstack.completion import Completion
from xdpstackd.inetstack.stack import InetStack

if TYPE_CHECKING:
    from xdpstackd.datapath.xdp_program import XdpProgram

log = logging.getLogger(__name__)

RX_BATCH_FRAMES = 64
RX_BATCHES_PER_WAKEUP = 16  # then yield to the loop so API clients and timers get a turn
#: Received frames held in memory, waiting for the stack, at most (frames and bytes):
#: beyond it the rings are left to fill and the kernel drops (counted in its XDP
#: statistics). 50,000 RSTs at once (4 MB) fit; so do 20,000 full-size frames.
RX_BACKLOG_FRAMES = 131072
RX_BACKLOG_BYTES = 32 << 20
#: While frames wait in the datapath's transmit queue and no burst went out, retry after.
TX_RETRY_S = 0.001
#: API calls in one callback between two epilogues, at most.
EPILOGUE_EVERY_CALLS = 64


Tap = Callable[[str, bytes, float], None]


class Datapath(Protocol):
    """What the engine needs of a datapath. Optionally also a transmit queue (XskSocket):
    ``tx_pending() -> int``, the frames waiting in it, and ``flush() -> int``, which sends
    the next burst of them and returns how many still wait."""

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
        self._flooded: frozenset[int] = frozenset()  # as last pushed to the XDP program
        self._steered: set[int] = set()
        self._running = False
        self._dirty = False  # an API call ran; its epilogue is scheduled
        self._dirty_calls = 0  # API calls since the last epilogue
        self.wakeups = 0
        self.epilogues = 0
        # received frames not yet handed to the stack, as the datapath's batches
        self._rx_backlog: deque[list[bytes]] = deque()
        self._rx_backlog_frames = 0
        self._rx_backlog_bytes = 0
        self._rx_again: asyncio.Handle | None = None
        self.rx_backlog_peak = 0
        self._tx_pending: Callable[[], int] | None = getattr(datapath, "tx_pending", None)
        self._flush_tx: Callable[[], int] | None = getattr(datapath, "flush", None)
        if self._tx_pending is None or self._flush_tx is None:
            self._tx_pending = self._flush_tx = None
        self._tx_waiting = 0
        self._tx_retry: asyncio.Handle | None = None
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
        if self._dirty:
            self._epilogue()  # the last calls' frames (the RSTs of a shutdown) go out
        self._flush_before_stop()
        self._running = False
        self.loop.remove_reader(self.datapath.fileno())
        for handle in (self._timer, self._tx_retry, self._rx_again):
            if handle is not None:
                handle.cancel()
        self._timer = self._tx_retry = self._rx_again = None
        if self.xdp is not None:
            for port in sorted(self._steered):
                self.xdp.steer_remove(self.stack.ip, port)
        self._steered.clear()

    def _flush_before_stop(self, budget_s: float = 0.5) -> None:
        """Give the transmit queue a last chance (shutdown: nothing will retry it)."""
        flush, pending = self._flush_tx, self._tx_pending
        if flush is None or pending is None:
            return
        deadline = time.monotonic() + budget_s
        waiting = pending()
        while waiting and time.monotonic() < deadline:
            left = flush()
            if left >= waiting:  # no room: let the kernel send and complete
                time.sleep(0.001)
            waiting = left

    # -- event sources ------------------------------------------------------------------
    def _on_readable(self) -> None:
        self.wakeups += 1
        self._rx_again = None
        stack = self.stack
        backlog = self._rx_backlog
        now = self.clock()
        for _ in range(RX_BATCHES_PER_WAKEUP):
            self._drain_rx()
            if not backlog:
                break
            frames = backlog.popleft()
            self._rx_backlog_frames -= len(frames)
            self._rx_backlog_bytes -= sum(map(len, frames))
            if self._taps:
                self._tap("in", frames)
            stack.receive_frames(frames, now)
            if stack.tcp.ports_version != self._ports_version:
                # at once, not in the epilogue up to 16 batches later: a listener that
                # just overflowed (a SYN flood) hands its SYNs to XDP's cookies now
                self._sync_steering()
            if self._tx_waiting:  # a burst of what waits for each batch received
                assert self._flush_tx is not None
                self._tx_waiting = self._flush_tx()
        self._epilogue()
        if backlog and self._rx_again is None and self._running:
            # the rings may be empty now, so the descriptor would not call us again
            self._rx_again = self.loop.call_soon(self._on_readable)

    def _drain_rx(self) -> None:
        """Take every frame waiting in the datapath (up to the backlog's bound) into the
        backlog, so that the datapath can reuse its buffers (AF_XDP: refill the fill ring)
        before the stack gets to them."""
        receive = self.datapath.receive
        backlog = self._rx_backlog
        while (
            self._rx_backlog_frames < RX_BACKLOG_FRAMES
            and self._rx_backlog_bytes < RX_BACKLOG_BYTES
        ):
            frames = receive(RX_BATCH_FRAMES)
            if not frames:
                break
            backlog.append(frames)
            self._rx_backlog_frames += len(frames)
            self._rx_backlog_bytes += sum(map(len, frames))
            if len(frames) < RX_BATCH_FRAMES:
                break
        if self._rx_backlog_frames > self.rx_backlog_peak:
            self.rx_backlog_peak = self._rx_backlog_frames

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

    def _mark_dirty(self) -> None:
        """An API call changed the stack: one epilogue for all of this loop iteration's,
        or one every EPILOGUE_EVERY_CALLS calls."""
        self._dirty_calls += 1
        if not self._dirty:
            self._dirty = True
            self.loop.call_soon(self._on_dirty)
        elif self._dirty_calls >= EPILOGUE_EVERY_CALLS:
            self._epilogue()
            self._drain_rx()  # only into memory: the stack gets them after this callback
            if self._rx_backlog and self._rx_again is None:
                self._rx_again = self.loop.call_soon(self._on_readable)

    def _on_dirty(self) -> None:
        if self._dirty:  # else an rx wakeup or a timer ran the epilogue meanwhile
            self._epilogue()

    def _on_tx_retry(self) -> None:
        self._tx_retry = None
        self._epilogue()

    def _after_transmit(self, transmitted: bool) -> None:
        """Send the next burst of the datapath's transmit queue, or schedule it: on the
        next loop iteration while bursts go out, after TX_RETRY_S when one did not."""
        before = self._tx_waiting
        if not transmitted:  # (a transmit call has sent its burst already)
            assert self._flush_tx is not None
            self._flush_tx()
        assert self._tx_pending is not None
        self._tx_waiting = waiting = self._tx_pending()
        if waiting and self._tx_retry is None and self._running:
            if transmitted or waiting < before:
                self._tx_retry = self.loop.call_soon(self._on_tx_retry)
            else:
                self._tx_retry = self.loop.call_later(TX_RETRY_S, self._on_tx_retry)

    def _epilogue(self) -> None:
        self._dirty = False
        self._dirty_calls = 0
        self.epilogues += 1
        stack = self.stack
        if stack.tcp.ports_version != self._ports_version:
            self._sync_steering()
        frames = stack.poll_transmit()
        if frames:
            if self._taps:
                self._tap("out", frames)
            self.datapath.transmit(frames)  # one burst; the rest waits in its queue
        if self._tx_pending is not None and (frames or self._tx_waiting):
            self._after_transmit(bool(frames))
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
        # listeners whose SYN backlog overflows: the XDP program answers SYNs over its rate
        flooded = tcp.flooded_ports()
        if flooded != self._flooded:
            if self.xdp is not None:
                self.xdp.set_flooded(flooded)
            log.info("SYN backlog overflowing (SYN cookies) on ports: %s", sorted(flooded))
            self._flooded = flooded

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
            if self._running:
                completions = self.stack.poll_completions()
                if completions:
                    sink = self.completion_sink
                    for completion in completions:
                        sink(completion)
                self._mark_dirty()
            else:  # not started (or stopped): nothing will run the loop's epilogue
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
            "epilogues": self.epilogues,
            "rx_backlog": self._rx_backlog_frames,
            "rx_backlog_bytes": self._rx_backlog_bytes,
            "rx_backlog_peak": self.rx_backlog_peak,
            "uptime_s": time.time() - self.started_at,
        }
        if self.xdp is not None:
            out["xdp"] = self.xdp.counters()
        return out
