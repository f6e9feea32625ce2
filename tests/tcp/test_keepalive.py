"""Keep-alive (RFC 1122 4.2.3.6): off by default; when on, an idle connection is probed
after TCP_KEEPIDLE, every TCP_KEEPINTVL, and dropped with ETIMEDOUT after TCP_KEEPCNT
unanswered probes (Linux semantics)."""

from __future__ import annotations

import errno

import pytest
from pair import PeerPair

from xdpstackd.inetstack.layer4.tcp.header import ACK, RST
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

IDLE, INTVL, CNT = 10.0, 2.0, 3


def keepalive_pair() -> tuple[PeerPair, int, int]:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    p.a.setsockopt(cqd, "SO_KEEPALIVE", 1)
    p.a.setsockopt(cqd, "TCP_KEEPIDLE", IDLE)
    p.a.setsockopt(cqd, "TCP_KEEPINTVL", INTVL)
    p.a.setsockopt(cqd, "TCP_KEEPCNT", CNT)
    return p, cqd, sqd


def last_heard_by_a(p: PeerPair) -> float:
    return p.sent("b")[-1][0] + p.delay_s


def test_keepalive_is_off_by_default_no_probes_for_hours() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    assert p.a.getsockopt(cqd, "SO_KEEPALIVE") == 0
    n = len(p.trace)
    p.run_for(3 * 3600)
    assert len(p.trace) == n
    assert p.a.next_deadline() is None and p.b.next_deadline() is None
    assert p.state("a", cqd) == "ESTABLISHED" and p.state("b", sqd) == "ESTABLISHED"


def test_keepalive_probes_an_idle_connection_and_a_live_peer_answers() -> None:
    p, cqd, _ = keepalive_pair()
    heard = last_heard_by_a(p)
    t0 = p.now
    p.run_for(35)
    probes = p.sent("a", since=t0)
    assert len(probes) >= 3
    snd_una = SeqNumber(p.a.snapshot(cqd)["ordered_delivery"]["snd_una"])
    for _t, h, d in probes:
        assert h.flags == ACK and not d and h.seq_num == snd_una + -1
    # first probe after TCP_KEEPIDLE of silence; each answer restarts the idle clock
    assert probes[0][0] == pytest.approx(heard + IDLE)
    answers = p.sent("b", since=t0)
    assert len(answers) == len(probes)
    for (t_probe, _, _), (t_answer, ans, _) in zip(probes, answers):
        assert t_answer == pytest.approx(t_probe + p.delay_s)
        assert ans.ack_num == snd_una  # the peer says where it really is
    assert probes[1][0] == pytest.approx(answers[0][0] + p.delay_s + IDLE)
    assert p.state("a", cqd) == "ESTABLISHED"
    assert p.a.snapshot(cqd)["connection_management"]["keepalive_probes_sent"] == 0


def test_keepalive_drops_a_dead_peer_after_keepcnt_probes_with_etimedout() -> None:
    p, cqd, _ = keepalive_pair()
    heard = last_heard_by_a(p)
    t0 = p.now
    p.filter = lambda who, h, d: False  # the peer is gone
    qt = p.a.pop(cqd, None, p.now)
    c = p.wait("a", qt, timeout_s=100)
    assert c.errno == errno.ETIMEDOUT
    probes = [t for t, h, d in p.sent("a", since=t0) if not h.flags & RST]
    assert probes == pytest.approx([heard + IDLE + k * INTVL for k in range(CNT)])
    assert p.now == pytest.approx(heard + IDLE + CNT * INTVL)
    # like Linux, the connection is reset on the way out
    assert [h.flags & RST for _, h, _ in p.sent("a", since=p.now)] == [RST]
    assert p.a.connections() == []


def test_traffic_keeps_a_keepalive_connection_from_being_probed() -> None:
    p, cqd, sqd = keepalive_pair()
    t0 = p.now
    for i in range(12):  # a message every 5 s for a minute: never idle for 10 s
        p.b.push(sqd, b"tick %d" % i, p.now)
        p.read("a", cqd, 6 if i < 10 else 7)
        p.run_for(5)
    snd_una = SeqNumber(p.a.snapshot(cqd)["ordered_delivery"]["snd_una"])
    probes = [h for _, h, d in p.sent("a", since=t0) if h.seq_num == snd_una + -1]
    assert probes == []


def test_keepalive_options_read_back_and_reach_the_connection() -> None:
    p, cqd, _ = keepalive_pair()
    assert p.a.getsockopt(cqd, "SO_KEEPALIVE") == 1
    assert p.a.getsockopt(cqd, "TCP_KEEPIDLE") == IDLE
    assert p.a.getsockopt(cqd, "TCP_KEEPINTVL") == INTVL
    assert p.a.getsockopt(cqd, "TCP_KEEPCNT") == CNT
    assert p.a.snapshot(cqd)["connection_management"]["keepalive"] is True
    p.a.setsockopt(cqd, "SO_KEEPALIVE", 0)
    n = len(p.trace)
    p.run_for(100)
    assert len(p.trace) == n
