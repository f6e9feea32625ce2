"""The engine's per-iteration work (xdpstackd.engine): one epilogue, one transmit call and
one kick for all the API calls of a loop iteration; received frames drained from the
datapath before the stack works on them; frames the datapath could not send yet retried.

These run the real engine and a real ``InetStack`` on an asyncio loop, against small
in-process datapaths that record what the engine asks of them; no root needed.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import Any

from xdpstackd.engine import Engine
from xdpstackd.inetstack.config import StackConfig
from xdpstackd.inetstack.layer2.ethernet import ETHERTYPE_ARP, build_ethernet
from xdpstackd.inetstack.stack import InetStack

OUR_IP = "10.0.0.1"
OUR_MAC = bytes.fromhex("020000000001")
FAR_MAC = bytes.fromhex("020000000002")


class RecordingDatapath:
    """Frames in from a list the test fills; every transmit call recorded."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self.rx: deque[bytes] = deque()
        self.transmits: list[list[bytes]] = []

    def fileno(self) -> int:
        return self._r.fileno()

    def receive(self, max_frames: int = 64) -> list[bytes]:
        out = []
        while self.rx and len(out) < max_frames:
            out.append(self.rx.popleft())
        return out

    def transmit(self, frames: list[bytes]) -> int:
        self.transmits.append(list(frames))
        return len(frames)

    def stats(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        self._r.close()
        self._w.close()


def _stack() -> InetStack:
    return InetStack(StackConfig(), mac=OUR_MAC, ip=OUR_IP, prefix_len=24, seed=1)


def _run(main: Any) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main(loop))
    finally:
        loop.close()


def test_api_calls_of_one_loop_iteration_share_one_transmit_call() -> None:
    async def main(loop: asyncio.AbstractEventLoop) -> None:
        dp = RecordingDatapath()
        engine = Engine(_stack(), dp, loop=loop)
        engine.start()
        start_epilogues = engine.epilogues
        # three connects in one callback, as three clients' requests read in one batch:
        # each produces a frame (an ARP request for its own neighbour)
        qds = [engine.socket() for _ in range(3)]
        qts = [engine.connect(qd, (f"10.0.0.{10 + i}", 80)) for i, qd in enumerate(qds)]
        assert all(isinstance(qt, int) for qt in qts)  # values still returned at once
        assert dp.transmits == []  # nothing sent inside the calls
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(dp.transmits) == 1, dp.transmits
        assert len(dp.transmits[0]) == 3
        assert engine.epilogues == start_epilogues + 1
        engine.stop()
        dp.close()

    _run(main)


def test_a_steering_change_is_synced_before_the_frames_of_the_same_iteration() -> None:
    class Xdp:
        def __init__(self) -> None:
            self.log: list[tuple[str, int]] = []

        def steer_add(self, ip: int, port: int) -> None:
            self.log.append(("steer", port))

        def steer_remove(self, ip: int, port: int) -> None:
            self.log.append(("unsteer", port))

    async def main(loop: asyncio.AbstractEventLoop) -> None:
        xdp = Xdp()

        class Dp(RecordingDatapath):
            def transmit(self, frames: list[bytes]) -> int:
                xdp.log.append(("transmit", len(frames)))
                return super().transmit(frames)

        dp = Dp()
        engine = Engine(_stack(), dp, loop=loop, xdp=xdp)  # type: ignore[arg-type]
        engine.start()
        qd = engine.socket()
        engine.bind(qd, (OUR_IP, 5555))
        engine.connect(qd, ("10.0.0.9", 80))
        assert xdp.log == []
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert xdp.log[0] == ("steer", 5555)
        assert xdp.log[1][0] == "transmit"
        engine.stop()
        dp.close()

    _run(main)


def test_completions_of_an_api_call_reach_the_sink_before_the_call_returns() -> None:
    """The API server holds completions that arrive during a call and routes them after
    the reply: it sees each request's completions, and its client's output grow, at once."""

    async def main(loop: asyncio.AbstractEventLoop) -> None:
        dp = RecordingDatapath()
        engine = Engine(_stack(), dp, loop=loop)
        seen: list[Any] = []
        engine.completion_sink = seen.append
        engine.start()
        lq = engine.socket()
        engine.bind(lq, (OUR_IP, 7001))
        engine.listen(lq, 8)
        accept_qt = engine.accept(lq)
        engine.close(lq)  # the pending accept fails (ECANCELED or similar) at once
        assert any(c.qt == accept_qt for c in seen), seen
        engine.stop()
        dp.close()

    _run(main)


def test_received_frames_are_drained_from_the_datapath_before_the_stack_works() -> None:
    """A datapath with a ring of 256 frames and a burst arriving while the stack works on
    a batch: the engine empties the ring into its backlog before every batch, so the
    burst lands in the ring's free space and nothing is dropped."""
    ring_frames = 256
    burst = 20_000

    class RingDatapath(RecordingDatapath):
        def __init__(self) -> None:
            super().__init__()
            self.dropped = 0
            self.to_come = burst

        def arrive(self, n: int) -> None:
            n = min(n, self.to_come)
            self.to_come -= n
            room = ring_frames - len(self.rx)
            self.dropped += max(0, n - room)
            for _ in range(min(n, room)):
                self.rx.append(_arp_reply())

    async def main(loop: asyncio.AbstractEventLoop) -> None:
        dp = RingDatapath()
        stack = _stack()
        seen = [0]
        receive_frames = stack.receive_frames

        def busy_stack(frames: list[bytes], now: float) -> None:
            # frames keep arriving while the stack works: 200 per batch of 64, faster
            # than it works, but fewer than the ring holds
            seen[0] += len(frames)
            dp.arrive(200)
            receive_frames(frames, now)

        stack.receive_frames = busy_stack  # type: ignore[method-assign]
        engine = Engine(stack, dp, loop=loop)
        engine.start()
        dp.arrive(ring_frames)
        for _ in range(10_000):
            if seen[0] == burst:
                break
            engine._on_readable()  # the descriptor's readiness, without a real fd
            await asyncio.sleep(0)
        assert dp.dropped == 0
        assert seen[0] == burst
        assert engine.stats()["rx_backlog_peak"] > ring_frames
        assert engine.stats()["rx_backlog"] == 0
        engine.stop()
        dp.close()

    _run(main)


def _arp_reply() -> bytes:
    """A gratuitous ARP reply from the far MAC: something the stack parses and drops
    cheaply (it is not for a pending resolution)."""
    import struct

    arp = struct.pack(
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, FAR_MAC, bytes([10, 0, 0, 2]), OUR_MAC,
        bytes([10, 0, 0, 1]),
    )  # fmt: skip
    return bytes(build_ethernet(OUR_MAC, FAR_MAC, ETHERTYPE_ARP, arp))


def test_frames_the_datapath_could_not_send_are_retried_until_sent() -> None:
    class QueueingDatapath(RecordingDatapath):
        """Sends nothing at transmit (no tx frame free) and 1 frame per flush (one
        completion came back)."""

        def __init__(self) -> None:
            super().__init__()
            self.waiting: list[bytes] = []
            self.sent: list[bytes] = []

        def transmit(self, frames: list[bytes]) -> int:
            self.waiting.extend(frames)
            return len(frames)

        def flush(self) -> int:
            if self.waiting:
                self.sent.append(self.waiting.pop(0))
            return len(self.waiting)

        def tx_pending(self) -> int:
            return len(self.waiting)

    async def main(loop: asyncio.AbstractEventLoop) -> None:
        dp = QueueingDatapath()
        engine = Engine(_stack(), dp, loop=loop)
        engine.start()
        for i in range(5):
            engine.connect(engine.socket(), (f"10.0.0.{20 + i}", 80))
        for _ in range(500):
            await asyncio.sleep(0.002)
            if len(dp.sent) == 5:
                break
        assert len(dp.sent) == 5 and dp.waiting == []
        engine.stop()
        dp.close()

    _run(main)


def test_the_rx_backlog_is_bounded(monkeypatch) -> None:
    """Beyond RX_BACKLOG_FRAMES the engine leaves frames in the datapath (whose rings then
    fill and drop, counted by the kernel) instead of holding them all in memory."""
    from xdpstackd import engine as engine_module

    monkeypatch.setattr(engine_module, "RX_BACKLOG_FRAMES", 256)

    async def main(loop: asyncio.AbstractEventLoop) -> None:
        dp = RecordingDatapath()
        for _ in range(5000):
            dp.rx.append(_arp_reply())
        engine = Engine(_stack(), dp, loop=loop)
        engine.start()
        engine._on_readable()
        # drained up to the bound before the first batch, then topped up again before
        # each of the wakeup's batches
        assert engine.stats()["rx_backlog_peak"] <= 256
        assert len(dp.rx) >= 5000 - 256 - 16 * 64
        for _ in range(200):
            if not dp.rx and not engine.stats()["rx_backlog"]:
                break
            await asyncio.sleep(0)  # the engine goes on by itself (call_soon)
        assert not dp.rx and engine.stats()["rx_backlog"] == 0
        engine.stop()
        dp.close()

    _run(main)
