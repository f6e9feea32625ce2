"""Every way a connection ends (RFC 9293 3.6 and 3.10.4/3.10.5): active, passive and
simultaneous close, half-close, abort, close with unread data, orphaned FIN_WAIT_2; and
that nothing is left behind afterwards (no leaked connection, the port is reusable)."""

from __future__ import annotations

import errno

import pytest
from pair import A_IP, B_IP, PeerPair

from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer4.tcp.header import ACK, FIN, RST

MSL = 1.0


def record_states(p: PeerPair, end: float) -> list[tuple[float, tuple[str, ...], tuple[str, ...]]]:
    """Run to ``end`` and return every change of both peers' connection states."""
    history = [(p.now, tuple(p.states("a")), tuple(p.states("b")))]
    while p.step(end):
        now = (p.now, tuple(p.states("a")), tuple(p.states("b")))
        if now[1:] != history[-1][1:]:
            history.append(now)
    p.now = max(p.now, end)
    return history


def sequence(history: list, side: int) -> list[str]:
    """The distinct states one side went through ("gone" once it holds no connection)."""
    out: list[str] = []
    for entry in history:
        states = entry[side]
        s = states[0] if states else "gone"
        if not out or out[-1] != s:
            out.append(s)
    return out


def first_time(history: list, side: int, state: str) -> float:
    for entry in history:
        states = entry[side]
        if (states[0] if states else "gone") == state:
            return entry[0]
    raise AssertionError(f"never reached {state}: {history}")


def test_active_close_goes_fin_wait_1_fin_wait_2_time_wait_closed_after_exactly_2msl() -> None:
    p = PeerPair(TcpConfig(msl_s=MSL), TcpConfig(msl_s=MSL))
    lqd, cqd, sqd = p.connect()
    p.a.shutdown(cqd, p.now)  # the active closer keeps its descriptor to look at it
    assert p.state("a", cqd) == "FIN_WAIT_1"
    p.run_for(0.01)
    assert p.state("a", cqd) == "FIN_WAIT_2"
    assert p.state("b", sqd) == "CLOSE_WAIT"
    assert p.wait("b", p.b.pop(sqd, None, p.now)).data == b""
    p.b.close(sqd, p.now)
    fin_b_sent = p.now
    p.run_to(fin_b_sent + p.delay_s)  # b's FIN arrives: TIME_WAIT
    t_time_wait = p.now
    assert p.state("a", cqd) == "TIME_WAIT"
    assert p.a.snapshot(cqd)["connection_management"]["time_wait_deadline"] == pytest.approx(
        t_time_wait + 2 * MSL
    )
    p.run_to(t_time_wait + 2 * MSL - 1e-6)
    assert p.state("a", cqd) == "TIME_WAIT"
    p.run_to(t_time_wait + 2 * MSL)
    assert p.state("a", cqd) == "CLOSED"
    assert p.a.connections() == []
    assert p.b.connections() == []  # b went LAST_ACK -> CLOSED on a's ACK long before
    # nothing was sent in TIME_WAIT: the last segment is a's ACK of b's FIN
    last_t, last_hdr, _ = p.sent("a")[-1]
    assert last_hdr.flags == ACK and last_t == pytest.approx(t_time_wait)
    p.a.close(cqd, p.now)
    p.b.close(lqd, p.now)


def test_active_close_of_the_descriptor_follows_the_same_states() -> None:
    p = PeerPair(TcpConfig(msl_s=MSL), TcpConfig(msl_s=MSL))
    _, cqd, sqd = p.connect()
    p.a.close(cqd, p.now)
    history = record_states(p, p.now + 0.5)
    assert p.state("b", sqd) == "CLOSE_WAIT"
    p.b.close(sqd, p.now)  # b saw the FIN and closes too
    history += record_states(p, p.now + 5)
    assert sequence(history, 1) == ["FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "gone"]
    assert sequence(history, 2) == ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "gone"]
    t_tw = first_time(history, 1, "TIME_WAIT")
    assert first_time(history, 1, "gone") == pytest.approx(t_tw + 2 * MSL)


def test_passive_close_goes_close_wait_last_ack_closed_on_the_final_ack() -> None:
    p = PeerPair(TcpConfig(msl_s=MSL), TcpConfig(msl_s=MSL))
    _, cqd, sqd = p.connect()
    p.a.shutdown(cqd, p.now)  # a keeps reading: an orphan would reset on our data
    p.run_for(0.01)
    assert p.state("b", sqd) == "CLOSE_WAIT"
    # CLOSE_WAIT: the peer has finished, we may still send
    p.b.push(sqd, b"parting gift", p.now)
    assert p.wait("b", p.b.pop(sqd, None, p.now)).data == b""
    assert p.read("a", cqd, 12) == b"parting gift"
    p.run_for(0.1)
    p.b.shutdown(sqd, p.now)
    assert p.state("b", sqd) == "LAST_ACK"
    t_fin = p.now
    p.run_to(t_fin + 2 * p.delay_s - 1e-6)
    assert p.state("b", sqd) == "LAST_ACK"
    p.run_to(t_fin + 2 * p.delay_s)  # a's ACK of our FIN arrives
    assert p.state("b", sqd) == "CLOSED"
    assert p.b.connections() == []
    assert p.states("a") == ["TIME_WAIT"]


def test_simultaneous_close_passes_through_closing_and_both_end_at_the_same_time() -> None:
    p = PeerPair(TcpConfig(msl_s=MSL), TcpConfig(msl_s=MSL))
    _, cqd, sqd = p.connect()
    p.a.close(cqd, p.now)
    p.b.close(sqd, p.now)
    history = record_states(p, p.now + 10)
    for side in (1, 2):
        assert sequence(history, side) == ["FIN_WAIT_1", "CLOSING", "TIME_WAIT", "gone"]
    assert first_time(history, 1, "gone") == first_time(history, 2, "gone")
    # each side sent exactly one FIN and one ACK of the other's FIN, and no RST
    for name in ("a", "b"):
        flags = [h.flags for _, h, _ in p.sent(name, since=history[0][0])]
        assert flags.count(FIN | ACK) == 1
        assert not any(f & RST for f in flags)
    assert p.a.connections() == [] and p.b.connections() == []


def test_half_close_lets_data_keep_flowing_the_other_way() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    p.a.push(cqd, b"request", p.now)
    p.a.shutdown(cqd, p.now)
    assert p.read_to_eof("b", sqd) == b"request"
    reply = bytes(range(256)) * 200
    p.b.push(sqd, reply, p.now)
    assert p.read("a", cqd, len(reply)) == reply
    assert p.state("a", cqd) == "FIN_WAIT_2"
    p.b.close(sqd, p.now)
    assert p.wait("a", p.a.pop(cqd, None, p.now)).data == b""
    assert p.state("a", cqd) == "TIME_WAIT"


def test_push_after_shutdown_fails_with_epipe() -> None:
    p = PeerPair()
    _, cqd, _ = p.connect()
    p.a.shutdown(cqd, p.now)
    c = p.wait("a", p.a.push(cqd, b"too late", p.now))
    assert c.errno == errno.EPIPE


def test_abort_sends_rst_and_the_peers_pending_pop_fails_with_econnreset() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    qt = p.b.pop(sqd, None, p.now)
    t = p.now
    p.a.abort(cqd, p.now)
    c = p.wait("b", qt)
    assert c.errno == errno.ECONNRESET
    rsts = p.sent("a", since=t, flags=RST | ACK)
    assert len(rsts) == 1
    b_rod = p.b.snapshot(sqd)["ordered_delivery"]
    assert rsts[0][1].seq_num.value == b_rod["rcv_nxt"]
    assert p.a.connections() == [] and p.b.connections() == []
    assert p.b.snapshot(sqd)["connection_management"]["error"] == errno.ECONNRESET
    # later operations on the reset connection report the reset, never hang
    c = p.wait("b", p.b.push(sqd, b"x", p.now))
    assert c.errno == errno.ECONNRESET


def test_close_with_unread_data_sends_rst_instead_of_fin() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    p.a.push(cqd, b"you will not read this", p.now)
    p.run_for(0.1)
    assert p.b.snapshot(sqd)["ordered_delivery"]["recv_queue_bytes"] == 22
    qt = p.a.pop(cqd, None, p.now)
    t = p.now
    p.b.close(sqd, p.now)
    assert p.b.counters["tcp_rst_close_with_unread"] == 1
    sent = p.sent("b", since=t)
    assert [h.flags & (RST | FIN) for _, h, _ in sent] == [RST]
    assert p.wait("a", qt).errno == errno.ECONNRESET
    assert p.a.connections() == [] and p.b.connections() == []


def test_orphaned_fin_wait_2_times_out() -> None:
    p = PeerPair(TcpConfig(fin_wait_2_timeout_s=5.0))
    _, cqd, sqd = p.connect()
    p.a.close(cqd, p.now)  # b never closes: a sits in FIN_WAIT_2 without a descriptor
    p.run_for(0.01)
    assert p.states("a") == ["FIN_WAIT_2"]
    t_fw2 = p.sent("b", flags=ACK)[-1][0] + p.delay_s
    p.run_to(t_fw2 + 5.0 - 1e-6)
    assert p.states("a") == ["FIN_WAIT_2"]
    p.run_to(t_fw2 + 5.0)
    assert p.a.connections() == []
    assert p.state("b", sqd) == "CLOSE_WAIT"


def test_half_closed_fin_wait_2_with_a_descriptor_does_not_time_out() -> None:
    p = PeerPair(TcpConfig(fin_wait_2_timeout_s=5.0))
    _, cqd, _ = p.connect()
    p.a.shutdown(cqd, p.now)  # the application may still read: no timeout (as Linux)
    p.run_for(60)
    assert p.state("a", cqd) == "FIN_WAIT_2"


def test_time_wait_reacknowledges_a_retransmitted_fin_and_restarts_2msl() -> None:
    p = PeerPair(TcpConfig(msl_s=MSL), TcpConfig(msl_s=MSL))
    _, cqd, sqd = p.connect()
    p.a.shutdown(cqd, p.now)
    p.run_for(0.01)
    p.b.close(sqd, p.now)
    p.run_for(0.01)
    assert p.state("a", cqd) == "TIME_WAIT"
    _, fin, _ = p.sent("b", flags=FIN | ACK)[-1]
    p.run_for(1.0)
    t = p.now
    p.inject("a", fin)  # a duplicate of b's FIN, as if our ACK had been lost
    acks = p.sent("a", since=t)
    assert len(acks) == 1 and acks[0][1].flags == ACK
    assert acks[0][1].ack_num == fin.seq_num + 1
    assert p.a.snapshot(cqd)["connection_management"]["time_wait_deadline"] == pytest.approx(
        t + 2 * MSL
    )


def test_no_connection_is_leaked_and_ports_are_reusable_after_everything_closed() -> None:
    p = PeerPair(TcpConfig(msl_s=MSL), TcpConfig(msl_s=MSL))
    for round_ in range(3):
        lqd = p.b.socket()
        p.b.bind(lqd, (B_IP, 8080))  # EADDRINUSE if the last round leaked the port
        p.b.listen(lqd, 4)
        aqt = p.b.accept(lqd)
        cqd = p.a.socket()
        p.a.bind(cqd, (A_IP, 40000))
        p.wait("a", p.a.connect(cqd, (B_IP, 8080), p.now))
        sqd = p.wait("b", aqt).new_qd
        p.a.push(cqd, b"round %d" % round_, p.now)
        assert p.read("b", sqd, 7) == b"round %d" % round_
        p.a.close(cqd, p.now)
        assert p.wait("b", p.b.pop(sqd, None, p.now)).data == b""
        p.b.close(sqd, p.now)
        p.b.close(lqd, p.now)
        p.run_for(2 * MSL + 1)
        assert p.a.connections() == [] and p.b.connections() == []
        assert p.a.next_deadline() is None and p.b.next_deadline() is None
        assert p.a.sockets == {} and p.b.sockets == {}


def test_port_of_a_connection_in_time_wait_stays_taken_until_it_expires() -> None:
    p = PeerPair(TcpConfig(msl_s=MSL), TcpConfig(msl_s=MSL))
    _, cqd, sqd = p.connect()
    port = p.a.getsockname(cqd)[1]
    p.a.close(cqd, p.now)
    p.run_for(0.01)
    p.b.close(sqd, p.now)
    p.run_for(0.01)
    assert p.states("a") == ["TIME_WAIT"]
    q = p.a.socket()
    with pytest.raises(OSError) as exc:
        p.a.bind(q, (A_IP, port))
    assert exc.value.errno == errno.EADDRINUSE
    p.run_for(2 * MSL)
    p.a.bind(q, (A_IP, port))


def test_data_arriving_for_an_orphaned_connection_is_answered_with_rst() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    p.a.close(cqd, p.now)  # nobody will ever read what b sends now
    p.run_for(0.01)
    assert p.states("a") == ["FIN_WAIT_2"]
    t = p.now
    p.b.push(sqd, b"anyone there?", p.now)
    p.run_for(0.01)
    assert [h.flags & RST for _, h, _ in p.sent("a", since=t)] == [RST]
    assert p.a.connections() == [] and p.b.connections() == []
    assert p.state("b", sqd) == "CLOSED"
    # b had already read a's FIN: reads keep returning end of stream (as on Linux)
    assert p.wait("b", p.b.pop(sqd, None, p.now)).data == b""


def test_lost_fin_is_retransmitted_and_the_close_completes() -> None:
    p = PeerPair(TcpConfig(msl_s=MSL), TcpConfig(msl_s=MSL))
    _, cqd, sqd = p.connect()
    lost: list = []

    def drop_first_fin(who, h, d) -> bool:
        if who == "a" and h.flags & FIN and not lost:
            lost.append(p.now)
            return False
        return True

    p.filter = drop_first_fin
    p.a.push(cqd, b"data then fin", p.now)
    p.a.close(cqd, p.now)
    assert p.read_to_eof("b", sqd) == b"data then fin"
    fins = [t for t, h, _ in p.sent("a") if h.flags & FIN]
    assert len(fins) == 2 and fins[0] == lost[0]
    # one RTO (the 200 ms floor) after the last ACK of new data restarted the timer
    last_ack = max(t for t, h, _ in p.sent("b") if t < fins[1])
    assert fins[1] == pytest.approx(last_ack + p.delay_s + 0.2)
    p.b.close(sqd, p.now)
    p.run_for(2 * MSL + 1)
    assert p.a.connections() == [] and p.b.connections() == []


def test_lost_last_ack_makes_last_ack_resend_its_fin_and_time_wait_answers() -> None:
    p = PeerPair(TcpConfig(msl_s=MSL), TcpConfig(msl_s=MSL))
    _, cqd, sqd = p.connect()
    p.a.close(cqd, p.now)
    assert p.wait("b", p.b.pop(sqd, None, p.now)).data == b""
    p.run_for(0.1)
    lost: list = []

    def drop_last_ack(who, h, d) -> bool:
        if who == "a" and h.flags == ACK and not lost:
            lost.append(p.now)
            return False
        return True

    p.filter = drop_last_ack
    p.b.close(sqd, p.now)
    p.run_for(0.1)
    assert p.states("b") == ["LAST_ACK"] and p.states("a") == ["TIME_WAIT"]
    p.run_for(1)
    b_fins = [t for t, h, _ in p.sent("b") if h.flags & FIN]
    assert len(b_fins) == 2
    assert p.b.connections() == []  # the re-ACK from TIME_WAIT closed it
    p.run_for(2 * MSL)
    assert p.a.connections() == []


def test_new_syn_from_the_same_4tuple_ends_time_wait_and_connects() -> None:
    p = PeerPair(TcpConfig(msl_s=30), TcpConfig(msl_s=30))
    lqd = p.b.socket()
    p.b.bind(lqd, (B_IP, 8080))
    p.b.listen(lqd, 4)
    aqt = p.b.accept(lqd)
    cqd = p.a.socket()
    p.a.bind(cqd, (A_IP, 40000))
    p.wait("a", p.a.connect(cqd, (B_IP, 8080), p.now))
    sqd = p.wait("b", aqt).new_qd
    p.b.close(sqd, p.now)  # the server closes first: the server holds TIME_WAIT
    assert p.wait("a", p.a.pop(cqd, None, p.now)).data == b""
    p.a.close(cqd, p.now)
    p.run_for(5)
    assert p.states("b") == ["TIME_WAIT"] and p.a.connections() == []
    again = p.a.socket()
    p.a.bind(again, (A_IP, 40000))
    aqt = p.b.accept(lqd)
    assert p.wait("a", p.a.connect(again, (B_IP, 8080), p.now)).errno == 0
    s2 = p.wait("b", aqt).new_qd
    assert p.b.counters["tcp_time_wait_recycled"] == 1
    p.a.push(again, b"second life", p.now)
    assert p.read("b", s2, 11) == b"second life"


def test_closing_a_listener_resets_connections_nobody_accepted() -> None:
    p = PeerPair()
    lqd = p.b.socket()
    p.b.bind(lqd, (B_IP, 8080))
    p.b.listen(lqd, 4)
    cqd = p.a.socket()
    assert p.wait("a", p.a.connect(cqd, (B_IP, 8080), p.now)).errno == 0
    p.run_for(0.01)
    qt = p.a.pop(cqd, None, p.now)
    t = p.now
    p.b.close(lqd, p.now)
    assert p.wait("a", qt).errno == errno.ECONNRESET
    assert [h.flags & RST for _, h, _ in p.sent("b", since=t)] == [RST]
    assert p.a.connections() == [] and p.b.connections() == []
    # and the port is free for a new listener
    l2 = p.b.socket()
    p.b.bind(l2, (B_IP, 8080))


def test_an_accepted_connection_keeps_its_port_in_use_after_its_listener_closes() -> None:
    """XDP steers exactly ``ports_in_use()``: if an accepted connection lost its port when
    the server closed its listener, the peer's ACKs would reach the kernel and be reset."""
    p = PeerPair()
    lqd, _cqd, sqd = p.connect(8080)
    p.b.close(lqd, p.now)
    assert 8080 in p.b.ports_in_use()
    version = p.b.ports_version
    p.b.push(sqd, b"x" * 100_000, p.now)
    p.b.close(sqd, p.now)  # orphaned: still flushing its data, then FIN_WAIT/TIME_WAIT
    assert 8080 in p.b.ports_in_use()
    p.run_for(p.b.config.msl_s * 2 + 5)
    assert 8080 not in p.b.ports_in_use()
    assert p.b.ports_version != version
