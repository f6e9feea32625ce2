"""ACKs per receive batch: segments that arrive together (``begin_batch`` .. ``end_batch``,
an AF_XDP rx batch) draw one ACK per connection at the end, as Linux ACKs a GRO-merged
segment once; what must be ACKed at once still is, and without a batch nothing changes.
"""

from __future__ import annotations

from pair import PeerPair, segment

from xdpstackd.inetstack.layer4.tcp.header import ACK, FIN, PSH, RST, build_tcp, parse_tcp
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

PORT = 8080


class Conn:
    """b's side of an established connection, fed by hand-made segments from a."""

    def __init__(self, pair: PeerPair, port: int = PORT) -> None:
        self.pair = pair
        _, cqd, self.sqd = pair.connect(port)
        pair.run_for(1.0)  # handshake ACKs and timers settled
        pair.filter = lambda who, hdr, payload: who != "b"  # b's answers stay in its outbox
        self.client_port = pair.a.getsockname(cqd)[1]
        self.port = port
        rod = pair.b.snapshot(self.sqd)["ordered_delivery"]
        self.next_seq = int(rod["rcv_nxt"])
        self.ack_for_b = int(rod["snd_nxt"])
        self.mss = pair.b.config.mss

    def data(self, nbytes: int | None = None, *, skip: int = 0, flags: int = ACK) -> bytes:
        """The next segment of the stream (``skip`` bytes further on: out of order)."""
        n = self.mss if nbytes is None else nbytes
        seq = self.next_seq + skip
        if not skip:
            self.next_seq = (self.next_seq + n + (1 if flags & FIN else 0)) & 0xFFFFFFFF
        hdr = segment(self.client_port, self.port, seq, self.ack_for_b, flags)
        return self._build(hdr, bytes(n))

    def rst(self) -> bytes:
        return self._build(segment(self.client_port, self.port, self.next_seq, 0, RST), b"")

    def _build(self, hdr, payload: bytes) -> bytes:  # type: ignore[no-untyped-def]
        return build_tcp(hdr, payload, self.pair.ip("a"), self.pair.ip("b"))


def acks_out(pair: PeerPair) -> list[int]:
    """The ACK numbers of the pure ACKs b sent since the last call."""
    out = []
    for src, dst, seg in pair.b.poll_transmit():
        hdr, payload = parse_tcp(seg, src, dst)
        assert not payload and hdr.flags & ACK
        out.append(hdr.ack_num.value)
    return out


def receive(pair: PeerPair, segments: list[bytes], *, batch: bool) -> list[list[int]]:
    """Deliver ``segments`` to b; the ACKs sent after each one, and (batch) at the end."""
    b, src, dst = pair.b, pair.ip("a"), pair.ip("b")
    if batch:
        b.begin_batch()
    seen = []
    for seg in segments:
        b.receive(src, dst, seg, pair.now)
        seen.append(acks_out(pair))
    if batch:
        b.end_batch()
        seen.append(acks_out(pair))
    return seen


def test_a_batch_of_in_order_segments_is_acked_once_at_its_end() -> None:
    pair = PeerPair()
    conn = Conn(pair)
    segs = [conn.data() for _ in range(10)]
    seen = receive(pair, segs, batch=True)
    assert seen[:-1] == [[]] * 10
    assert seen[-1] == [conn.next_seq]
    assert pair.b.snapshot(conn.sqd)["ordered_delivery"]["ack_deadline"] is None


def test_without_a_batch_every_second_full_segment_is_acked_at_once() -> None:
    pair = PeerPair()
    conn = Conn(pair)
    start = conn.next_seq
    seen = receive(pair, [conn.data() for _ in range(6)], batch=False)
    mss = conn.mss
    assert seen == [[], [start + 2 * mss], [], [start + 4 * mss], [], [start + 6 * mss]]


def test_a_lone_segment_in_a_batch_waits_for_the_delayed_ack_timer() -> None:
    pair = PeerPair()
    conn = Conn(pair)
    assert receive(pair, [conn.data()], batch=True) == [[], []]
    deadline = pair.b.snapshot(conn.sqd)["ordered_delivery"]["ack_deadline"]
    assert deadline == pair.now + pair.b.config.delayed_ack_s
    pair.b.handle_timers(deadline)
    assert acks_out(pair) == [conn.next_seq]


def test_out_of_order_data_in_a_batch_is_acked_at_once_and_not_again_at_the_end() -> None:
    pair = PeerPair()
    conn = Conn(pair)
    first, second = conn.data(), conn.data()
    in_order_end = conn.next_seq
    ahead = conn.data(skip=conn.mss)
    seen = receive(pair, [first, second, ahead], batch=True)
    assert seen == [[], [], [in_order_end], []]  # the duplicate ACK, at once


def test_a_filled_hole_is_acked_at_once_inside_a_batch() -> None:
    pair = PeerPair()
    conn = Conn(pair)
    hole = conn.data()
    after = conn.data()
    receive(pair, [after], batch=True)  # out of order: its duplicate ACK went out
    seen = receive(pair, [hole, conn.data()], batch=True)
    assert seen[0] == [(conn.next_seq - conn.mss) & 0xFFFFFFFF]  # the hole filled: at once
    assert seen[1:] == [[], []]  # one more segment after it: no second ACK is due yet


def test_a_fin_in_a_batch_is_acked_at_once_and_not_again_at_the_end() -> None:
    pair = PeerPair()
    conn = Conn(pair)
    segs = [conn.data(), conn.data(), conn.data(100, flags=ACK | PSH | FIN)]
    seen = receive(pair, segs, batch=True)
    assert seen == [[], [], [conn.next_seq], []]


def test_each_connection_in_a_batch_gets_one_ack() -> None:
    pair = PeerPair()
    one = Conn(pair, 8080)
    pair.filter = None
    two = Conn(pair, 8081)
    segs = [s for _ in range(4) for s in (one.data(), two.data())]
    seen = receive(pair, segs, batch=True)
    assert seen[:-1] == [[]] * 8
    assert sorted(seen[-1]) == sorted([one.next_seq, two.next_seq])


def test_a_connection_reset_inside_the_batch_gets_no_ack_at_its_end() -> None:
    pair = PeerPair()
    conn = Conn(pair)
    seen = receive(pair, [conn.data(), conn.data(), conn.rst()], batch=True)
    assert seen == [[], [], [], []]
    assert pair.b.counters["tcp_resets_in"] == 1


def test_data_sent_during_the_batch_carries_the_ack_instead() -> None:
    """b has data to send when the segments arrive: its data segment carries the ACK and
    the end of the batch adds no pure ACK."""
    pair = PeerPair()
    conn = Conn(pair)
    pair.b.begin_batch()
    b, src, dst = pair.b, pair.ip("a"), pair.ip("b")
    b.receive(src, dst, conn.data(), pair.now)
    b.receive(src, dst, conn.data(), pair.now)
    b.push(conn.sqd, b"reply", pair.now)
    b.end_batch()
    out = [parse_tcp(seg, s, d) for s, d, seg in b.poll_transmit()]
    assert [(bytes(p), h.ack_num) for h, p in out] == [(b"reply", SeqNumber(conn.next_seq))]
