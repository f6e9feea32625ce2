"""Loss recovery between two stacks: the retransmission timer (RFC 6298: backoff,
Karn's rule, giving up after retries2), fast retransmit and recovery on three duplicate
ACKs (RFC 5681 3.2, RFC 6582), and what congestion control does to cwnd (RFC 9438)."""

from __future__ import annotations

import errno
import random

import pytest
from pair import PeerPair

from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer4.tcp.established.congestion_control import (
    UNLIMITED_WINDOW_BYTES,
)
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

MSS = 1460


class Dropper:
    """A filter dropping a's data segments that start at ``seq``, the first ``times``."""

    def __init__(self, p: PeerPair, seq: SeqNumber, times: int) -> None:
        self.p, self.seq, self.times = p, seq, times
        self.dropped: list[float] = []

    def __call__(self, who: str, hdr, payload: bytes) -> bool:
        if who == "a" and payload and hdr.seq_num == self.seq and len(self.dropped) < self.times:
            self.dropped.append(self.p.now)
            return False
        return True


def connected(config_a: TcpConfig | None = None) -> tuple[PeerPair, int, int, SeqNumber]:
    """A pair, a's descriptor (TCP_NODELAY), b's, and a's first data sequence number."""
    p = PeerPair(config_a)
    _, cqd, sqd = p.connect()
    p.a.setsockopt(cqd, "TCP_NODELAY", 1)
    first = SeqNumber(p.a.snapshot(cqd)["ordered_delivery"]["snd_nxt"])
    return p, cqd, sqd, first


def cc(p: PeerPair, qd: int) -> dict:
    return p.a.snapshot(qd)["congestion_control"]


# -- the retransmission timer ---------------------------------------------------------------
def test_lost_segment_is_retransmitted_at_rto_then_with_exponential_backoff() -> None:
    p, cqd, sqd, first = connected()
    rto = cc(p, cqd)["rto_s"]
    assert rto == pytest.approx(0.2)  # tiny RTT: the 200 ms floor (rto_min_s)
    drop = Dropper(p, first, times=3)
    p.filter = drop
    t0 = p.now
    p.a.push(cqd, b"important", p.now)
    assert p.read("b", sqd, 9) == b"important"
    sends = [t for t, h, d in p.sent("a", since=t0, data=True)]
    assert [t - t0 for t in sends] == pytest.approx([0, rto, 3 * rto, 7 * rto])
    assert drop.dropped == sends[:3]
    assert p.a.snapshot(cqd)["ordered_delivery"]["retransmits"] == 3
    assert p.a.counters["tcp_rto_expirations"] == 3
    assert cc(p, cqd)["timeouts"] == 3


def test_rto_floor_is_configurable() -> None:
    p, cqd, sqd, first = connected(TcpConfig(rto_min_s=0.05))
    assert cc(p, cqd)["rto_s"] == pytest.approx(0.05)
    p.filter = Dropper(p, first, times=1)
    t0 = p.now
    p.a.push(cqd, b"x", p.now)
    p.read("b", sqd, 1)
    sends = [t for t, h, d in p.sent("a", since=t0, data=True)]
    assert [t - t0 for t in sends] == pytest.approx([0, 0.05])


def test_karn_no_rtt_sample_from_a_retransmitted_segment() -> None:
    p, cqd, sqd, first = connected()
    srtt0 = cc(p, cqd)["rto_srtt_s"]
    p.filter = Dropper(p, first, times=2)
    p.a.push(cqd, b"retransmitted", p.now)
    assert p.read("b", sqd, 13) == b"retransmitted"
    p.run_for(1)  # its ACK is in: the only sample it could give is ambiguous
    assert p.a.snapshot(cqd)["ordered_delivery"]["snd_una"] == (first + 13).value
    assert cc(p, cqd)["rto_srtt_s"] == srtt0
    # a fresh segment, sent once, gives a valid sample again
    p.a.push(cqd, b"fresh", p.now)
    p.read("b", sqd, 5)
    p.run_for(1)
    assert cc(p, cqd)["rto_srtt_s"] != srtt0


def test_retransmission_gives_up_after_retries2_with_etimedout() -> None:
    p, cqd, _sqd, first = connected(TcpConfig(retries2=3))
    p.a.setsockopt(cqd, "SO_SNDBUF", 4096)
    p.filter = lambda who, h, d: not (who == "a" and d)  # a's data never arrives
    pop = p.a.pop(cqd, None, p.now)
    t0 = p.now
    p.a.push(cqd, b"d" * 4096, p.now)
    push = p.a.push(cqd, b"blocked", p.now)  # waits for room that never comes
    c_pop = p.wait("a", pop, timeout_s=60)
    c_push = p.wait("a", push, timeout_s=60)
    assert c_pop.errno == errno.ETIMEDOUT and c_push.errno == errno.ETIMEDOUT
    heads = [t - t0 for t, h, d in p.sent("a", since=t0, data=True) if h.seq_num == first]
    assert heads == pytest.approx([0, 0.2, 0.6, 1.4])  # the original and retries2 resends
    assert p.now - t0 == pytest.approx(3.0)  # the last backed-off RTO (1.6 s) expired
    assert p.a.connections() == []
    assert p.a.snapshot(cqd)["connection_management"]["error"] == errno.ETIMEDOUT
    assert p.wait("a", p.a.push(cqd, b"x", p.now)).errno == errno.ETIMEDOUT


def test_rto_resends_everything_unacked_go_back_n() -> None:
    p, cqd, sqd, first = connected()
    # a whole flight is lost: the timer, not duplicate ACKs, must recover it
    lost = {first + k * MSS for k in range(4)}
    dropped: list = []

    def drop_flight_once(who, h, d) -> bool:
        if who == "a" and d and h.seq_num in lost and h.seq_num not in dropped:
            dropped.append(h.seq_num)
            return False
        return True

    p.filter = drop_flight_once
    data = random.Random(1).randbytes(4 * MSS)
    t0 = p.now
    p.a.push(cqd, data, p.now)
    assert p.read("b", sqd, len(data)) == data
    assert cc(p, cqd)["timeouts"] == 1 and cc(p, cqd)["fast_retransmits"] == 0
    resent = [(t, h.seq_num) for t, h, d in p.sent("a", since=t0 + 0.1, data=True)]
    assert sorted(s for _, s in resent) == sorted(lost)
    assert resent[0][0] == pytest.approx(t0 + 0.2)
    assert cc(p, cqd)["cwnd"] >= MSS  # RTO: restart from the loss window and grow


# -- fast retransmit ------------------------------------------------------------------------
def test_fast_retransmit_after_three_dup_acks_before_any_rto() -> None:
    p, cqd, sqd, first = connected()
    lost = first + 10 * MSS
    drop = Dropper(p, lost, times=1)
    cwnd_seen: list[int] = []

    def observe(who, h, d) -> bool:
        if who == "a" and d and h.seq_num == lost and drop.dropped:
            retransmit_cc.append(cc(p, cqd))
        elif who == "a":
            cwnd_seen.append(cc(p, cqd)["cwnd"])
        return drop(who, h, d)

    retransmit_cc: list[dict] = []
    p.filter = observe
    data = random.Random(2).randbytes(200 * MSS)
    p.a.push(cqd, data, p.now)
    assert p.read("b", sqd, len(data)) == data
    p.run_for(1)
    (t_lost,) = drop.dropped
    t_retx = [t for t, h, d in p.sent("a", data=True) if h.seq_num == lost][1]
    dup_acks = [t for t, h, d in p.sent("b", since=t_lost) if h.ack_num == lost]
    assert len(dup_acks) >= 3
    # resent when the third duplicate ACK arrived, long before the timer would fire
    assert t_retx == pytest.approx(dup_acks[2] + p.delay_s)
    assert t_retx - t_lost < 0.2
    snap = cc(p, cqd)
    assert snap["fast_retransmits"] == 1 and snap["timeouts"] == 0
    assert p.a.counters["tcp_fast_retransmits"] == 1
    # CUBIC's multiplicative decrease: ssthresh = 0.7 * the cwnd a was sending with
    at_retx = retransmit_cc[0]
    assert at_retx["in_recovery"] is True
    cwnd_before = at_retx["cc_cwnd_prior"]
    assert cwnd_before in cwnd_seen  # a really had that window before the loss
    assert at_retx["ssthresh"] == pytest.approx(0.7 * cwnd_before, abs=1)
    # NewReno: cwnd = ssthresh + 3 MSS for the three segments that left the network
    assert at_retx["cwnd"] == at_retx["ssthresh"] + 3 * MSS


def test_cwnd_grows_during_a_transfer_and_shrinks_on_loss() -> None:
    p, cqd, sqd, _first = connected()
    initial = cc(p, cqd)["cwnd"]
    assert initial == 10 * MSS  # RFC 6928 IW10
    data = random.Random(3).randbytes(300 * MSS)
    p.a.push(cqd, data, p.now)
    p.read("b", sqd, len(data))
    p.run_for(1)
    grown = cc(p, cqd)["cwnd"]
    assert grown > initial
    # now lose one segment of the next transfer
    nxt = SeqNumber(p.a.snapshot(cqd)["ordered_delivery"]["snd_nxt"])
    drop = Dropper(p, nxt + 20 * MSS, times=1)
    before_loss: list[int] = []
    at_retx: list[dict] = []

    def observe(who, h, d) -> bool:
        if who == "a" and d:
            if h.seq_num == drop.seq and drop.dropped:
                at_retx.append(cc(p, cqd))
            elif not drop.dropped:
                before_loss.append(cc(p, cqd)["cwnd"])
        return drop(who, h, d)

    p.filter = observe
    p.a.push(cqd, data, p.now)
    p.read("b", sqd, len(data))
    p.run_for(1)
    assert cc(p, cqd)["fast_retransmits"] == 1
    assert at_retx[0]["ssthresh"] < before_loss[-1]
    assert at_retx[0]["ssthresh"] < UNLIMITED_WINDOW_BYTES
    assert cc(p, cqd)["in_recovery"] is False  # recovery ended with the full ACK


def test_congestion_control_none_keeps_cwnd_fixed_even_through_loss() -> None:
    p, cqd, sqd, first = connected(TcpConfig(congestion_control="none"))
    assert cc(p, cqd)["algorithm"] == "none"
    assert cc(p, cqd)["cwnd"] == UNLIMITED_WINDOW_BYTES
    p.filter = Dropper(p, first + 5 * MSS, times=1)
    data = random.Random(4).randbytes(100 * MSS)
    p.a.push(cqd, data, p.now)
    assert p.read("b", sqd, len(data)) == data
    p.run_for(1)
    snap = cc(p, cqd)
    assert snap["fast_retransmits"] == 1
    assert snap["cwnd"] == UNLIMITED_WINDOW_BYTES
    assert snap["ssthresh"] == UNLIMITED_WINDOW_BYTES


def test_rto_collapses_cwnd_to_one_segment() -> None:
    p, cqd, sqd, first = connected()
    p.filter = Dropper(p, first, times=1)
    cwnd_at_retx: list[int] = []
    inner = p.filter

    def observe(who, h, d) -> bool:
        if who == "a" and d and h.seq_num == first and inner.dropped:
            cwnd_at_retx.append(cc(p, cqd)["cwnd"])
        return inner(who, h, d)

    p.filter = observe
    p.a.push(cqd, b"lonely", p.now)  # one segment: no dup ACKs, only the timer
    p.read("b", sqd, 6)
    assert cwnd_at_retx == [MSS]


def test_rto_follows_the_measured_rtt_above_the_floor() -> None:
    p = PeerPair(delay_s=0.15)  # RTT 300 ms
    _, cqd, sqd = p.connect()
    p.a.setsockopt(cqd, "TCP_NODELAY", 1)
    snap = cc(p, cqd)
    assert snap["rto_srtt_s"] == pytest.approx(0.3)  # the handshake's sample
    assert snap["rto_rttvar_s"] == pytest.approx(0.15)
    rto = snap["rto_s"]
    assert rto == pytest.approx(0.3 + 4 * 0.15)  # RFC 6298 2.2
    first = SeqNumber(p.a.snapshot(cqd)["ordered_delivery"]["snd_nxt"])
    p.filter = Dropper(p, first, times=1)
    t0 = p.now
    p.a.push(cqd, b"slow link", p.now)
    p.read("b", sqd, 9)
    sends = [t - t0 for t, _, d in p.sent("a", since=t0, data=True)]
    assert sends == pytest.approx([0, rto])
