"""Resets: which RSTs end a connection (RFC 9293 3.10.7.4 with RFC 5961 3.2), challenge
ACKs for suspicious RSTs and SYNs (RFC 5961 4 and 7), and the RSTs a stack sends for
segments that have no connection (RFC 9293 3.10.7.1). A RST is never answered."""

from __future__ import annotations

import errno
import random

import pytest
from pair import PeerPair, segment

from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer4.tcp.established.established_socket import ChallengeAckLimiter
from xdpstackd.inetstack.layer4.tcp.header import ACK, FIN, PSH, RST, SYN, TcpOptions
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber


class Established:
    """A connection a -> b:8080, plus headers a hand-made segment 'from a' to b needs."""

    def __init__(self, config_b: TcpConfig | None = None) -> None:
        self.p = PeerPair(config_b=config_b)
        _, self.cqd, self.sqd = self.p.connect()
        self.a_port = self.p.a.getsockname(self.cqd)[1]

    def b_rod(self) -> dict:
        return self.p.b.snapshot(self.sqd)["ordered_delivery"]

    def rcv_nxt(self) -> SeqNumber:
        return SeqNumber(self.b_rod()["rcv_nxt"])

    def snd_nxt(self) -> SeqNumber:
        return SeqNumber(self.b_rod()["snd_nxt"])

    def rcv_wnd(self) -> int:
        fc = self.p.b.snapshot(self.sqd)["flow_control"]
        return SeqNumber(fc["rcv_adv"]) - self.rcv_nxt()

    def to_b(self, seq: SeqNumber, flags: int, payload: bytes = b"", ack=None) -> list:
        """Inject a segment into b; return what b sent in reply at once."""
        t = self.p.now
        n = len(self.p.sent("b"))
        ack = self.snd_nxt() if ack is None else ack
        self.p.inject("b", segment(self.a_port, 8080, seq, ack, flags), payload)
        return [(h, d) for tt, h, d in self.p.sent("b")[n:] if tt >= t]


# -- RSTs on an established connection ------------------------------------------------------
def test_rst_exactly_at_rcv_nxt_resets_the_connection() -> None:
    e = Established()
    qt = e.p.b.pop(e.sqd, None, e.p.now)
    replies = e.to_b(e.rcv_nxt(), RST)
    assert replies == []  # no answer to a RST
    c = e.p.wait("b", qt)
    assert c.errno == errno.ECONNRESET
    assert e.p.state("b", e.sqd) == "CLOSED"
    assert e.p.b.connections() == []


def test_rst_with_ack_exactly_at_rcv_nxt_resets_too() -> None:
    e = Established()
    qt = e.p.b.pop(e.sqd, None, e.p.now)
    e.to_b(e.rcv_nxt(), RST | ACK)
    assert e.p.wait("b", qt).errno == errno.ECONNRESET


@pytest.mark.parametrize("offset", [1, 1000, "last"])
def test_in_window_rst_not_at_rcv_nxt_draws_a_challenge_ack_and_does_not_reset(offset) -> None:
    e = Established()
    qt = e.p.b.pop(e.sqd, None, e.p.now)
    off = e.rcv_wnd() - 1 if offset == "last" else offset
    replies = e.to_b(e.rcv_nxt() + off, RST)
    assert len(replies) == 1
    hdr, data = replies[0]
    assert hdr.flags == ACK and not data
    assert hdr.seq_num == e.snd_nxt() and hdr.ack_num == e.rcv_nxt()
    assert e.p.b.counters["tcp_challenge_acks"] == 1
    e.p.run_for(1)
    assert e.p.take("b", qt) is None  # the pop still waits: no reset
    assert e.p.state("b", e.sqd) == "ESTABLISHED"
    e.p.a.push(e.cqd, b"still alive", e.p.now)
    assert e.p.wait("b", qt).data == b"still alive"


@pytest.mark.parametrize("where", ["below", "beyond"])
def test_out_of_window_rst_is_ignored_silently(where: str) -> None:
    e = Established()
    qt = e.p.b.pop(e.sqd, None, e.p.now)
    seq = e.rcv_nxt() + (-1000 if where == "below" else e.rcv_wnd() + 1000)
    assert e.to_b(seq, RST) == []
    e.p.run_for(1)
    assert e.p.take("b", qt) is None
    assert e.p.state("b", e.sqd) == "ESTABLISHED"
    assert e.p.b.counters["tcp_challenge_acks"] == 0


def test_syn_in_window_on_an_established_connection_draws_a_challenge_ack() -> None:
    e = Established()
    replies = e.to_b(e.rcv_nxt() + 10, SYN)
    assert [(h.flags, h.seq_num, h.ack_num) for h, _ in replies] == [
        (ACK, e.snd_nxt(), e.rcv_nxt())
    ]
    assert e.p.b.counters["tcp_challenge_acks"] == 1
    assert e.p.state("b", e.sqd) == "ESTABLISHED"


def test_old_syn_on_an_established_connection_draws_a_counted_challenge_ack() -> None:
    e = Established()
    irs = SeqNumber(e.b_rod()["irs"])  # a retransmission of the original SYN
    replies = e.to_b(irs, SYN, ack=SeqNumber(0))
    assert [(h.flags, h.seq_num, h.ack_num) for h, _ in replies] == [
        (ACK, e.snd_nxt(), e.rcv_nxt())
    ]
    assert e.p.b.counters["tcp_challenge_acks"] == 1
    assert e.p.state("b", e.sqd) == "ESTABLISHED"


def test_challenge_acks_are_limited_to_one_per_half_second_per_connection() -> None:
    e = Established()
    answered = sum(len(e.to_b(e.rcv_nxt() + 5 + i, RST)) for i in range(6))
    assert answered == 1
    assert e.p.b.counters["tcp_challenge_acks"] == 1
    assert e.p.b.counters["tcp_challenge_acks_suppressed"] == 5
    e.p.run_for(0.51)  # Linux's tcp_invalid_ratelimit: one answer per 500 ms
    assert len(e.to_b(e.rcv_nxt() + 5, RST)) == 1
    assert e.p.b.counters["tcp_challenge_acks"] == 2
    assert e.p.state("b", e.sqd) == "ESTABLISHED"


def test_a_challenge_ack_storm_on_one_connection_leaves_another_its_challenge_ack() -> None:
    """CVE-2016-5696: with one stack-wide budget, an attacker spends it on its own
    connection and learns from B's missing challenge ACKs whether its probes hit B's
    window. The per-connection limit comes first, so A's storm costs B nothing."""
    e = Established(TcpConfig(challenge_ack_per_s=4))
    _, cqd2, sqd2 = e.p.connect(port=8081)
    b_port2 = e.p.a.getsockname(cqd2)[1]
    for _ in range(20):  # A's storm, spread over 10 s: a challenge ACK every 0.5 s
        for i in range(50):
            e.to_b(e.rcv_nxt() + 5 + i, RST)
        e.p.run_for(0.5)
    rod2 = e.p.b.snapshot(sqd2)["ordered_delivery"]
    n = len(e.p.sent("b"))
    e.p.inject(
        "b",
        segment(b_port2, 8081, SeqNumber(rod2["rcv_nxt"]) + 5, SeqNumber(rod2["snd_nxt"]), RST),
    )
    answers = [h for _, h, _ in e.p.sent("b")[n:] if h.dst_port == b_port2]
    assert [h.flags for h in answers] == [ACK]
    assert e.p.state("b", sqd2) == "ESTABLISHED"


def test_the_stack_wide_challenge_ack_budget_is_drawn_at_random_each_second() -> None:
    """The backstop behind the per-connection limit: Linux's randomised
    tcp_challenge_ack_limit, between half and one and a half times the limit."""
    limiter = ChallengeAckLimiter(10, random.Random(7))
    allowances = []
    for second in range(20):
        allowances.append(sum(limiter.allow(second + i / 1000) for i in range(100)))
    assert all(5 <= n <= 14 for n in allowances), allowances
    assert len(set(allowances)) > 1, allowances  # not a fixed, countable budget


def test_rst_in_syn_sent_is_accepted_only_if_it_acks_our_syn() -> None:
    p = PeerPair()
    p.filter = lambda who, h, d: who != "a"
    cqd = p.a.socket()
    qt = p.a.connect(cqd, ("10.0.0.2", 8080), p.now)
    _, syn, _ = p.sent("a", flags=SYN)[0]
    port = syn.src_port
    p.inject("a", segment(8080, port, 0, syn.seq_num + 7, RST | ACK))  # wrong ACK: ignored
    p.inject("a", segment(8080, port, 0, 0, RST))  # no ACK: ignored
    assert p.take("a", qt) is None
    assert not [h for _, h, _ in p.sent("a") if h.flags & RST]  # no RST answers a RST
    p.inject("a", segment(8080, port, 0, syn.seq_num + 1, RST | ACK))
    assert p.wait("a", qt).errno == errno.ECONNREFUSED


# -- segments for no connection ------------------------------------------------------------
def closed_port_reply(flags: int, seq: int, ack: int, payload: bytes = b"") -> list:
    p = PeerPair()
    p.filter = lambda who, h, d: False
    p.inject("b", segment(40000, 9999, seq, ack, flags, 65535, None), payload)
    return [h for _, h, _ in p.sent("b")], p.b.counters


def test_syn_to_a_closed_port_gets_rst_ack_acknowledging_the_syn() -> None:
    sent, counters = closed_port_reply(SYN, 1000, 0)
    assert [(h.flags, h.seq_num, h.ack_num, h.dst_port) for h in sent] == [
        (RST | ACK, SeqNumber(0), SeqNumber(1001), 40000)
    ]
    assert counters["tcp_rst_closed_port"] == 1


def test_ack_segment_to_a_closed_port_gets_rst_with_seq_equal_to_its_ack() -> None:
    sent, _ = closed_port_reply(ACK | PSH, 1000, 77777, b"data")
    assert [(h.flags, h.seq_num) for h in sent] == [(RST, SeqNumber(77777))]


def test_segment_without_ack_to_a_closed_port_gets_rst_ack_covering_it() -> None:
    sent, _ = closed_port_reply(FIN, 1000, 0, b"12345")
    assert [(h.flags, h.seq_num, h.ack_num) for h in sent] == [
        (RST | ACK, SeqNumber(0), SeqNumber(1000 + 5 + 1))
    ]


@pytest.mark.parametrize("flags", [RST, RST | ACK])
def test_rst_to_a_closed_port_is_not_answered(flags: int) -> None:
    sent, counters = closed_port_reply(flags, 1000, 5000)
    assert sent == []
    assert counters["tcp_resets_out"] == 0


def test_ack_to_a_listening_port_without_a_handshake_gets_rst() -> None:
    p = PeerPair()
    p.filter = lambda who, h, d: False
    lqd = p.b.socket()
    p.b.bind(lqd, ("10.0.0.2", 8080))
    p.b.listen(lqd, 4)
    p.inject("b", segment(40000, 8080, 1000, 4242, ACK))
    p.inject("b", segment(40000, 8080, 1000, 4242, RST | ACK))
    assert [(h.flags, h.seq_num) for _, h, _ in p.sent("b")] == [(RST, SeqNumber(4242))]
    assert p.b.connections() == []


def test_rst_answering_the_synack_ends_the_half_open_connection() -> None:
    p = PeerPair()
    p.filter = lambda who, h, d: who != "b"
    lqd = p.b.socket()
    p.b.bind(lqd, ("10.0.0.2", 8080))
    p.b.listen(lqd, 4)
    p.inject("b", segment(40000, 8080, 1000, 0, SYN, 65535, TcpOptions(mss=1460)))
    assert p.states("b") == ["SYN_RECEIVED"]
    p.inject("b", segment(40000, 8080, 1001 + 500, 0, RST))  # not at RCV.NXT: ignored
    assert p.states("b") == ["SYN_RECEIVED"]
    p.inject("b", segment(40000, 8080, 1001, 0, RST))
    assert p.b.connections() == []
    assert not [h for _, h, _ in p.sent("b") if h.flags & RST]
