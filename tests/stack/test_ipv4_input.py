"""The input path of InetStack: every malformed or unwanted frame is counted, none raises.

The property tests feed random bytes, random payloads behind valid headers and random
(checksum-valid) TCP segments, and check the only frames that may come out: ARP from us,
ICMP echo replies, and TCP RSTs (no socket exists, so TCP may only refuse).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stack_helpers import (
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    ipv4_frame,
    make_stack,
    nonzero,
)

from xdpstackd.inetstack.layer2.arp import parse_arp
from xdpstackd.inetstack.layer2.ethernet import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_VLAN,
    build_ethernet,
    parse_ethernet,
)
from xdpstackd.inetstack.layer3.checksum import internet_checksum, pseudo_header_sum
from xdpstackd.inetstack.layer3.icmp import ICMP_ECHO_REPLY, parse_icmp
from xdpstackd.inetstack.layer3.ipv4 import (
    IPPROTO_ICMP,
    IPPROTO_TCP,
    build_ipv4,
    ip_from_str,
    parse_ipv4,
)
from xdpstackd.inetstack.layer4.tcp.header import RST, TcpHeader, build_tcp
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber
from xdpstackd.inetstack.stack import InetStack

IPPROTO_UDP = 17


def ipv4_packet(payload: bytes = b"x" * 8, protocol: int = IPPROTO_TCP) -> bytearray:
    return bytearray(build_ipv4(PEER_IP, OUR_IP, protocol, payload))


def refresh_checksum(packet: bytearray) -> bytes:
    ihl = max(20, (packet[0] & 0x0F) * 4)
    if len(packet) < ihl:
        return bytes(packet)
    packet[10:12] = b"\0\0"
    packet[10:12] = struct.pack("!H", internet_checksum(packet[:ihl]))
    return bytes(packet)


def eth(payload: bytes, ethertype: int = ETHERTYPE_IPV4, dst_mac: bytes = OUR_MAC) -> bytes:
    return build_ethernet(dst_mac, PEER_MAC, ethertype, payload)


def record_tcp(stack: InetStack) -> list[tuple[int, int, bytes]]:
    seen: list[tuple[int, int, bytes]] = []
    stack.tcp.receive = lambda src, dst, seg, now: seen.append((src, dst, bytes(seg)))  # type: ignore[method-assign]
    return seen


def run_one(frame: bytes) -> tuple[InetStack, list[tuple[int, int, bytes]]]:
    stack = make_stack()
    seen = record_tcp(stack)
    stack.receive_frame(frame, now=0.0)
    assert stack.poll_transmit() == []
    assert stack.counters["stack_internal_errors"] == 0
    return stack, seen


def _truncated() -> bytes:
    return bytes(ipv4_packet()[:19])


def _bad_version() -> bytes:
    p = ipv4_packet()
    p[0] = 0x65
    return refresh_checksum(p)


def _ihl_too_small() -> bytes:
    p = ipv4_packet()
    p[0] = 0x44
    return refresh_checksum(p)


def _ihl_beyond_packet() -> bytes:
    p = ipv4_packet(b"")
    p[0] = 0x46  # 24-byte header in a 20-byte packet
    return bytes(p)


def _total_length_too_big() -> bytes:
    p = ipv4_packet()
    p[2:4] = struct.pack("!H", len(p) + 1)
    return refresh_checksum(p)


def _total_length_below_header() -> bytes:
    p = ipv4_packet()
    p[2:4] = struct.pack("!H", 19)
    return refresh_checksum(p)


def _bad_checksum() -> bytes:
    p = ipv4_packet()
    p[10] ^= 0xFF
    return bytes(p)


@pytest.mark.parametrize(
    ("make_packet", "counter"),
    [
        (_truncated, "ipv4_drop_truncated"),
        (_bad_version, "ipv4_drop_bad_version"),
        (_ihl_too_small, "ipv4_drop_bad_header_length"),
        (_ihl_beyond_packet, "ipv4_drop_bad_header_length"),
        (_total_length_too_big, "ipv4_drop_bad_total_length"),
        (_total_length_below_header, "ipv4_drop_bad_total_length"),
        (_bad_checksum, "ipv4_drop_bad_checksum"),
    ],
)
def test_malformed_ipv4_is_counted_under_its_reason(make_packet, counter: str) -> None:
    stack, seen = run_one(eth(make_packet()))
    assert seen == []
    assert nonzero(stack.counters, "ipv4_drop") == {counter: 1}


@pytest.mark.parametrize(
    ("frag_field", "what"),
    [(0x2000, "first fragment (MF)"), (0x0001, "last fragment (offset 8)"), (0x2010, "middle")],
)
def test_fragments_are_dropped_and_counted(frag_field: int, what: str) -> None:
    p = ipv4_packet()
    p[6:8] = struct.pack("!H", frag_field)
    stack, seen = run_one(eth(refresh_checksum(p)))
    assert seen == [], what
    assert nonzero(stack.counters, "ipv4_drop") == {"ipv4_drop_fragment": 1}


def test_packets_for_another_address_are_dropped() -> None:
    frame = ipv4_frame(b"x" * 20, IPPROTO_TCP, dst=ip_from_str("10.0.0.77"))
    stack, seen = run_one(frame)
    assert seen == []
    assert nonzero(stack.counters, "ipv4_drop") == {"ipv4_drop_not_for_us": 1}


@pytest.mark.parametrize(
    "src", ["10.0.0.1", "0.0.0.0", "255.255.255.255", "224.0.0.1", "10.0.0.255", "127.0.0.1"]
)
def test_martian_sources_are_dropped(src: str) -> None:
    stack, seen = run_one(ipv4_frame(b"x" * 20, IPPROTO_TCP, src=ip_from_str(src)))
    assert seen == []
    assert nonzero(stack.counters, "ipv4_drop") == {"ipv4_drop_bad_source": 1}


def test_unknown_protocol_is_dropped() -> None:
    stack, _ = run_one(ipv4_frame(b"u" * 8, IPPROTO_UDP))
    assert nonzero(stack.counters, "ipv4_drop") == {"ipv4_drop_unknown_protocol": 1}


def test_ttl_does_not_matter_on_input() -> None:
    p = ipv4_packet(b"t" * 20)
    p[8] = 0
    _stack, seen = run_one(eth(refresh_checksum(p)))
    assert seen == [(PEER_IP, OUR_IP, b"t" * 20)]


def test_tcp_reaches_the_peer_trimmed_of_ethernet_padding() -> None:
    segment = b"s" * 20
    frame = ipv4_frame(segment, IPPROTO_TCP) + bytes(20)  # padded short frame
    stack, seen = run_one(frame)
    assert seen == [(PEER_IP, OUR_IP, segment)]
    assert stack.counters["ipv4_packets_in"] == 1
    assert nonzero(stack.counters, "ipv4_drop") == {}


def test_ip_in_broadcast_frames_and_frames_for_other_macs_are_dropped() -> None:
    # link-layer broadcast is for ARP; TCP in it is not addressed to us (Linux: PACKET_HOST)
    stack, seen = run_one(ipv4_frame(b"b" * 20, IPPROTO_TCP, dst_mac=BROADCAST_MAC))
    assert seen == []
    assert stack.counters["eth_drop_broadcast_not_arp"] == 1
    stack, seen = run_one(ipv4_frame(b"b" * 20, IPPROTO_TCP, dst_mac=bytes.fromhex("020000000099")))
    assert seen == []
    assert stack.counters["eth_drop_not_for_us"] == 1


@pytest.mark.parametrize(
    ("frame", "counter"),
    [
        (b"\x02\x00\x00", "eth_drop_truncated"),
        (b"", "eth_drop_truncated"),
        (eth(b"\x60" + bytes(39), ethertype=0x86DD), "eth_drop_unknown_ethertype"),
        (eth(bytes(46), ethertype=ETHERTYPE_VLAN), "eth_drop_unknown_ethertype"),
        (eth(bytes(10), ethertype=ETHERTYPE_ARP), "arp_drop_truncated"),
        (eth(b"\x00\x06" + bytes(26), ethertype=ETHERTYPE_ARP), "arp_drop_unsupported_hardware"),
    ],
)
def test_malformed_frames_are_counted(frame: bytes, counter: str) -> None:
    stack, _ = run_one(frame)
    assert stack.counters[counter] == 1
    assert stack.counters["eth_frames_in"] == 1


def test_memoryview_input_is_accepted() -> None:
    stack = make_stack()
    seen = record_tcp(stack)
    stack.receive_frames([memoryview(ipv4_frame(b"m" * 20, IPPROTO_TCP))] * 2, now=0.0)
    assert len(seen) == 2


# ------------------------------------------------------------------ properties
def check_output(stack: InetStack) -> None:
    """Only ARP from us, ICMP echo replies and TCP RSTs from our address may leave."""
    for frame in stack.poll_transmit():
        header, payload = parse_ethernet(frame)
        assert header.src == OUR_MAC
        if header.ethertype == ETHERTYPE_ARP:
            arp = parse_arp(payload)
            assert arp.sender_mac == OUR_MAC and arp.sender_ip == OUR_IP
            continue
        assert header.ethertype == ETHERTYPE_IPV4
        ip, body = parse_ipv4(payload)
        assert ip.src == OUR_IP
        if ip.protocol == IPPROTO_ICMP:
            assert parse_icmp(body)[0] == ICMP_ECHO_REPLY
        else:
            assert ip.protocol == IPPROTO_TCP
            assert body[13] & RST, f"TCP output without RST: {bytes(body[:20]).hex()}"
    assert stack.counters["stack_internal_errors"] == 0


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_random_frames_never_raise(frames: list[bytes]) -> None:
    stack = make_stack()
    for i, frame in enumerate(frames):
        stack.receive_frame(frame, now=float(i))
        stack.handle_timers(float(i))
    check_output(stack)


@SETTINGS
@given(
    ethertype=st.sampled_from([ETHERTYPE_IPV4, ETHERTYPE_ARP, 0x86DD]),
    dst_mac=st.sampled_from([OUR_MAC, BROADCAST_MAC]),
    payload=st.binary(max_size=120),
)
def test_random_payloads_behind_our_ethernet_header_never_raise(
    ethertype: int, dst_mac: bytes, payload: bytes
) -> None:
    stack = make_stack()
    stack.receive_frame(eth(payload, ethertype=ethertype, dst_mac=dst_mac), now=1.0)
    check_output(stack)


@SETTINGS
@given(
    protocol=st.sampled_from([IPPROTO_TCP, IPPROTO_ICMP, IPPROTO_UDP]),
    src=st.sampled_from([PEER_IP, ip_from_str("10.0.0.3"), ip_from_str("192.0.2.1")]),
    body=st.binary(max_size=120),
    frag=st.sampled_from([0, 0x4000, 0x2000]),
)
def test_random_bodies_behind_valid_ipv4_never_raise(
    protocol: int, src: int, body: bytes, frag: int
) -> None:
    p = bytearray(build_ipv4(src, OUR_IP, protocol, body))
    p[6:8] = struct.pack("!H", frag)
    stack = make_stack()
    stack.receive_frame(eth(refresh_checksum(p)), now=1.0)
    check_output(stack)


@SETTINGS
@given(
    src_port=st.integers(0, 65535),
    dst_port=st.integers(0, 65535),
    seq=st.integers(0, 2**32 - 1),
    ack=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 255),
    window=st.integers(0, 65535),
    payload=st.binary(max_size=64),
    options=st.binary(max_size=40).map(lambda b: b + bytes(-len(b) % 4)),
)
def test_random_valid_tcp_segments_to_closed_ports_only_draw_resets(
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes,
    options: bytes,
) -> None:
    header = TcpHeader(src_port, dst_port, SeqNumber(seq), SeqNumber(ack), flags, window)
    segment = bytearray(build_tcp(header, options + payload, PEER_IP, OUR_IP))
    if options:
        # Put the random options inside the header (data offset), keep the checksum right.
        segment[12] = ((20 + len(options)) // 4) << 4
        segment[16:18] = b"\0\0"
        csum = internet_checksum(
            segment, pseudo_header_sum(PEER_IP, OUR_IP, IPPROTO_TCP, len(segment))
        )
        segment[16:18] = struct.pack("!H", csum)
    stack = make_stack()
    stack.arp.insert(PEER_IP, PEER_MAC, now=0.0)
    stack.receive_frame(ipv4_frame(bytes(segment), IPPROTO_TCP), now=1.0)
    stack.handle_timers(2.0)
    check_output(stack)
