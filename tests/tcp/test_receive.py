"""The receiving side: segment acceptability and trimming (RFC 9293 3.10.7.4),
out-of-order reassembly with a byte bound and immediate duplicate ACKs (RFC 5681 4.2),
and delayed ACKs (RFC 1122 4.2.3.2, RFC 9293 3.8.6.3)."""

from __future__ import annotations

import random

import pytest
from pair import PeerPair, segment

from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer4.tcp.header import ACK, PSH
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber


class Receiver:
    """b receives hand-made segments 'from a' on an established connection."""

    def __init__(self, config_b: TcpConfig | None = None, rcvbuf: int | None = None) -> None:
        self.p = p = PeerPair(config_b=config_b)
        lqd = p.b.socket()
        p.b.bind(lqd, ("10.0.0.2", 8080))
        if rcvbuf is not None:
            p.b.setsockopt(lqd, "SO_RCVBUF", rcvbuf)
        p.b.listen(lqd, 4)
        aqt = p.b.accept(lqd)
        self.cqd = p.a.socket()
        p.wait("a", p.a.connect(self.cqd, ("10.0.0.2", 8080), p.now))
        self.sqd = p.wait("b", aqt).new_qd
        self.a_port = p.a.getsockname(self.cqd)[1]
        p.filter = lambda who, h, d: who != "b"  # a must not react to what b says
        self.base = SeqNumber(self.rod()["rcv_nxt"])  # stream offset 0

    def rod(self) -> dict:
        return self.p.b.snapshot(self.sqd)["ordered_delivery"]

    def rcv_nxt_offset(self) -> int:
        return SeqNumber(self.rod()["rcv_nxt"]) - self.base

    def send(self, offset: int, payload: bytes) -> list:
        """Inject a data segment at stream ``offset``; return b's immediate replies."""
        p = self.p
        n = len(p.sent("b"))
        ack = SeqNumber(self.p.b.snapshot(self.sqd)["ordered_delivery"]["snd_nxt"])
        p.inject("b", segment(self.a_port, 8080, self.base + offset, ack, ACK | PSH), payload)
        return [h for _, h, _ in p.sent("b")[n:]]

    def readable(self) -> bytes:
        """Everything b's application can read now (without leaving a pop pending)."""
        if not self.rod()["recv_queue_bytes"]:
            return b""
        return self.p.wait("b", self.p.b.pop(self.sqd, None, self.p.now)).data


# -- acceptability and trimming -------------------------------------------------------------
def test_duplicate_old_data_is_acked_at_once_and_not_delivered_twice() -> None:
    r = Receiver()
    r.send(0, b"hello")
    assert r.readable() == b"hello"
    replies = r.send(0, b"hello")  # the same segment again (our ACK was lost, say)
    assert [(h.flags, h.ack_num - r.base) for h in replies] == [(ACK, 5)]
    assert r.readable() == b""
    assert r.rcv_nxt_offset() == 5


def test_segment_overlapping_rcv_nxt_is_trimmed_to_its_new_bytes() -> None:
    r = Receiver()
    r.send(0, b"abcdef")
    r.send(3, b"defGHI")  # 3 old bytes, 3 new
    assert r.readable() == b"abcdefGHI"
    assert r.rcv_nxt_offset() == 9


def test_data_beyond_the_advertised_window_is_trimmed() -> None:
    r = Receiver(rcvbuf=4096)
    fc = r.p.b.snapshot(r.sqd)["flow_control"]
    wnd = SeqNumber(fc["rcv_adv"]) - SeqNumber(r.rod()["rcv_nxt"])
    assert wnd == 4096
    data = random.Random(1).randbytes(6000)
    replies = r.send(0, data)
    assert r.rcv_nxt_offset() == wnd
    assert r.rod()["recv_queue_bytes"] == wnd
    assert replies and replies[-1].ack_num - r.base == wnd
    assert r.readable() == data[:wnd]


def test_segment_entirely_beyond_the_window_is_dropped_with_an_ack() -> None:
    r = Receiver(rcvbuf=4096)
    replies = r.send(5000, b"far away")
    assert [(h.flags, h.ack_num - r.base) for h in replies] == [(ACK, 0)]
    assert r.rod()["ooo_bytes"] == 0 and r.rcv_nxt_offset() == 0


# -- out-of-order reassembly ----------------------------------------------------------------
def test_out_of_order_segments_are_held_with_immediate_dup_acks_until_the_hole_fills() -> None:
    r = Receiver()
    replies = []
    for k in (1, 2, 3):  # segment 0 is "lost"
        replies += r.send(100 * k, bytes([k]) * 100)
    # each out-of-order segment draws an immediate ACK of the hole's start
    assert [(h.flags, h.ack_num - r.base) for h in replies] == [(ACK, 0)] * 3
    rod = r.rod()
    assert rod["ooo_bytes"] == 300 and rod["ooo_segments"] == 3
    assert rod["recv_queue_bytes"] == 0 and r.readable() == b""
    replies = r.send(0, b"\0" * 100)  # the hole is filled: everything is delivered
    assert [h.ack_num - r.base for h in replies] == [400]  # and ACKed at once
    assert r.readable() == b"".join(bytes([k]) * 100 for k in range(4))
    assert r.rod()["ooo_bytes"] == 0


def test_overlapping_out_of_order_segments_reassemble_exactly() -> None:
    r = Receiver()
    data = random.Random(2).randbytes(1000)
    for start, end in [(500, 700), (600, 900), (100, 300), (250, 520), (900, 1000), (0, 120)]:
        r.send(start, data[start:end])
    assert r.readable() == data
    assert r.rod()["ooo_bytes"] == 0


def test_out_of_order_queue_is_bounded_in_bytes() -> None:
    r = Receiver(TcpConfig(ooo_max_bytes=3000))
    for k in range(1, 7):
        r.send(1000 * k, bytes([k]) * 1000)
    rod = r.rod()
    assert rod["ooo_bytes"] <= 3000
    assert rod["ooo_bytes"] == 3000  # what fitted was kept
    r.send(0, b"\0" * 1000)
    got = r.readable()
    assert got == b"".join(bytes([k]) * 1000 for k in range(4))  # the rest must be resent
    assert r.rod()["ooo_bytes"] == 0


def test_lost_segment_in_a_transfer_is_recovered_and_the_receiver_held_the_rest() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    p.a.setsockopt(cqd, "TCP_NODELAY", 1)
    iss = p.a.snapshot(cqd)["ordered_delivery"]["iss"]
    lost = SeqNumber(iss + 1 + 2 * 1460)
    dropped = []
    ooo_seen = []

    def drop_third_segment_once(who, h, d) -> bool:
        if who == "a" and d and h.seq_num == lost and not dropped:
            dropped.append(p.now)
            return False
        if who == "b":
            ooo_seen.append(p.b.snapshot(sqd)["ordered_delivery"]["ooo_bytes"])
        return True

    p.filter = drop_third_segment_once
    data = random.Random(3).randbytes(8 * 1460)
    p.a.push(cqd, data, p.now)
    assert p.read("b", sqd, len(data)) == data
    assert dropped
    assert max(ooo_seen) > 0  # later segments were held while the hole was open
    dup_acks = [h for _, h, d in p.sent("b", data=False) if h.ack_num == lost]
    assert len(dup_acks) >= 3


# -- delayed ACK ----------------------------------------------------------------------------
def test_a_single_small_segment_is_acked_after_the_delayed_ack_timeout() -> None:
    p = PeerPair()
    _, cqd, _sqd = p.connect()
    t0 = p.now
    p.a.push(cqd, b"ping", p.now)
    p.run_for(1)
    ((t_data, data_hdr, _),) = p.sent("a", since=t0, data=True)
    acks = [(t, h) for t, h, _ in p.sent("b", since=t0) if h.ack_num == data_hdr.seq_num + 4]
    assert len(acks) == 1
    assert acks[0][0] == pytest.approx(t_data + p.delay_s + 0.040)


def test_delayed_ack_timeout_is_configurable() -> None:
    p = PeerPair(config_b=TcpConfig(delayed_ack_s=0.1))
    _, cqd, _ = p.connect()
    t0 = p.now
    p.a.push(cqd, b"ping", p.now)
    p.run_for(1)
    ((t_data, _, _),) = p.sent("a", since=t0, data=True)
    ((t_ack, _, _),) = p.sent("b", since=t0)
    assert t_ack == pytest.approx(t_data + p.delay_s + 0.1)


def test_two_full_sized_segments_are_acked_immediately() -> None:
    p = PeerPair()
    _, cqd, _sqd = p.connect()
    t0 = p.now
    p.a.push(cqd, b"x" * 2920, p.now)
    p.run_for(1)
    segs = p.sent("a", since=t0, data=True)
    assert [len(d) for _, _, d in segs] == [1460, 1460]
    acks = p.sent("b", since=t0)
    assert len(acks) == 1
    t_ack, ack, _ = acks[0]
    assert ack.ack_num == segs[1][1].seq_num + 1460
    assert t_ack == pytest.approx(segs[1][0] + p.delay_s)  # no delay at all


def test_a_reply_carries_the_ack_and_no_separate_ack_is_sent() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    # warm up: b's first read opens its window from 64 KiB (the SYN's) to its buffer,
    # which is worth a window update of its own
    p.a.push(cqd, b"hi", p.now)
    p.read("b", sqd, 2)
    p.run_for(1)
    t0 = p.now
    p.a.push(cqd, b"request", p.now)
    p.read("b", sqd, 7)
    p.b.push(sqd, b"response", p.now)  # within the delayed-ACK time: piggybacks
    p.run_for(1)
    b_segs = p.sent("b", since=t0)
    assert len(b_segs) == 1 and b_segs[0][2] == b"response"
    assert b_segs[0][1].ack_num == p.sent("a", since=t0, data=True)[0][1].seq_num + 7


# -- the ACK field (RFC 9293 3.10.7.4 fifth step, RFC 5961 5.2) -----------------------------
def test_segment_acking_data_never_sent_is_answered_with_an_ack_and_dropped() -> None:
    r = Receiver()
    p = r.p
    snd_max = SeqNumber(r.rod()["snd_max"])
    n = len(p.sent("b"))
    p.inject("b", segment(r.a_port, 8080, r.base, snd_max + 1000, ACK | PSH), b"ignored")
    replies = [h for _, h, _ in p.sent("b")[n:]]
    assert [(h.flags, h.ack_num - r.base) for h in replies] == [(ACK, 0)]
    assert r.rcv_nxt_offset() == 0 and r.readable() == b""


def test_ack_far_older_than_the_send_window_draws_a_challenge_ack_and_is_dropped() -> None:
    r = Receiver()
    p = r.p
    snd_una = SeqNumber(r.rod()["snd_una"])
    max_wnd = p.b.snapshot(r.sqd)["flow_control"]["max_snd_wnd"]
    n = len(p.sent("b"))
    too_old = snd_una + -(max_wnd + 10_000)
    p.inject("b", segment(r.a_port, 8080, r.base, too_old, ACK | PSH), b"suspicious")
    replies = [h for _, h, _ in p.sent("b")[n:]]
    assert [(h.flags, h.ack_num - r.base) for h in replies] == [(ACK, 0)]
    assert p.b.counters["tcp_challenge_acks"] == 1
    assert r.rcv_nxt_offset() == 0  # its data was not taken


def test_slightly_old_ack_is_ignored_but_its_data_is_taken() -> None:
    r = Receiver()
    p = r.p
    p.b.push(r.sqd, b"from b", p.now)  # so SND.UNA moves once a acks it
    p.inject(
        "b",
        segment(r.a_port, 8080, r.base, SeqNumber(r.rod()["snd_nxt"]), ACK),
    )
    assert r.rod()["unacked_bytes"] == 0
    old = SeqNumber(r.rod()["snd_una"]) + -3  # behind SND.UNA, within MAX.SND.WND
    p.inject("b", segment(r.a_port, 8080, r.base, old, ACK | PSH), b"data")
    assert r.readable() == b"data"
