"""Flow control between two stacks: the peer's window bounds what is in flight, a
closed window is probed (persist timer, RFC 9293 3.8.6.1) until a window update
reopens it, and Nagle's algorithm (RFC 896, RFC 1122 4.2.3.4) vs TCP_NODELAY."""

from __future__ import annotations

import itertools
import random

import pytest
from pair import B_IP, PeerPair

from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer4.tcp.header import ACK, FIN
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

RCVBUF = 4096


def small_receiver(p: PeerPair, rcvbuf: int = RCVBUF) -> tuple[int, int]:
    lqd = p.b.socket()
    p.b.bind(lqd, (B_IP, 8080))
    p.b.setsockopt(lqd, "SO_RCVBUF", rcvbuf)
    p.b.listen(lqd, 4)
    aqt = p.b.accept(lqd)
    cqd = p.a.socket()
    p.wait("a", p.a.connect(cqd, (B_IP, 8080), p.now))
    return cqd, p.wait("b", aqt).new_qd


# -- Nagle ----------------------------------------------------------------------------------
def test_nagle_holds_a_second_small_segment_until_the_first_is_acked() -> None:
    p = PeerPair()
    _, cqd, _ = p.connect()
    t0 = p.now
    p.a.push(cqd, b"first", p.now)
    p.a.push(cqd, b"second", p.now)
    p.run_for(1)
    segs = p.sent("a", since=t0, data=True)
    assert [d for _, _, d in segs] == [b"first", b"second"]
    (t_ack, _, _), *_ = [s for s in p.sent("b", since=t0) if s[1].ack_num == segs[0][1].seq_num + 5]
    assert segs[0][0] == pytest.approx(t0)
    assert segs[1][0] == pytest.approx(t_ack + p.delay_s)  # right when the ACK arrived
    assert segs[1][0] - segs[0][0] >= 0.040  # b delayed that ACK


def test_tcp_nodelay_sends_small_segments_at_once() -> None:
    p = PeerPair()
    _, cqd, _ = p.connect()
    p.a.setsockopt(cqd, "TCP_NODELAY", 1)
    assert p.a.snapshot(cqd)["connection_management"]["nodelay"] is True
    t0 = p.now
    p.a.push(cqd, b"first", p.now)
    p.a.push(cqd, b"second", p.now)
    p.run_for(1)
    segs = p.sent("a", since=t0, data=True)
    assert [(t, d) for t, _, d in segs] == [(t0, b"first"), (t0, b"second")]


def test_nagle_never_holds_full_sized_segments() -> None:
    p = PeerPair()
    _, cqd, _ = p.connect()
    t0 = p.now
    p.a.push(cqd, b"s", p.now)  # a small segment goes out and stays unacked a while
    p.a.push(cqd, b"x" * (3 * 1460 + 100), p.now)
    p.run_for(0.0)
    segs = p.sent("a", since=t0, data=True)
    assert [len(d) for _, _, d in segs] == [1, 1460, 1460, 1460]  # the 100-byte tail waits


# -- zero window ----------------------------------------------------------------------------
def test_receiver_that_does_not_read_closes_the_window_and_gets_probed() -> None:
    p = PeerPair()
    cqd, sqd = small_receiver(p)
    data = random.Random(1).randbytes(20_000)
    p.a.push(cqd, data, p.now)
    p.run_for(0.5)
    a = p.a.snapshot(cqd)
    assert a["flow_control"]["snd_wnd"] == 0
    assert a["ordered_delivery"]["unacked_bytes"] == 0  # everything sent was acked
    assert p.b.snapshot(sqd)["ordered_delivery"]["recv_queue_bytes"] == RCVBUF
    t_closed = p.now
    probes_before = p.a.counters["tcp_probes_sent"]
    p.run_for(120)
    snd_una = SeqNumber(p.a.snapshot(cqd)["ordered_delivery"]["snd_una"])
    probes = [(t, h) for t, h, d in p.sent("a", since=t_closed) if not d]
    assert len(probes) >= 5
    assert all(h.seq_num == snd_una + -1 for _, h in probes)  # SEG.SEQ = SND.UNA - 1
    gaps = [b[0] - a_[0] for a_, b in itertools.pairwise(probes)]
    assert all(later >= earlier for earlier, later in itertools.pairwise(gaps))  # backoff
    assert gaps[1] == pytest.approx(2 * gaps[0])
    assert max(gaps) <= 60.0 + 1e-9  # capped at zero_window_probe_max_s
    # each probe is answered, with the window still closed
    answers = [h for t, h, d in p.sent("b", since=t_closed)]
    assert len(answers) == len(probes) and all(h.window == 0 for h in answers)
    assert p.a.counters["tcp_probes_sent"] - probes_before == len(probes)


def test_reading_reopens_the_window_with_an_update_and_the_transfer_resumes() -> None:
    p = PeerPair()
    cqd, sqd = small_receiver(p)
    data = random.Random(2).randbytes(20_000)
    p.a.push(cqd, data, p.now)
    p.run_for(5)
    assert p.a.snapshot(cqd)["flow_control"]["snd_wnd"] == 0
    t_read = p.now
    first = p.wait("b", p.b.pop(sqd, None, p.now))
    assert len(first.data) == RCVBUF
    update = p.sent("b", since=t_read)
    assert update and update[0][0] == t_read and update[0][1].window > 0  # sent by the read
    rest = p.read("b", sqd, len(data) - RCVBUF)
    assert first.data + rest == data
    # resumed at once, not at the next probe
    resumed = p.sent("a", since=t_read, data=True)
    assert resumed[0][0] == pytest.approx(t_read + p.delay_s)


def test_a_receiver_that_stays_closed_but_answers_probes_is_never_timed_out() -> None:
    p = PeerPair(TcpConfig(retries2=3))
    cqd, sqd = small_receiver(p)
    p.a.push(cqd, b"z" * 10_000, p.now)
    p.run_for(1800)  # half an hour of a zero window, probes answered all along
    assert p.state("a", cqd) == "ESTABLISHED"
    assert p.a.snapshot(cqd)["flow_control"]["probes_unanswered"] == 0
    assert p.read("b", sqd, 10_000) == b"z" * 10_000


def test_unanswered_zero_window_probes_eventually_time_out() -> None:
    p = PeerPair(TcpConfig(retries2=3))
    cqd, _sqd = small_receiver(p)
    p.a.push(cqd, b"z" * 10_000, p.now)
    p.run_for(1)
    qt = p.a.pop(cqd, None, p.now)
    p.filter = lambda who, h, d: who != "b"  # b vanishes
    c = p.wait("a", qt, timeout_s=600)
    assert c.errno == 110  # ETIMEDOUT
    assert p.a.connections() == []


def test_sender_never_exceeds_the_peers_window() -> None:
    p = PeerPair()
    cqd, sqd = small_receiver(p, rcvbuf=8192)
    data = random.Random(3).randbytes(60_000)
    iss = p.a.snapshot(cqd)["ordered_delivery"]["iss"]
    p.a.push(cqd, data, p.now)
    got = bytearray()
    pop = p.b.pop(sqd, 1000, p.now)  # a slow reader
    while len(got) < len(data):
        p.flush()
        if (c := p.take("b", pop)) is not None:
            got += c.data
            pop = p.b.pop(sqd, 1000, p.now)
            continue
        assert p.step(p.now + 30), "transfer stalled"
        a = p.a.snapshot(cqd)
        rod, fc = a["ordered_delivery"], a["flow_control"]
        # nothing sent beyond the right edge b offered (SND.UNA + SND.WND)
        assert SeqNumber(rod["snd_nxt"]) - SeqNumber(fc["snd_wl2"]) <= fc["snd_wnd"]
    assert bytes(got) == data
    p.run_for(1)
    assert SeqNumber(p.a.snapshot(cqd)["ordered_delivery"]["snd_una"]) - SeqNumber(iss + 1) == (
        len(data)
    )


def test_a_lost_window_update_is_recovered_by_the_next_probe() -> None:
    p = PeerPair()
    cqd, sqd = small_receiver(p)
    data = random.Random(4).randbytes(12_000)
    p.a.push(cqd, data, p.now)
    p.run_for(2)
    assert p.a.snapshot(cqd)["flow_control"]["snd_wnd"] == 0
    lost: list = []

    def drop_window_update(who, h, d) -> bool:
        if who == "b" and h.window > 0 and not lost:
            lost.append(p.now)
            return False
        return True

    p.filter = drop_window_update
    probe_due = p.a.snapshot(cqd)["flow_control"]["probe_deadline"]
    first = p.wait("b", p.b.pop(sqd, None, p.now))
    assert lost  # the update the read triggered never arrived
    rest = p.read("b", sqd, len(data) - len(first.data), timeout_s=600)
    assert first.data + rest == data
    resumed = [t for t, _, d in p.sent("a", since=lost[0], data=True)]
    assert resumed[0] == pytest.approx(probe_due + 2 * p.delay_s)  # the probe's answer


def test_sender_never_sends_beyond_the_right_edge_the_receiver_advertised() -> None:
    p = PeerPair()
    cqd, sqd = small_receiver(p, rcvbuf=8192)  # b never reads in this test
    p.a.setsockopt(cqd, "TCP_NODELAY", 1)
    lose = {"b_data": True, "b_acks": False}

    def network(who, h, d) -> bool:
        if who == "b" and d and lose["b_data"]:
            lose["b_data"] = False  # b's data is lost once: its ACKs' SEQ runs ahead
            return False
        return not (who == "b" and not d and lose["b_acks"])

    p.filter = network
    p.b.push(sqd, b"r" * 700, p.now)
    p.a.push(cqd, b"1" * 1000, p.now)
    p.run_for(0.1)  # a takes b's window from an ACK whose SEQ is past a's RCV.NXT
    lose["b_acks"] = True  # the ACKs shrinking b's window are lost ...
    p.a.push(cqd, b"2" * 7000, p.now)
    p.run_for(0.3)  # ... so the window arrives on b's retransmitted (older SEQ) data
    p.a.push(cqd, b"3" * 5000, p.now)
    p.run_for(0.5)
    # b never read, so its right edge (SEG.ACK + SEG.WND) never moved past this:
    edge = max(h.ack_num + h.window for _, h, _ in p.sent("b") if h.flags & ACK)
    beyond = [(h.seq_num + len(d)) - edge for _, h, d in p.sent("a", data=True)]
    assert max(beyond) <= 0, f"a sent {max(beyond)} bytes past b's window"


def test_fin_waits_for_a_closed_window_and_the_peers_data_is_still_acknowledged() -> None:
    p = PeerPair(TcpConfig(retries2=4), TcpConfig(retries2=4))
    cqd, sqd = small_receiver(p)
    p.a.push(cqd, b"u" * RCVBUF, p.now)  # fills b's buffer: b's window closes
    p.run_for(1)
    assert p.a.snapshot(cqd)["flow_control"]["snd_wnd"] == 0
    t = p.now
    p.a.shutdown(cqd, p.now)  # a is done sending; its FIN has no room yet
    p.b.push(sqd, b"response", p.now)  # b answers without reading first
    p.run_for(60)
    # no FIN beyond the zero window (Linux holds it back: tcp_snd_wnd_test)
    assert not [h for _, h, _ in p.sent("a", since=t) if h.flags & FIN]
    # b's data is acknowledged although b's own window stays closed
    b_rod = p.b.snapshot(sqd)["ordered_delivery"]
    assert b_rod["unacked_bytes"] == 0 and b_rod["retransmits"] == 0
    assert p.read("a", cqd, 8) == b"response"
    # nobody gave up: both are alive, and once b reads, the FIN follows the data
    assert p.state("a", cqd) == "FIN_WAIT_1" and p.state("b", sqd) == "ESTABLISHED"
    assert p.read_to_eof("b", sqd) == b"u" * RCVBUF
