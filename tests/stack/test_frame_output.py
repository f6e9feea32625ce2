"""The established connections' frame path: one frame built at once, the next hop's MAC
kept per connection, and what makes a kept MAC go (ARP changes, the shared-mode re-check).

The reference is the layered path (``build_tcp`` -> ``build_ipv4`` -> ``build_ethernet``):
the one-shot frame must be the same bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stack_helpers import OUR_IP, OUR_IP_STR, OUR_MAC, PEER_IP, PEER_IP_STR, PEER_MAC, make_stack

from xdpstackd.inetstack.completion import OpCode
from xdpstackd.inetstack.config import StackConfig
from xdpstackd.inetstack.layer2.arp import (
    ARP_REPLY,
    ARP_REQUEST,
    NEIGHBOUR_RECHECK_S,
    ArpPacket,
    build_arp,
    parse_arp,
)
from xdpstackd.inetstack.layer2.ethernet import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    build_ethernet,
    parse_ethernet,
)
from xdpstackd.inetstack.layer3.checksum import as_buffer, fold_sum, ones_complement_sum, raw_sum
from xdpstackd.inetstack.layer3.ipv4 import IPPROTO_TCP, build_ipv4, parse_ipv4
from xdpstackd.inetstack.layer4.tcp.header import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    TcpHeader,
    build_tcp,
    build_tcp_segment,
)
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber
from xdpstackd.inetstack.stack import InetStack

OTHER_MAC = bytes.fromhex("020000000003")
LOCAL = (OUR_IP, 40000)
REMOTE = (PEER_IP, 80)


def layered_frame(
    dst_mac: bytes,
    ident: int,
    flags: int,
    seq: int,
    ack: int,
    window: int,
    payload: bytes,
    ttl: int = 64,
) -> bytes:
    hdr = TcpHeader(LOCAL[1], REMOTE[1], SeqNumber(seq), SeqNumber(ack), flags, window)
    segment = build_tcp(hdr, payload, OUR_IP, PEER_IP)
    packet = build_ipv4(OUR_IP, PEER_IP, IPPROTO_TCP, segment, ttl=ttl, identification=ident)
    return build_ethernet(dst_mac, OUR_MAC, ETHERTYPE_IPV4, packet)


def arp_frame(op: int, sender_mac: bytes, target_ip: int = OUR_IP) -> bytes:
    packet = ArpPacket(op, sender_mac, PEER_IP, OUR_MAC if op == ARP_REPLY else bytes(6), target_ip)
    dst = OUR_MAC if op == ARP_REPLY else BROADCAST_MAC
    return build_ethernet(dst, sender_mac, ETHERTYPE_ARP, build_arp(packet))


def resolved_stack(config: StackConfig | None = None) -> InetStack:
    """Owned mode, with the peer's MAC learnt from an ARP reply at t=0."""
    stack = make_stack(config=config)
    stack.receive_frame(arp_frame(ARP_REPLY, PEER_MAC), 0.0)
    assert stack.poll_transmit() == []
    return stack


def ident_of(frame: bytes) -> int:
    return parse_ipv4(parse_ethernet(frame)[1])[0].identification


def dst_mac_of(frame: bytes) -> bytes:
    return parse_ethernet(frame)[0].dst


class Lookup:
    def __init__(self, table: dict[int, bytes]) -> None:
        self.table = table
        self.asked = 0

    def __call__(self, ip: int) -> bytes | None:
        self.asked += 1
        return self.table.get(ip)


# ------------------------------------------------------------------ the bytes themselves
@settings(max_examples=200, deadline=None)
@given(
    flags=st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN, RST | ACK, RST, SYN]),
    seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1),
    window=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=1460),
    offset=st.integers(0, 7),
)
def test_one_shot_frame_is_the_layered_frame_byte_for_byte(
    flags: int, seq: int, ack: int, window: int, payload: bytes, offset: int
) -> None:
    stack = resolved_stack()
    flow = stack.tcp.output.flow(LOCAL, REMOTE)
    # the payload as the sender hands it over: a view into a larger send buffer
    buffer = bytearray(b"x" * offset + payload + b"y" * 3)
    flow.send(flags, seq, ack, window, memoryview(buffer)[offset : offset + len(payload)])
    (frame,) = stack.poll_transmit()
    expected = layered_frame(PEER_MAC, ident_of(frame), flags, seq, ack, window, payload)
    assert bytes(frame) == expected


@settings(max_examples=200, deadline=None)
@given(
    flags=st.integers(0, 0xFF),
    seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1),
    window=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=600),
    src_ip=st.integers(0, 2**32 - 1),
    dst_ip=st.integers(0, 2**32 - 1),
)
def test_build_tcp_segment_is_build_tcp_without_options(
    flags: int, seq: int, ack: int, window: int, payload: bytes, src_ip: int, dst_ip: int
) -> None:
    hdr = TcpHeader(1234, 80, SeqNumber(seq), SeqNumber(ack), flags, window)
    expected = build_tcp(hdr, payload, src_ip, dst_ip)
    got = build_tcp_segment(1234, 80, seq, ack, flags, window, memoryview(payload), src_ip, dst_ip)
    assert got == expected


def test_identification_counts_on_across_both_paths_and_wraps() -> None:
    stack = resolved_stack()
    flow = stack.tcp.output.flow(LOCAL, REMOTE)
    stack._ip_id = 0xFFFE  # close to the wrap, so the test sees it
    flow.send(ACK, 1, 1, 100, b"")
    stack.send_echo_request(PEER_IP_STR, 1, 1, b"ping", 0.0)  # the layered path
    flow.send(ACK, 1, 1, 100, b"data")
    assert [ident_of(f) for f in stack.poll_transmit()] == [0xFFFE, 0xFFFF, 0]


def test_ttl_comes_from_the_config() -> None:
    stack = resolved_stack(StackConfig(ttl=17))
    stack.tcp.output.flow(LOCAL, REMOTE).send(ACK, 5, 6, 7, b"abc")
    (frame,) = stack.poll_transmit()
    assert bytes(frame) == layered_frame(PEER_MAC, ident_of(frame), ACK, 5, 6, 7, b"abc", ttl=17)


# ------------------------------------------------------------------ the kept next-hop MAC
def test_owned_mode_follows_a_changed_mac_at_once() -> None:
    stack = resolved_stack()
    flow = stack.tcp.output.flow(LOCAL, REMOTE)
    flow.send(ACK, 1, 1, 100, b"before")
    # a gratuitous ARP moves the entry even within the lock time
    gratuitous = ArpPacket(ARP_REQUEST, OTHER_MAC, PEER_IP, bytes(6), PEER_IP)
    stack.receive_frame(
        build_ethernet(BROADCAST_MAC, OTHER_MAC, ETHERTYPE_ARP, build_arp(gratuitous)), 0.1
    )
    flow.send(ACK, 1, 1, 100, b"after")
    assert [dst_mac_of(f) for f in stack.poll_transmit()] == [PEER_MAC, OTHER_MAC]


def test_owned_mode_refreshes_an_entry_in_use_once_and_keeps_sending() -> None:
    config = StackConfig(arp_cache_ttl_s=10.0, arp_request_timeout_s=1.0, arp_retries=2)
    stack = resolved_stack(config)
    flow = stack.tcp.output.flow(LOCAL, REMOTE)
    refresh_at = config.arp_cache_ttl_s - stack.arp.refresh_window_s
    stack.handle_timers(refresh_at - 0.001)
    flow.send(ACK, 1, 1, 100, b"still fresh")
    stack.handle_timers(refresh_at)
    for _ in range(5):
        flow.send(ACK, 1, 1, 100, b"refresh due")
    frames = stack.poll_transmit()
    kinds = [parse_ethernet(f)[0].ethertype for f in frames]
    assert kinds == [ETHERTYPE_IPV4, ETHERTYPE_ARP] + [ETHERTYPE_IPV4] * 5
    dst, request = parse_ethernet(frames[1])[0].dst, parse_arp(parse_ethernet(frames[1])[1])
    assert (dst, request.op, request.target_ip) == (PEER_MAC, ARP_REQUEST, PEER_IP)  # unicast
    assert all(dst_mac_of(f) == PEER_MAC for f in frames if f is not frames[1])
    assert stack.counters["arp_requests_out"] == 1


def test_owned_mode_expired_entry_queues_until_the_neighbour_answers_again() -> None:
    config = StackConfig(arp_cache_ttl_s=10.0, arp_request_timeout_s=1.0, arp_retries=2)
    stack = resolved_stack(config)
    flow = stack.tcp.output.flow(LOCAL, REMOTE)
    flow.send(ACK, 1, 1, 100, b"resolved")
    stack.poll_transmit()
    stack.handle_timers(config.arp_cache_ttl_s)
    flow.send(ACK, 1, 1, 100, b"first")
    flow.send(ACK, 1, 1, 100, b"second")
    (request,) = stack.poll_transmit()
    assert dst_mac_of(request) == BROADCAST_MAC
    stack.receive_frame(arp_frame(ARP_REPLY, OTHER_MAC), config.arp_cache_ttl_s + 0.1)
    frames = stack.poll_transmit()
    payloads = [bytes(parse_ipv4(parse_ethernet(f)[1])[1][20:]) for f in frames]
    assert payloads == [b"first", b"second"]
    assert [dst_mac_of(f) for f in frames] == [OTHER_MAC, OTHER_MAC]


def test_unresolved_neighbour_frames_wait_then_leave_in_order_as_the_layered_path() -> None:
    stack = make_stack()
    flow = stack.tcp.output.flow(LOCAL, REMOTE)
    flow.send(ACK | PSH, 10, 20, 300, b"one")
    flow.send(ACK | PSH, 13, 20, 300, b"two")
    (request,) = stack.poll_transmit()
    assert parse_arp(parse_ethernet(request)[1]).target_ip == PEER_IP
    stack.receive_frame(arp_frame(ARP_REPLY, PEER_MAC), 0.5)
    frames = stack.poll_transmit()
    assert [bytes(f) for f in frames] == [
        layered_frame(PEER_MAC, 0, ACK | PSH, 10, 20, 300, b"one"),
        layered_frame(PEER_MAC, 1, ACK | PSH, 13, 20, 300, b"two"),
    ]
    flow.send(ACK, 16, 20, 300, b"")  # resolved now: the one-shot path
    (frame,) = stack.poll_transmit()
    assert bytes(frame) == layered_frame(PEER_MAC, 2, ACK, 16, 20, 300, b"")


def test_shared_mode_asks_the_lookup_once_per_recheck_interval_not_per_segment() -> None:
    lookup = Lookup({PEER_IP: PEER_MAC})
    stack = make_stack(owned_address=False, neighbour_lookup=lookup)
    flow = stack.tcp.output.flow(LOCAL, REMOTE)
    for _ in range(100):
        flow.send(ACK, 1, 1, 100, b"x" * 100)
    assert lookup.asked == 1
    stack.handle_timers(NEIGHBOUR_RECHECK_S)
    flow.send(ACK, 1, 1, 100, b"x")
    assert lookup.asked == 2
    assert len(stack.poll_transmit()) == 101


def test_shared_mode_picks_up_a_changed_neighbour_within_the_recheck_interval() -> None:
    lookup = Lookup({PEER_IP: PEER_MAC})
    stack = make_stack(owned_address=False, neighbour_lookup=lookup)
    flow = stack.tcp.output.flow(LOCAL, REMOTE)
    flow.send(ACK, 1, 1, 100, b"")
    lookup.table[PEER_IP] = OTHER_MAC  # the kernel's neighbour table changed
    stack.handle_timers(NEIGHBOUR_RECHECK_S)
    flow.send(ACK, 1, 1, 100, b"")
    assert [dst_mac_of(f) for f in stack.poll_transmit()] == [PEER_MAC, OTHER_MAC]


def test_shared_mode_lost_neighbour_queues_behind_the_lookup() -> None:
    lookup = Lookup({PEER_IP: PEER_MAC})
    stack = make_stack(owned_address=False, neighbour_lookup=lookup)
    flow = stack.tcp.output.flow(LOCAL, REMOTE)
    flow.send(ACK, 1, 1, 100, b"")
    del lookup.table[PEER_IP]
    stack.handle_timers(NEIGHBOUR_RECHECK_S)
    flow.send(ACK, 1, 1, 100, b"a")
    flow.send(ACK, 1, 1, 100, b"b")
    assert len(stack.poll_transmit()) == 1  # the first; the others wait
    lookup.table[PEER_IP] = OTHER_MAC
    deadline = stack.next_deadline()
    assert deadline is not None
    stack.handle_timers(deadline)
    frames = stack.poll_transmit()
    assert [dst_mac_of(f) for f in frames] == [OTHER_MAC, OTHER_MAC]


@pytest.mark.parametrize("dst", [OUR_IP_STR, "192.0.2.7"])
def test_a_flow_without_a_next_hop_counts_the_drop_as_the_layered_path(dst: str) -> None:
    stack = resolved_stack()
    remote_ip = int.from_bytes(bytes(int(p) for p in dst.split(".")), "big")
    stack.tcp.output.flow(LOCAL, (remote_ip, 80)).send(ACK, 1, 1, 1, b"x")
    assert stack.poll_transmit() == []
    reason = "ipv4_drop_loopback_unsupported" if dst == OUR_IP_STR else "ipv4_drop_no_route"
    assert stack.counters[reason] == 1


# ------------------------------------------------------------------ through a connection
def test_a_transfer_in_shared_mode_does_not_look_the_neighbour_up_per_segment() -> None:
    """Two shared-mode stacks back to back: 200 KB move in ~300 segments at one instant,
    with one neighbour lookup per stack and per destination, not one per segment."""
    lookups = {"a": Lookup({PEER_IP: PEER_MAC}), "b": Lookup({OUR_IP: OUR_MAC})}
    a = make_stack(owned_address=False, neighbour_lookup=lookups["a"])
    b = InetStack(
        StackConfig(),
        mac=PEER_MAC,
        ip=PEER_IP_STR,
        prefix_len=24,
        owned_address=False,
        neighbour_lookup=lookups["b"],
        isn_secret=b"b" * 16,
        seed=2,
    )
    b.raise_internal_errors = True
    listener = b.socket()
    b.bind(listener, (PEER_IP_STR, 80))
    b.listen(listener, 4)
    b.accept(listener)
    qd = a.socket()
    a.connect(qd, (PEER_IP_STR, 80), 0.0)
    data = bytes(range(256)) * 800
    received = bytearray()
    server_qd = None
    for _ in range(10_000):
        moved = False
        for src, dst in ((a, b), (b, a)):
            frames = src.poll_transmit()
            if frames:
                moved = True
                dst.receive_frames(frames, 0.0)
        for c in a.poll_completions():
            if c.opcode is OpCode.CONNECT:
                a.push(qd, data, 0.0)
        for c in b.poll_completions():
            if c.opcode is OpCode.ACCEPT:
                server_qd = c.new_qd
                b.pop(server_qd, None, 0.0)
            elif c.opcode is OpCode.POP and c.data:
                received += c.data
                b.pop(server_qd, None, 0.0)
        if not moved and len(received) == len(data):
            break
    assert bytes(received) == data
    assert a.counters["tcp_segments_out"] > 100
    assert lookups["a"].asked <= 2 and lookups["b"].asked <= 2


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), initial=st.integers(0, 2**32 - 1))
def test_the_hot_paths_sums_agree_with_ones_complement_sum(data: bytes, initial: int) -> None:
    view = memoryview(bytearray(data))
    assert raw_sum(as_buffer(view), len(view), initial) == ones_complement_sum(data, initial)
    assert fold_sum(initial) == ones_complement_sum(b"", initial)
