"""The datapath's impairment stage (``xdpstackd.datapath.impair``) without a kernel: its
configuration ([impair] and --impair), each impairment on a fake datapath, determinism from
the seed, the engine's wakeup for held rx frames, and a whole transfer through the engine
over a simulated link impaired both ways."""

from __future__ import annotations

import asyncio
import hashlib
import select
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from xdpstackd.cli import build_parser, settings_from_args
from xdpstackd.datapath.impair import ImpairedDatapath, Impairments, parse_spec
from xdpstackd.datapath.sim import SimulatedDatapath
from xdpstackd.engine import Engine
from xdpstackd.inetstack.completion import Completion
from xdpstackd.inetstack.config import StackConfig, TcpConfig
from xdpstackd.inetstack.stack import InetStack
from xdpstackd.settings import ConfigError, Settings, load_file


class FakeDatapath:
    """Frames to receive are queued by the test; transmitted ones are recorded. Its
    descriptor is readable while frames wait, as an AF_XDP socket's is."""

    def __init__(self) -> None:
        self.rx: deque[bytes] = deque()
        self.sent: list[bytes] = []
        self.closed = False
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)

    def feed(self, frames: list[bytes]) -> None:
        if not self.rx:
            self._w.send(b"x")
        self.rx.extend(frames)

    def fileno(self) -> int:
        return self._r.fileno()

    def receive(self, max_frames: int = 64) -> list[bytes]:
        out = [self.rx.popleft() for _ in range(min(max_frames, len(self.rx)))]
        if not self.rx:
            try:
                self._r.recv(64)
            except BlockingIOError:
                pass
        return out

    def transmit(self, frames: list[bytes]) -> int:
        self.sent.extend(frames)
        return len(frames)

    def stats(self) -> dict[str, int]:
        return {"rx_frames": 0, "tx_frames": len(self.sent)}

    def close(self) -> None:
        self.closed = True
        self._r.close()
        self._w.close()


def frames(n: int, size: int = 100) -> list[bytes]:
    return [i.to_bytes(4, "big") * (size // 4) for i in range(n)]


def readable(fd: int, timeout: float = 0.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


# --------------------------------------------------------------------------- settings
def test_impairments_validate_and_describe() -> None:
    assert not Impairments().active
    assert Impairments(reorder=0.5, reorder_delay_s=0.0).active is False
    imp = Impairments(loss=0.02, reorder=0.02, reorder_delay_s=0.003)
    assert imp.active and imp.delays
    assert imp.describe() == "loss=0.02 reorder=0.02/3ms"
    assert Impairments(corrupt=0.1).delays is False
    with pytest.raises(ValueError, match="loss"):
        Impairments(loss=1.5)
    with pytest.raises(ValueError, match="delay_s"):
        Impairments(delay_s=-1)


def test_parse_spec() -> None:
    assert parse_spec("loss=0.02,reorder=0.1") == (("rx", "tx"), {"loss": 0.02, "reorder": 0.1})
    assert parse_spec("rx:corrupt=0.01") == (("rx",), {"corrupt": 0.01})
    assert parse_spec("tx:delay=0.005, jitter=0.001") == (
        ("tx",),
        {"delay_s": 0.005, "jitter_s": 0.001},
    )
    assert parse_spec("both:reorder-delay=0.004") == (("rx", "tx"), {"reorder_delay_s": 0.004})
    for bad in ("up:loss=1", "loss", "colour=1", "loss=x", ""):
        with pytest.raises(ValueError):
            parse_spec(bad)


def test_impair_section_of_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    assert not Settings().impair.active  # off by default
    path.write_text(
        "[impair]\nseed = 9\nloss = 0.02\nreorder = 0.05\n"
        "[impair.rx]\ncorrupt = 0.01\nloss = 0.03\n[impair.tx]\ndelay_s = 0.001\n"
    )
    imp = load_file(path).impair
    assert imp.active and imp.seed == 9
    assert imp.rx == Impairments(loss=0.03, reorder=0.05, corrupt=0.01)
    assert imp.tx == Impairments(loss=0.02, reorder=0.05, delay_s=0.001)
    for text, key in (
        ("[impair]\nloss = 2\n", "impair.loss"),
        ("[impair.rx]\nloss = -0.1\n", "impair.rx.loss"),
        ("[impair.tx]\nrate = 1\n", "impair.tx.rate"),
        ("[impair]\nsalt = 1\n", "impair.salt"),
        ('[impair]\nseed = "x"\n', "impair.seed"),
        ("[impair]\nrx = 1\n", "impair.rx"),
        ("[impair.rx]\ndelay_s = true\n", "impair.rx.delay_s"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_file(path)


def test_impair_options_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text("[impair]\nloss = 0.5\n")
    args = build_parser().parse_args(
        [
            "--interface", "eth9", "--config", str(path),
            "--impair", "loss=0.02,reorder=0.02", "--impair", "rx:corrupt=0.01",
            "--impair-seed", "4",
        ]
    )  # fmt: skip
    imp = settings_from_args(args).impair
    assert imp.seed == 4
    assert imp.rx == Impairments(loss=0.02, reorder=0.02, corrupt=0.01)
    assert imp.tx == Impairments(loss=0.02, reorder=0.02)
    assert not settings_from_args(build_parser().parse_args(["--interface", "e"])).impair.active
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--interface", "e", "--impair", "rx:loss=3"])
    assert info.value.code == 2


# --------------------------------------------------------------------------- the stage
def test_off_is_a_pass_through() -> None:
    inner = FakeDatapath()
    dp = ImpairedDatapath(inner)
    batch = frames(10)
    inner.feed(batch)
    assert dp.receive(64) == batch
    assert dp.transmit(batch) == 10 and inner.sent == batch
    stats = dp.stats()
    assert stats["impair_rx_frames"] == 0 and stats["tx_frames"] == 10
    dp.close()
    assert inner.closed


def run_loss(seed: int, loss: float, n: int = 20000) -> tuple[list[bytes], dict[str, int]]:
    inner = FakeDatapath()
    dp = ImpairedDatapath(inner, rx=Impairments(loss=loss), seed=seed)
    inner.feed(frames(n, 8))
    got: list[bytes] = []
    while batch := dp.receive(64):
        got += batch
    return got, dp.stats()


def test_loss_rate_and_determinism() -> None:
    got, stats = run_loss(1, 0.02)
    assert stats["impair_rx_frames"] == 20000
    assert stats["impair_rx_dropped"] == 20000 - len(got)
    assert 300 < stats["impair_rx_dropped"] < 500  # 2% of 20000 = 400
    assert got == sorted(got)  # loss alone never reorders
    again, _ = run_loss(1, 0.02)
    other, _ = run_loss(2, 0.02)
    assert again == got
    assert other != got


def test_a_thinned_batch_still_fills_up() -> None:
    """The engine reads again only after a full batch: loss must not shorten a batch while
    the inner datapath has more frames."""
    inner = FakeDatapath()
    dp = ImpairedDatapath(inner, rx=Impairments(loss=0.5), seed=3)
    inner.feed(frames(1000, 8))
    assert len(dp.receive(64)) == 64


def test_duplicate_and_corrupt() -> None:
    inner = FakeDatapath()
    dp = ImpairedDatapath(inner, tx=Impairments(duplicate=0.1, corrupt=0.1), seed=5)
    batch = frames(2000, 64)
    dp.transmit(batch)
    stats = dp.stats()
    assert len(inner.sent) == 2000 + stats["impair_tx_duplicated"]
    assert 120 < stats["impair_tx_duplicated"] < 280
    assert 120 < stats["impair_tx_corrupted"] < 330
    originals = set(batch)
    damaged = [f for f in inner.sent if f not in originals]
    assert len(damaged) == stats["impair_tx_corrupted"]
    as_ints = [int.from_bytes(f, "big") for f in batch]
    for frame in damaged:  # exactly one bit of some original flipped, length kept
        value = int.from_bytes(frame, "big")
        assert len(frame) == 64
        assert min((value ^ o).bit_count() for o in as_ints) == 1


def test_tx_reorder_and_delay_on_a_loop() -> None:
    async def main() -> tuple[list[bytes], dict[str, int], list[bytes]]:
        loop = asyncio.get_running_loop()
        inner = FakeDatapath()
        imp = Impairments(reorder=0.2, reorder_delay_s=0.01, delay_s=0.002)
        dp = ImpairedDatapath(inner, tx=imp, seed=7, loop=loop)
        batch = frames(200, 8)
        for i in range(0, 200, 10):
            dp.transmit(batch[i : i + 10])
            await asyncio.sleep(0.001)
        assert len(inner.sent) < 200  # the delay holds them back
        await asyncio.sleep(0.05)
        stats = dp.stats()
        dp.close()
        return inner.sent, stats, batch

    sent, stats, batch = asyncio.run(main())
    assert sorted(sent) == sorted(batch)  # nothing lost
    assert sent != batch  # reordered
    assert stats["impair_tx_delayed"] == 200
    assert 20 < stats["impair_tx_reordered"] < 70
    assert stats["impair_tx_held"] == 0


def test_rx_held_frames_wake_the_reader_and_the_signal_clears() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        inner = FakeDatapath()
        dp = ImpairedDatapath(inner, rx=Impairments(delay_s=0.02), loop=loop)
        inner.feed(frames(3))
        assert dp.receive(64) == []  # all held
        assert dp.stats()["impair_rx_held"] == 3
        assert not readable(dp.fileno())
        woke = asyncio.Event()
        loop.add_reader(dp.fileno(), woke.set)
        t0 = time.monotonic()
        await asyncio.wait_for(woke.wait(), 2.0)
        assert time.monotonic() - t0 >= 0.015
        loop.remove_reader(dp.fileno())
        assert dp.receive(2) == frames(3)[:2]
        assert readable(dp.fileno())  # one more waits
        assert dp.receive(2) == frames(3)[2:]
        assert not readable(dp.fileno())  # and the wakeup is cleared
        dp.close()

    asyncio.run(main())


def test_held_frames_are_bounded() -> None:
    async def main() -> dict[str, int]:
        inner = FakeDatapath()
        dp = ImpairedDatapath(
            inner,
            tx=Impairments(delay_s=1.0),
            loop=asyncio.get_running_loop(),
            max_held_frames=50,
        )
        dp.transmit(frames(80))
        stats = dp.stats()
        dp.close()  # sends what it held
        assert len(inner.sent) == 50
        return stats

    stats = asyncio.run(main())
    assert stats["impair_tx_delayed"] == 50
    assert stats["impair_tx_overflow"] == 30
    assert stats["impair_tx_held"] == 50


def test_the_inner_transmit_queue_is_reachable_through_the_impairment_stage() -> None:
    """The engine sends what waits in an AF_XDP socket's transmit queue (no free frame)
    only through ``flush``/``tx_pending``: under --impair they must reach the socket."""

    class QueueingDatapath(FakeDatapath):
        def __init__(self) -> None:
            super().__init__()
            self.queue: list[bytes] = []

        def transmit(self, frames: list[bytes]) -> int:
            self.queue.extend(frames)
            return len(frames)

        def flush(self) -> int:
            self.sent.extend(self.queue)
            self.queue.clear()
            return 0

        def tx_pending(self) -> int:
            return len(self.queue)

    inner = QueueingDatapath()
    dp = ImpairedDatapath(inner, tx=Impairments(loss=0.0))
    dp.transmit(frames(3))
    assert dp.tx_pending() == 3 and inner.sent == []
    assert dp.flush() == 0
    assert dp.tx_pending() == 0 and inner.sent == frames(3)
    plain = ImpairedDatapath(FakeDatapath())  # an inner datapath without a queue
    assert plain.tx_pending() == 0 and plain.flush() == 0


def test_delays_need_the_loop() -> None:
    with pytest.raises(ValueError, match="loop"):
        ImpairedDatapath(FakeDatapath(), rx=Impairments(delay_s=0.001))


# --------------------------------------------------------------------------- engine
OUR_IP, FAR_IP = "10.0.0.1", "10.0.0.2"
NBYTES = 400_000


def _pattern(n: int) -> bytes:
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(i.to_bytes(4, "big")).digest()
        i += 1
    return bytes(out[:n])


def test_engine_transfer_both_ways_through_an_impaired_simulated_link() -> None:
    """Loss, reordering, duplication and corruption on both directions of the simulated
    link, applied by the stage around it: the engine's stack and the far stack still move
    400 kB each way intact, with retransmissions and checksum drops counted."""
    import uvloop

    config = StackConfig(tcp=TcpConfig(msl_s=0.1, rto_min_s=0.05, rto_initial_s=0.2))
    imp = Impairments(loss=0.03, reorder=0.05, reorder_delay_s=0.004, duplicate=0.01)
    corrupting = Impairments(
        loss=0.03, reorder=0.05, reorder_delay_s=0.004, duplicate=0.01, corrupt=0.02
    )
    data_out, data_back = _pattern(NBYTES), _pattern(NBYTES)[::-1]
    result: dict[str, Any] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours = InetStack(config, mac=b"\x02\0\0\0\0\1", ip=OUR_IP, prefix_len=24, seed=1)
        far = InetStack(config, mac=b"\x02\0\0\0\0\2", ip=FAR_IP, prefix_len=24, seed=2)
        sim = SimulatedDatapath(loop, far, delay_s=0.0002)
        dp = ImpairedDatapath(sim, rx=corrupting, tx=imp, seed=11, loop=loop)
        engine = Engine(ours, dp, loop=loop)
        done: dict[int, Completion] = {}
        engine.completion_sink = lambda c: done.__setitem__(c.qt, c)
        engine.start()

        def far_do(fn: Any, *args: Any) -> Any:
            try:
                return fn(*args)
            finally:
                sim._far_flush()

        async def wait(qt: int, far_side: bool = False, timeout: float = 30.0) -> Completion:
            deadline = time.monotonic() + timeout
            while True:
                if far_side:
                    for c in sim.far_completions:
                        if c.qt == qt:
                            return c
                elif qt in done:
                    return done.pop(qt)
                assert time.monotonic() < deadline, f"qt {qt} not done in {timeout}s"
                await asyncio.sleep(0.002)

        lq = far.socket()
        far.bind(lq, (FAR_IP, 80))
        far.listen(lq, 8)
        accept_qt = far_do(far.accept, lq)
        qd = engine.socket()
        conn = await wait(engine.connect(qd, (FAR_IP, 80)))
        assert conn.errno == 0
        fqd = (await wait(accept_qt, far_side=True)).new_qd
        push_qt = engine.push(qd, data_out)
        got = bytearray()
        while len(got) < NBYTES:
            c = await wait(far_do(far.pop, fqd, None, time.monotonic()), far_side=True)
            assert c.errno == 0 and c.data, c
            got += c.data
        assert (await wait(push_qt)).errno == 0
        far_do(far.push, fqd, data_back, time.monotonic())
        back = bytearray()
        while len(back) < NBYTES:
            c = await wait(engine.pop(qd))
            assert c.errno == 0 and c.data, c
            back += c.data
        engine.close(qd)
        result["out_ok"] = bytes(got) == data_out
        result["back_ok"] = bytes(back) == data_back
        result["stats"] = engine.stats()
        engine.stop()
        dp.close()

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert result["out_ok"] and result["back_ok"]
    stack, dpstats = result["stats"]["stack"], result["stats"]["datapath"]
    assert stack.get("tcp_retransmits", 0) > 0, stack
    assert stack.get("tcp_drop_bad_checksum", 0) + stack.get("ipv4_drop_bad_checksum", 0) > 0
    for direction in ("rx", "tx"):
        for counter in ("dropped", "reordered", "duplicated"):
            assert dpstats[f"impair_{direction}_{counter}"] > 0, (direction, counter, dpstats)
    assert dpstats["impair_rx_corrupted"] > 0
