"""The seed's "State Modification Matrix", executable.

For each event class of the seed (setup, data transfer, ACK processing, teardown, RST)
the test drives two real stacks through the event, records which control-block fields
changed, and holds the record against the matrix copied below from
``shared/seed/000_13824b7f48192520.txt``. Where xdpstack departs from Demikernel on
purpose, ``DEPARTURES`` says so and why; any other drift fails.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pair import B_IP, PeerPair

from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer4.tcp.established.ctrlblk import ControlBlock
from xdpstackd.inetstack.layer4.tcp.established.established_socket import EstablishedSocket
from xdpstackd.inetstack.layer4.tcp.peer import TcpPeer

Y, N, S = "modified", "not modified", "sometimes"
EVENTS = ("setup", "data_transfer", "ack_processing", "teardown", "rst")

# fmt: off
MATRIX: dict[str, tuple[str, str, str, str, str]] = {
    #                                 setup data  ack  teardown rst
    "conn_mgmt.state":               (Y,    N,    S,   Y,       Y),
    "conn_mgmt.local":               (Y,    N,    N,   N,       N),
    "conn_mgmt.remote":              (Y,    N,    N,   N,       N),
    "delivery.send_unacked":         (Y,    N,    Y,   Y,       N),
    "delivery.send_next_seq_no":     (Y,    Y,    N,   Y,       N),
    "delivery.receive_next_seq_no":  (Y,    Y,    N,   Y,       N),
    "delivery.unacked_queue":        (N,    Y,    Y,   Y,       N),
    "delivery.unsent_queue":         (N,    Y,    N,   N,       N),
    "delivery.pop_queue":            (N,    Y,    N,   Y,       N),
    "delivery.recv_fin_seq_no":      (N,    N,    N,   Y,       Y),
    "flow_ctrl.send_window":         (Y,    N,    Y,   N,       N),
    "flow_ctrl.mss":                 (Y,    N,    N,   N,       N),
    "cong_ctrl.rto_calculator":      (N,    N,    Y,   N,       N),
    "cong_ctrl.cc_algorithm":        (Y,    Y,    Y,   N,       N),
}
# fmt: on

# (field, event) -> (what xdpstack does instead, why)
DEPARTURES: dict[tuple[str, str], tuple[str, str]] = {
    ("delivery.pop_queue", "teardown"): (
        N,
        "EOF is ROD's `eof` flag, not an empty buffer pushed onto the pop queue: a pop at "
        "EOF completes with b'' from the flag, so the queue never holds a fake segment",
    ),
    ("delivery.recv_fin_seq_no", "rst"): (
        N,
        "a RST is not disguised as a FIN: CM records the error (ECONNRESET) and pops fail "
        "with it, so RCV's FIN bookkeeping stays what the peer actually sent",
    ),
    ("cong_ctrl.cc_algorithm", "data_transfer"): (
        N,
        "the algorithm only moves on ACKs, losses and timeouts (RFC 9438 is ACK-clocked); "
        "sending or receiving data does not touch cwnd",
    ),
    ("cong_ctrl.rto_calculator", "setup"): (
        Y,
        "like Linux, the handshake's SYN/SYN-ACK round trip is the first RTT sample "
        "(RFC 6298 allows it when the SYN was not retransmitted), so the first data "
        "segment starts from a measured RTO rather than the 1 s initial one",
    ),
    ("cong_ctrl.rto_calculator", "teardown"): (
        Y,
        "the ACK of our FIN goes through the one ACK path: it is a Karn-valid RTT sample "
        "(the FIN was sent once), so the RTO calculator takes it, as Linux does",
    ),
    ("cong_ctrl.cc_algorithm", "teardown"): (
        Y,
        "the same ACK of our FIN is shown to the algorithm; CUBIC only refreshes its own "
        "smoothed RTT from it (an application-limited flight does not grow cwnd)",
    ),
}

Extract = Callable[[ControlBlock], object]

FIELDS: dict[str, Extract] = {
    "conn_mgmt.state": lambda cb: cb.cm.state,
    "conn_mgmt.local": lambda cb: cb.cm.local,
    "conn_mgmt.remote": lambda cb: cb.cm.remote,
    "delivery.send_unacked": lambda cb: cb.rod.snd_una.value,
    "delivery.send_next_seq_no": lambda cb: cb.rod.snd_nxt.value,
    "delivery.receive_next_seq_no": lambda cb: cb.rod.rcv_nxt.value,
    # the seed's two send queues are the two parts of ROD's send buffer
    # (a FIN in flight counts, as in Demikernel, where the FIN is a queued segment)
    "delivery.unacked_queue": lambda cb: cb.rod.bytes_in_flight,
    "delivery.unsent_queue": lambda cb: (
        len(cb.rod.send_buf) - min(cb.rod.bytes_in_flight, len(cb.rod.send_buf))
    ),
    "delivery.pop_queue": lambda cb: cb.rod.recv_queue_bytes,
    "delivery.recv_fin_seq_no": lambda cb: cb.rod.recv_fin_seq,
    "flow_ctrl.send_window": lambda cb: cb.fc.snd_wnd,
    "flow_ctrl.mss": lambda cb: cb.fc.mss,
    "cong_ctrl.rto_calculator": lambda cb: tuple(sorted(cb.cc.rto.snapshot().items())),
    "cong_ctrl.cc_algorithm": lambda cb: tuple(sorted(cb.cc.algorithm.snapshot().items())),
}


def record(cb: ControlBlock) -> dict[str, object]:
    return {name: extract(cb) for name, extract in FIELDS.items()}


def changed(before: dict[str, object], after: dict[str, object]) -> set[str]:
    return {name for name in FIELDS if before[name] != after[name]}


def control_block(peer: TcpPeer, qd: int) -> ControlBlock:
    conn = peer.sockets[qd].connection
    assert isinstance(conn, EstablishedSocket)
    return conn.cb


def observe_setup() -> set[str]:
    """A field is set up by the handshake when its initial value depends on what the
    handshake carried: build connections from two handshakes that differ in every input
    (addresses, ISNs, MSS, windows, round-trip time) and compare. The state is set up
    when the handshake moves it (SYN_SENT -> ESTABLISHED)."""
    records = []
    states = set()
    for port, mss, rcvbuf, delay_s in ((8080, 1460, 1 << 20, 0.002), (9090, 1000, 1 << 15, 0.02)):
        pair = PeerPair(TcpConfig(mss=mss), TcpConfig(recv_buffer_bytes=rcvbuf), delay_s=delay_s)
        lqd = pair.b.socket()
        pair.b.bind(lqd, (B_IP, port))
        pair.b.listen(lqd)
        cqd = pair.a.socket()
        qt = pair.a.connect(cqd, (B_IP, port), pair.now)
        states.add(pair.a.snapshot(cqd)["connection_management"]["state"])
        assert pair.wait("a", qt).errno == 0
        states.add(pair.a.snapshot(cqd)["connection_management"]["state"])
        records.append(record(control_block(pair.a, cqd)))
    observed = changed(records[0], records[1])
    if states == {"SYN_SENT", "ESTABLISHED"}:
        observed.add("conn_mgmt.state")
    return observed


def established_pair() -> tuple[PeerPair, int, int]:
    """A connection past its first exchange both ways, so windows and timers are settled."""
    pair = PeerPair(delay_s=0.010)
    _, cqd, sqd = pair.connect()
    pair.b.push(sqd, b"hello", pair.now)
    pair.a.push(cqd, b"hello", pair.now)
    pair.run_for(0.2)
    for peer, qd in ((pair.a, cqd), (pair.b, sqd)):
        assert peer.pop(qd, None, pair.now)
    pair.run_for(0.2)
    return pair, cqd, sqd


def watch(pair: PeerPair, cbs: list[ControlBlock], duration_s: float) -> set[str]:
    """Run the pair, recording every field any of ``cbs`` changes at any step."""
    seen: set[str] = set()
    last = [record(cb) for cb in cbs]
    end = pair.now + duration_s
    while pair.step(end):
        now = [record(cb) for cb in cbs]
        for before, after in zip(last, now, strict=True):
            seen |= changed(before, after)
        last = now
    return seen


def observe_data_transfer() -> set[str]:
    """Application data going out (sender) and arriving (receiver), with no new ACK."""
    pair, cqd, sqd = established_pair()
    sender, receiver = control_block(pair.a, cqd), control_block(pair.b, sqd)
    s0, r0 = record(sender), record(receiver)
    pair.a.push(cqd, b"x" * 3000, pair.now)  # two full segments and one short (Nagle holds it)
    pair.flush()
    s1 = record(sender)
    pair.run_for(0.011)  # delivered to the receiver; its ACK is still in flight
    r1 = record(receiver)
    assert record(sender) == s1, "no ACK may reach the sender inside this event"
    return changed(s0, s1) | changed(r0, r1)


def observe_ack_processing() -> set[str]:
    pair, cqd, _ = established_pair()
    sender = control_block(pair.a, cqd)
    pair.a.push(cqd, b"y" * 2920, pair.now)
    pair.run_for(0.011)  # data arrived; the receiver ACKs two full segments at once
    before = record(sender)
    pair.run_for(0.011)  # the ACK arrives
    return changed(before, record(sender))


def observe_teardown() -> set[str]:
    pair, cqd, sqd = established_pair()
    a, b = control_block(pair.a, cqd), control_block(pair.b, sqd)
    a0, b0 = record(a), record(b)
    pair.a.close(cqd, pair.now)
    seen = changed(a0, record(a)) | watch(pair, [a, b], 0.05)
    b1 = record(b)
    pair.b.close(sqd, pair.now)
    seen |= changed(b0, b1) | changed(b1, record(b)) | watch(pair, [a, b], 0.05)
    return seen


def observe_rst() -> set[str]:
    pair, cqd, sqd = established_pair()
    a = control_block(pair.a, cqd)
    before = record(a)
    pair.b.abort(sqd, pair.now)
    pair.run_for(0.05)
    return changed(before, record(a))


OBSERVERS = {
    "setup": observe_setup,
    "data_transfer": observe_data_transfer,
    "ack_processing": observe_ack_processing,
    "teardown": observe_teardown,
    "rst": observe_rst,
}


def expected(field: str, event: str) -> str:
    if (field, event) in DEPARTURES:
        return DEPARTURES[(field, event)][0]
    return MATRIX[field][EVENTS.index(event)]


@pytest.mark.parametrize("event", EVENTS)
def test_each_event_changes_exactly_the_fields_the_matrix_names(event: str) -> None:
    observed = OBSERVERS[event]()
    wrong = []
    for field in FIELDS:
        want = expected(field, event)
        got = field in observed
        if want == S:
            continue
        if got != (want == Y):
            wrong.append(f"{field}: matrix says {want}, stack {'changed' if got else 'kept'} it")
    assert not wrong, f"{event}: " + "; ".join(wrong)


def test_every_departure_names_a_real_matrix_cell_and_a_reason() -> None:
    for (field, event), (what, why) in DEPARTURES.items():
        assert field in MATRIX and event in EVENTS
        assert what in (Y, N) and len(why) > 40


def test_the_matrix_covers_every_recorded_field() -> None:
    assert set(MATRIX) == set(FIELDS)
    assert B_IP  # the pair's addresses are what the observers connect to
