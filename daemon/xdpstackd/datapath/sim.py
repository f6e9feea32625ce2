"""A simulated datapath: the engine's frames go to a second ``InetStack`` in the same
process, over a link with a fixed delay, driven by the same event loop.

It lets the whole daemon above the datapath (engine, API server, client library) run
and be tested without root, XDP or AF_XDP: the far end is a real stack, not a mock.
The far end's own timers and frames are driven here; tests act on it through
``far_call`` (thread-safe: it runs the call on the loop's thread and waits).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from xdpstackd.inetstack.completion import Completion
from xdpstackd.inetstack.stack import InetStack


class SimulatedDatapath:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        far: InetStack,
        *,
        delay_s: float = 0.0002,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.loop = loop
        self.far = far
        self.delay_s = delay_s
        self.clock = clock
        self.far_completions: list[Completion] = []
        self._rx: deque[bytes] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._signalled = False
        self._far_timer: asyncio.TimerHandle | None = None
        self._stats = {"rx_frames": 0, "tx_frames": 0}
        self._closed = False

    # -- Datapath ------------------------------------------------------------------------
    def fileno(self) -> int:
        return self._wake_r.fileno()

    def receive(self, max_frames: int = 64) -> list[bytes]:
        rx = self._rx
        if self._signalled and not rx:
            self._drain_wakeups()
        out = []
        while rx and len(out) < max_frames:
            out.append(rx.popleft())
        self._stats["rx_frames"] += len(out)
        if not rx:
            self._drain_wakeups()
        return out

    def transmit(self, frames: list[bytes]) -> int:
        self._stats["tx_frames"] += len(frames)
        batch = list(frames)
        self.loop.call_later(self.delay_s, self._far_receive, batch)
        return len(frames)

    def stats(self) -> dict[str, int]:
        return dict(self._stats, rx_queued=len(self._rx))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._far_timer is not None:
                self._far_timer.cancel()
            self._wake_r.close()
            self._wake_w.close()

    # -- the far end ---------------------------------------------------------------------
    def far_call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run ``fn(*args)`` on the loop thread against the far stack; return its result.
        ``fn`` may take ``now`` through ``self.clock()``; frames it produces are sent."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the calling thread
                future.set_exception(exc)
            finally:
                self._far_flush()

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def _far_receive(self, frames: list[bytes]) -> None:
        if self._closed:
            return
        self.far.receive_frames(frames, self.clock())
        self._far_flush()

    def _far_on_timer(self) -> None:
        self._far_timer = None
        if self._closed:
            return
        self.far.handle_timers(self.clock())
        self._far_flush()

    def _far_flush(self) -> None:
        if self._closed:
            return
        frames = self.far.poll_transmit()
        if frames:
            self.loop.call_later(self.delay_s, self._deliver_to_engine, frames)
        self.far_completions.extend(self.far.poll_completions())
        deadline = self.far.next_deadline()
        if self._far_timer is not None:
            self._far_timer.cancel()
            self._far_timer = None
        if deadline is not None:
            self._far_timer = self.loop.call_later(
                max(deadline - self.clock(), 0.0), self._far_on_timer
            )

    def _deliver_to_engine(self, frames: list[bytes]) -> None:
        if self._closed:
            return
        self._rx.extend(frames)
        if not self._signalled:
            self._signalled = True
            try:
                self._wake_w.send(b"\x01")
            except BlockingIOError:
                pass

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        self._signalled = False
