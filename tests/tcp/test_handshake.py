"""Connection establishment between two stacks: RFC 9293 3.5, option negotiation
(RFC 9293 3.7.1 MSS, RFC 7323 window scale), simultaneous open, refused and timed-out
connects, and the listener's two bounded queues (SYN backlog, accept queue)."""

from __future__ import annotations

import errno

import pytest
from pair import A_IP, B_IP, PeerPair, segment

from xdpstackd.inetstack.completion import OpCode
from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer4.tcp.header import ACK, RST, SYN, TcpOptions
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber


def listen(p: PeerPair, port: int = 8080, backlog: int = 16) -> int:
    lqd = p.b.socket()
    p.b.bind(lqd, (B_IP, port))
    p.b.listen(lqd, backlog)
    return lqd


def only(segments: list) -> tuple:
    assert len(segments) == 1, segments
    return segments[0]


# -- the three-way handshake ----------------------------------------------------------------
def test_three_way_handshake_is_syn_synack_ack_and_both_sides_reach_established() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    assert [(who, h.flags) for _, who, h, _ in p.trace] == [
        ("a", SYN),
        ("b", SYN | ACK),
        ("a", ACK),
    ]
    syn, synack, ack = (h for _, _, h, _ in p.trace)
    assert synack.ack_num == syn.seq_num + 1
    assert ack.seq_num == syn.seq_num + 1 and ack.ack_num == synack.seq_num + 1
    assert p.state("a", cqd) == "ESTABLISHED"
    assert p.state("b", sqd) == "ESTABLISHED"
    a_rod = p.a.snapshot(cqd)["ordered_delivery"]
    b_rod = p.b.snapshot(sqd)["ordered_delivery"]
    assert a_rod["snd_nxt"] == b_rod["rcv_nxt"] == (syn.seq_num + 1).value
    assert b_rod["snd_nxt"] == a_rod["rcv_nxt"] == (synack.seq_num + 1).value
    assert p.a.counters["tcp_active_opens"] == 1
    assert p.b.counters["tcp_passive_opens"] == 1


def test_accept_completes_with_the_clients_address_and_a_new_descriptor() -> None:
    p = PeerPair()
    lqd = listen(p)
    aqt = p.b.accept(lqd)
    cqd = p.a.socket()
    p.a.bind(cqd, (A_IP, 40001))
    p.wait("a", p.a.connect(cqd, (B_IP, 8080), p.now))
    c = p.wait("b", aqt)
    assert c.opcode is OpCode.ACCEPT and c.errno == 0
    assert c.addr == (A_IP, 40001)
    assert c.new_qd not in (None, lqd)
    assert p.b.getpeername(c.new_qd) == (A_IP, 40001)
    assert p.b.getsockname(c.new_qd) == (B_IP, 8080)


# -- MSS ------------------------------------------------------------------------------------
def test_syn_and_synack_carry_each_sides_mss_and_both_use_the_smaller() -> None:
    p = PeerPair(TcpConfig(mss=1000), TcpConfig(mss=1460))
    _, cqd, sqd = p.connect()
    syn, synack = p.trace[0][2], p.trace[1][2]
    assert syn.options is not None and syn.options.mss == 1000
    assert synack.options is not None and synack.options.mss == 1460
    assert p.a.snapshot(cqd)["flow_control"]["mss"] == 1000
    assert p.b.snapshot(sqd)["flow_control"]["mss"] == 1000
    # and data segments respect it in both directions
    p.a.setsockopt(cqd, "TCP_NODELAY", 1)
    p.b.setsockopt(sqd, "TCP_NODELAY", 1)
    p.a.push(cqd, b"x" * 5000, p.now)
    p.b.push(sqd, b"y" * 5000, p.now)
    assert p.read("b", sqd, 5000) == b"x" * 5000
    assert p.read("a", cqd, 5000) == b"y" * 5000
    sizes = [len(d) for _, _, h, d in p.trace if d]
    assert max(sizes) == 1000


def b_talks_to_a_hand_made_client(p: PeerPair) -> None:
    """b's segments go nowhere: peer a, which knows nothing of them, would send RSTs."""
    p.filter = lambda who, h, d: who != "b"


def test_server_assumes_mss_536_when_the_syn_has_no_mss_option() -> None:
    p = PeerPair()
    b_talks_to_a_hand_made_client(p)
    lqd = listen(p)
    aqt = p.b.accept(lqd)
    p.inject("b", segment(40000, 8080, 1000, 0, SYN, 65535, None))
    _, synack, _ = only(p.sent("b", flags=SYN | ACK))
    assert synack.ack_num == SeqNumber(1001)
    p.inject("b", segment(40000, 8080, 1001, synack.seq_num + 1, ACK, 65535))
    sqd = p.wait("b", aqt).new_qd
    assert p.b.snapshot(sqd)["flow_control"]["mss"] == 536


def test_client_assumes_mss_536_when_the_synack_has_no_mss_option() -> None:
    p = PeerPair()
    p.filter = lambda who, h, d: who != "a"  # b plays no part: we answer by hand
    cqd = p.a.socket()
    qt = p.a.connect(cqd, (B_IP, 8080), p.now)
    _, syn, _ = only(p.sent("a", flags=SYN))
    p.inject("a", segment(8080, syn.src_port, 5000, syn.seq_num + 1, SYN | ACK, 65535, None))
    assert p.wait("a", qt).errno == 0
    assert p.a.snapshot(cqd)["flow_control"]["mss"] == 536
    _, ack, _ = only(p.sent("a", flags=ACK))
    assert ack.ack_num == SeqNumber(5001)


# -- window scale ---------------------------------------------------------------------------
def test_window_scale_is_negotiated_both_ways_from_each_receive_buffer() -> None:
    p = PeerPair()
    lqd = listen(p)
    p.b.setsockopt(lqd, "SO_RCVBUF", 4 << 20)  # needs shift 7; accepted sockets inherit
    aqt = p.b.accept(lqd)
    cqd = p.a.socket()
    p.a.setsockopt(cqd, "SO_RCVBUF", 256 << 10)  # needs shift 3
    p.wait("a", p.a.connect(cqd, (B_IP, 8080), p.now))
    sqd = p.wait("b", aqt).new_qd
    syn, synack = p.trace[0][2], p.trace[1][2]
    assert syn.options.window_scale == 3
    assert synack.options.window_scale == 7
    a_fc = p.a.snapshot(cqd)["flow_control"]
    b_fc = p.b.snapshot(sqd)["flow_control"]
    assert (a_fc["snd_wscale"], a_fc["rcv_wscale"]) == (7, 3)
    assert (b_fc["snd_wscale"], b_fc["rcv_wscale"]) == (3, 7)
    # windows in SYNs are never scaled; later ones are, and each side reads them right
    assert syn.window == 65535 and synack.window == 65535
    ack = p.trace[2][2]
    assert ack.window == (256 << 10) >> 3
    assert a_fc["snd_wnd"] == 65535  # from the SYN-ACK: unscaled
    p.b.push(sqd, b"z", p.now)
    p.read("a", cqd, 1)
    p.run_for(0.1)
    # a's free buffer, to the granularity of its scale and of receiver SWS avoidance
    assert (256 << 10) - 1460 <= p.b.snapshot(sqd)["flow_control"]["snd_wnd"] <= 256 << 10
    assert p.a.snapshot(cqd)["flow_control"]["snd_wnd"] == 4 << 20


def _handshake_with_a_syn_without_window_scale() -> tuple[PeerPair, int, object]:
    p = PeerPair()
    b_talks_to_a_hand_made_client(p)
    lqd = listen(p)
    aqt = p.b.accept(lqd)
    p.inject("b", segment(40000, 8080, 1000, 0, SYN, 8192, TcpOptions(mss=1460)))
    _, synack, _ = only(p.sent("b", flags=SYN | ACK))
    p.inject("b", segment(40000, 8080, 1001, synack.seq_num + 1, ACK, 8192))
    sqd = p.wait("b", aqt).new_qd
    return p, sqd, synack


def test_no_window_scaling_either_way_when_the_syn_omits_the_option() -> None:
    p, sqd, _ = _handshake_with_a_syn_without_window_scale()
    fc = p.b.snapshot(sqd)["flow_control"]
    assert fc["snd_wscale"] == 0 and fc["rcv_wscale"] == 0
    assert fc["snd_wnd"] == 8192  # the peer's window read unscaled
    # our window fields are plain byte counts, capped at 65535
    p.b.push(sqd, b"hello", p.now)
    _, data_seg, _ = p.sent("b", data=True)[-1]
    assert data_seg.window == 65535


def test_synack_has_no_window_scale_option_when_the_syn_had_none() -> None:
    _, _, synack = _handshake_with_a_syn_without_window_scale()
    assert synack.options is not None and synack.options.mss is not None
    assert synack.options.window_scale is None


def test_no_window_scaling_when_the_synack_omits_the_option() -> None:
    p = PeerPair()
    p.filter = lambda who, h, d: who != "a"
    cqd = p.a.socket()
    qt = p.a.connect(cqd, (B_IP, 8080), p.now)
    _, syn, _ = only(p.sent("a", flags=SYN))
    assert syn.options.window_scale is not None  # we offered
    p.inject(
        "a",
        segment(8080, syn.src_port, 5000, syn.seq_num + 1, SYN | ACK, 30000, TcpOptions(mss=1460)),
    )
    assert p.wait("a", qt).errno == 0
    fc = p.a.snapshot(cqd)["flow_control"]
    assert fc["snd_wscale"] == 0 and fc["rcv_wscale"] == 0
    assert fc["snd_wnd"] == 30000
    _, ack, _ = only(p.sent("a", flags=ACK))
    assert ack.window == 65535  # 1 MiB buffer, but no scale: the field saturates


# -- simultaneous open ----------------------------------------------------------------------
def test_simultaneous_open_both_reach_established_and_data_flows() -> None:
    p = PeerPair()
    aqd = p.a.socket()
    p.a.bind(aqd, (A_IP, 5000))
    bqd = p.b.socket()
    p.b.bind(bqd, (B_IP, 6000))
    aqt = p.a.connect(aqd, (B_IP, 6000), p.now)
    bqt = p.b.connect(bqd, (A_IP, 5000), p.now)
    ca, cb = p.wait("a", aqt), p.wait("b", bqt)
    assert ca.errno == 0 and cb.errno == 0
    # the SYNs crossed; each side answered the other's SYN with a SYN-ACK
    assert len(p.sent("a", flags=SYN)) == 1 and len(p.sent("b", flags=SYN)) == 1
    assert len(p.sent("a", flags=SYN | ACK)) == 1 and len(p.sent("b", flags=SYN | ACK)) == 1
    assert p.state("a", aqd) == "ESTABLISHED" and p.state("b", bqd) == "ESTABLISHED"
    assert p.b.counters["tcp_rst_closed_port"] == 0 and p.a.counters["tcp_resets_out"] == 0
    p.a.push(aqd, b"from a", p.now)
    p.b.push(bqd, b"from b", p.now)
    assert p.read("b", bqd, 6) == b"from a"
    assert p.read("a", aqd, 6) == b"from b"
    assert p.a.getpeername(aqd) == (B_IP, 6000)
    assert p.b.getpeername(bqd) == (A_IP, 5000)


# -- failed connects ------------------------------------------------------------------------
def test_connect_to_a_closed_port_is_refused_by_rst_ack() -> None:
    p = PeerPair()
    cqd = p.a.socket()
    qt = p.a.connect(cqd, (B_IP, 9999), p.now)
    c = p.wait("a", qt)
    assert c.opcode is OpCode.CONNECT and c.errno == errno.ECONNREFUSED
    _, syn, _ = only(p.sent("a", flags=SYN))
    _, rst, _ = only(p.sent("b"))
    assert rst.flags == RST | ACK
    assert rst.seq_num == SeqNumber(0) and rst.ack_num == syn.seq_num + 1
    assert p.b.counters["tcp_rst_closed_port"] == 1
    assert p.a.connections() == []
    with pytest.raises(OSError):
        p.a.push(cqd, b"x", p.now)


def test_connect_times_out_after_syn_retries_with_exponential_backoff() -> None:
    p = PeerPair(TcpConfig(rto_initial_s=1.0, syn_retries=3))
    p.filter = lambda who, h, d: False  # the network eats everything
    cqd = p.a.socket()
    qt = p.a.connect(cqd, (B_IP, 8080), p.now)
    c = p.wait("a", qt, timeout_s=100)
    assert c.errno == errno.ETIMEDOUT
    syn_times = [t for t, _, _ in p.sent("a", flags=SYN)]
    assert syn_times == pytest.approx([0.0, 1.0, 3.0, 7.0])
    assert p.now == pytest.approx(15.0)  # the last RTO (8 s) expired unanswered
    assert p.a.counters["tcp_syn_retransmits"] == 3
    assert p.a.connections() == []


def test_connect_timeout_bounds_the_attempt_whatever_syn_retries_says() -> None:
    p = PeerPair(TcpConfig(rto_initial_s=1.0, syn_retries=10, connect_timeout_s=5.0))
    p.filter = lambda who, h, d: False
    cqd = p.a.socket()
    c = p.wait("a", p.a.connect(cqd, (B_IP, 8080), p.now), timeout_s=100)
    assert c.errno == errno.ETIMEDOUT
    assert p.now == pytest.approx(5.0)
    assert [t for t, _, _ in p.sent("a", flags=SYN)] == pytest.approx([0.0, 1.0, 3.0])


def test_synack_is_retransmitted_with_backoff_when_the_final_ack_is_lost() -> None:
    p = PeerPair(config_b=TcpConfig(rto_initial_s=1.0, synack_retries=2))
    b_talks_to_a_hand_made_client(p)
    lqd = listen(p)
    p.b.accept(lqd)
    # the client is a hand-made peer that never sends the final ACK
    p.inject("b", segment(40000, 8080, 1000, 0, SYN, 65535, TcpOptions(mss=1460)))
    p.run_for(20)
    times = [t for t, _, _ in p.sent("b", flags=SYN | ACK)]
    assert times == pytest.approx([0.0, 1.0, 3.0])
    assert p.b.counters["tcp_synack_timeouts"] == 1
    assert p.b.connections() == []  # the half-open connection was given up at t=7


# -- the listener's bounded queues ----------------------------------------------------------
def test_full_accept_queue_drops_syns_until_accept_makes_room() -> None:
    p = PeerPair(TcpConfig(rto_initial_s=1.0))
    lqd = listen(p, backlog=1)
    c1, c2 = p.a.socket(), p.a.socket()
    qt1 = p.a.connect(c1, (B_IP, 8080), p.now)
    assert p.wait("a", qt1).errno == 0  # now sits in the accept queue
    t_syn = p.now
    qt2 = p.a.connect(c2, (B_IP, 8080), p.now)
    p.run_for(0.5)
    assert p.take("a", qt2) is None
    assert p.b.counters["tcp_drop_listen_overflow"] == 1
    port2 = p.a.getsockname(c2)[1]
    assert not [h for _, h, _ in p.sent("b", flags=SYN | ACK) if h.dst_port == port2]
    t_accept = p.now
    a1 = p.wait("b", p.b.accept(lqd))
    assert a1.addr == p.a.getsockname(c1)
    # the client's SYN retransmission (at t=1 s) now gets in
    c = p.wait("a", qt2)
    assert c.errno == 0
    assert p.now > t_accept and p.now == pytest.approx(t_syn + 1.0 + 2 * p.delay_s)
    assert p.wait("b", p.b.accept(lqd)).addr == p.a.getsockname(c2)


def test_syn_backlog_bounds_half_open_connections() -> None:
    p = PeerPair(
        TcpConfig(rto_initial_s=1.0),
        TcpConfig(rto_initial_s=1.0, syn_backlog=2, syncookies=False),  # test_syn_cookies.py
    )
    lqd = listen(p)
    drop_synacks = True
    p.filter = lambda who, h, d: not (drop_synacks and h.flags == SYN | ACK)
    qds = [p.a.socket() for _ in range(3)]
    qts = [p.a.connect(q, (B_IP, 8080), p.now) for q in qds]
    p.run_for(0.5)
    assert sorted(p.states("b")) == ["SYN_RECEIVED", "SYN_RECEIVED"]
    assert p.b.counters["tcp_drop_syn_backlog_full"] == 1
    drop_synacks = False
    done = [p.wait("a", qt, timeout_s=30) for qt in qts]
    assert all(c.errno == 0 for c in done)
    accepted = [p.wait("b", p.b.accept(lqd)) for _ in qds]
    assert {c.addr for c in accepted} == {p.a.getsockname(q) for q in qds}


# -- a lost final ACK -----------------------------------------------------------------------
def lose_the_handshake_ack(p: PeerPair) -> None:
    lost: list = []

    def drop(who, h, d) -> bool:
        if who == "a" and h.flags == ACK and not d and not lost:
            lost.append(h)
            return False
        return True

    p.filter = drop


def test_lost_final_ack_is_repaired_when_the_client_answers_the_synack_retransmission() -> None:
    p = PeerPair(TcpConfig(rto_initial_s=1.0), TcpConfig(rto_initial_s=1.0))
    lose_the_handshake_ack(p)
    lqd = listen(p)
    aqt = p.b.accept(lqd)
    cqd = p.a.socket()
    assert p.wait("a", p.a.connect(cqd, (B_IP, 8080), p.now)).errno == 0
    c = p.wait("b", aqt)
    assert c.errno == 0
    synacks = [t for t, _, _ in p.sent("b", flags=SYN | ACK)]
    assert synacks == pytest.approx([0.001, 1.001])
    assert p.now == pytest.approx(1.001 + 2 * p.delay_s)  # the client's re-ACK arrived
    p.a.push(cqd, b"ok", p.now)
    assert p.read("b", c.new_qd, 2) == b"ok"


def test_lost_final_ack_is_repaired_by_the_clients_first_data_segment() -> None:
    p = PeerPair(TcpConfig(rto_initial_s=1.0), TcpConfig(rto_initial_s=1.0))
    lose_the_handshake_ack(p)
    lqd = listen(p)
    aqt = p.b.accept(lqd)
    cqd = p.a.socket()
    p.wait("a", p.a.connect(cqd, (B_IP, 8080), p.now))
    p.a.push(cqd, b"GET / HTTP/1.0\r\n\r\n", p.now)  # carries the ACK too
    c = p.wait("b", aqt)
    assert p.now < 0.1  # no need to wait for a SYN-ACK retransmission
    assert p.read("b", c.new_qd, 18) == b"GET / HTTP/1.0\r\n\r\n"
    assert len(p.sent("b", flags=SYN | ACK)) == 1
