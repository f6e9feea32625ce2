"""What an operator can see: ``snapshot(qd)`` / ``connections()`` carry every field
``xdpstackctl show`` prints (SPEC 6: state, SND.UNA/NXT/WND, RCV.NXT/WND, cwnd, ssthresh,
SRTT/RTTVAR/RTO, queue lengths, retransmit counts) for all four components, as plain
JSON-able data; and the stack-wide counters move with what happens on the wire."""

from __future__ import annotations

import errno
import json

import pytest
from pair import B_IP, PeerPair, segment

from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer4.tcp.header import SYN, build_tcp
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

REQUIRED = {
    "connection_management": {"state", "local", "remote", "id", "qd", "error", "keepalive"},
    "ordered_delivery": {
        "snd_una",
        "snd_nxt",
        "snd_max",
        "rcv_nxt",
        "unacked_bytes",
        "unsent_bytes",
        "recv_queue_bytes",
        "ooo_bytes",
        "ooo_segments",
        "retransmits",
        "pending_pops",
        "pending_pushes",
    },
    "flow_control": {"snd_wnd", "mss", "snd_wscale", "rcv_wscale", "rcv_buffer_bytes"},
    "congestion_control": {
        "algorithm",
        "cwnd",
        "ssthresh",
        "rto_srtt_s",
        "rto_rttvar_s",
        "rto_s",
        "fast_retransmits",
        "timeouts",
        "in_recovery",
    },
}


def test_snapshot_has_every_field_the_cli_shows_for_all_four_components() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    for peer, qd in ((p.a, cqd), (p.b, sqd)):
        snap = peer.snapshot(qd)
        assert set(snap) == set(REQUIRED)
        for component, fields in REQUIRED.items():
            missing = fields - set(snap[component])
            assert not missing, f"{component} lacks {sorted(missing)}"
        json.dumps(snap)  # plain data, for --json


def test_snapshot_shows_the_receive_window() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    p.a.push(cqd, b"x" * 3000, p.now)
    p.run_for(0.1)
    snap = p.b.snapshot(sqd)
    rod, fc = snap["ordered_delivery"], snap["flow_control"]
    assert fc["rcv_wnd"] == SeqNumber(fc["rcv_adv"]) - SeqNumber(rod["rcv_nxt"])


def test_snapshot_values_describe_the_connection() -> None:
    p = PeerPair(TcpConfig(mss=1000))
    _, cqd, sqd = p.connect()
    a_port = p.a.getsockname(cqd)[1]
    snap = p.a.snapshot(cqd)
    cm, rod, fc, cc = (snap[k] for k in REQUIRED)
    assert cm["state"] == "ESTABLISHED"
    assert cm["local"] == ("10.0.0.1", a_port) and cm["remote"] == (B_IP, 8080)
    assert cm["qd"] == cqd
    assert rod["snd_una"] == rod["snd_nxt"] == rod["snd_max"]
    assert fc["mss"] == 1000
    assert cc["algorithm"] == "cubic" and cc["cwnd"] == 10 * 1000
    assert cc["rto_srtt_s"] == pytest.approx(2 * p.delay_s)  # the handshake's RTT
    # in flight and queued bytes show up while they exist
    p.filter = lambda who, h, d: who != "b"  # no ACKs come back for now
    p.b.setsockopt(sqd, "TCP_NODELAY", 1)
    p.a.push(cqd, b"y" * 50_000, p.now)
    p.run_for(0.01)
    rod = p.a.snapshot(cqd)["ordered_delivery"]
    assert rod["unacked_bytes"] == 10_000  # one initial window
    assert rod["unsent_bytes"] == 40_000
    assert SeqNumber(rod["snd_nxt"]) - SeqNumber(rod["snd_una"]) == 10_000
    b_rod = p.b.snapshot(sqd)["ordered_delivery"]
    assert b_rod["recv_queue_bytes"] == 10_000


def test_connections_lists_every_connection_including_handshakes() -> None:
    p = PeerPair()
    _lqd, cqd, _sqd = p.connect()
    p.filter = lambda who, h, d: False
    q2 = p.a.socket()
    p.a.connect(q2, (B_IP, 9000), p.now)
    conns = p.a.connections()
    states = sorted(c["connection_management"]["state"] for c in conns)
    assert states == ["ESTABLISHED", "SYN_SENT"]
    ids = [c["connection_management"]["id"] for c in conns]
    assert len(set(ids)) == 2
    by_qd = {c["connection_management"]["qd"]: c for c in conns}
    assert set(by_qd) == {cqd, q2}
    json.dumps(conns)


def test_segment_counters_count_both_directions() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    p.a.push(cqd, b"z" * 10_000, p.now)
    p.read("b", sqd, 10_000)
    p.run_for(1)
    a_out = sum(1 for _, who, _, _ in p.trace if who == "a")
    b_out = sum(1 for _, who, _, _ in p.trace if who == "b")
    assert p.a.counters["tcp_segments_out"] == a_out
    assert p.b.counters["tcp_segments_out"] == b_out
    assert p.b.counters["tcp_segments_in"] == a_out
    assert p.a.counters["tcp_segments_in"] == b_out


def test_retransmission_counters_move() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    dropped: list = []

    def drop_first_data(who, h, d) -> bool:
        if who == "a" and d and not dropped:
            dropped.append(h)
            return False
        return True

    p.filter = drop_first_data
    p.a.push(cqd, b"again", p.now)
    p.read("b", sqd, 5)
    assert p.a.counters["tcp_retransmits"] == 1
    assert p.a.counters["tcp_rto_expirations"] == 1
    assert p.a.snapshot(cqd)["ordered_delivery"]["retransmits"] == 1
    assert p.a.snapshot(cqd)["congestion_control"]["timeouts"] == 1


def test_drop_counters_say_why() -> None:
    p = PeerPair()
    p.receive_raw("b", b"\x00" * 7)  # too short for a TCP header
    assert p.b.counters["tcp_drop_truncated"] == 1
    p.receive_raw("b", bytes(20))  # data offset 0
    assert p.b.counters["tcp_drop_bad_data_offset"] == 1
    good = build_tcp(segment(40000, 8080, 1, 0, SYN), b"", p.ip("a"), p.ip("b"))
    p.receive_raw("b", good[:16] + bytes([good[16] ^ 1]) + good[17:])
    assert p.b.counters["tcp_drop_bad_checksum"] == 1
    assert p.sent("b") == []  # none of them is answered


def test_a_timeout_is_counted_as_a_timeout_not_as_a_received_reset() -> None:
    p = PeerPair(TcpConfig(retries2=2))
    _, cqd, _ = p.connect()
    p.filter = lambda who, h, d: not (who == "a" and d)
    qt = p.a.pop(cqd, None, p.now)
    p.a.push(cqd, b"lost forever", p.now)
    assert p.wait("a", qt, timeout_s=60).errno == errno.ETIMEDOUT
    assert p.a.counters["tcp_timeouts"] == 1
    assert p.a.counters["tcp_resets_in"] == 0
