"""What an idle connection costs in the core, in bytes of Python objects (tracemalloc).

The daemon holds 100,000 idle connections (bench/README.md); the kernel spends ~3.9 KB of
slab on each. Three empty deques per connection (760 bytes each: the object and its first
block) once made the core's cost 5.6 KB; queues are now made when something waits in them
and dropped when they empty."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

from pair import B_IP, PeerPair

#: Bytes per idle established connection and end; the core measures ~2.9 KB.
IDLE_CONNECTION_BOUND = 4096


def _connect(p: PeerPair, lqd: int) -> tuple[int, int]:
    """A new connection to b's listener: (a's qd, b's qd)."""
    aqt = p.b.accept(lqd)
    cqd = p.a.socket()
    cqt = p.a.connect(cqd, (B_IP, 8080), p.now)
    p.wait("a", cqt)
    return cqd, p.wait("b", aqt).new_qd  # type: ignore[return-value]


def _bytes_per_connection_end(
    p: PeerPair, lqd: int, n: int, after: Callable[[int, int], None] = lambda c, s: None
) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(n):
            after(*_connect(p, lqd))
        p.run_for(1.0)  # delayed ACKs and timers settle
        p.trace.clear()  # the harness's own record of every segment
        for done in p.completions.values():
            done.clear()
        gc.collect()
        grown = tracemalloc.take_snapshot().compare_to(before, "filename")
    finally:
        tracemalloc.stop()
    return sum(stat.size_diff for stat in grown) / n / 2


def _listening_pair() -> tuple[PeerPair, int]:
    p = PeerPair()
    lqd = p.b.socket()
    p.b.bind(lqd, (B_IP, 8080))
    p.b.listen(lqd, 1024)
    for _ in range(20):  # warm up: tables and free lists sized
        _connect(p, lqd)
    return p, lqd


def test_an_idle_connection_costs_less_than_4_kib_per_end() -> None:
    p, lqd = _listening_pair()
    assert _bytes_per_connection_end(p, lqd, 300) < IDLE_CONNECTION_BOUND


def test_a_connection_idle_after_traffic_keeps_no_queue_behind() -> None:
    """Data received and read, then idle: the emptied receive queue is gone again."""
    p, lqd = _listening_pair()

    def exchange(cqd: int, sqd: int) -> None:
        p.wait("a", p.a.push(cqd, b"x" * 100, p.now))
        assert p.wait("b", p.b.pop(sqd, None, p.now)).data == b"x" * 100

    assert _bytes_per_connection_end(p, lqd, 200, exchange) < IDLE_CONNECTION_BOUND
