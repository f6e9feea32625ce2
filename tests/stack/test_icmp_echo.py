"""ICMP echo through InetStack: answered for an owned address, left to the kernel otherwise."""

from __future__ import annotations

from stack_helpers import (
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    ipv4_frame,
    make_stack,
)

from xdpstackd.inetstack.layer2.arp import ARP_REPLY, ARP_REQUEST, ArpPacket, build_arp, parse_arp
from xdpstackd.inetstack.layer2.ethernet import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    build_ethernet,
    parse_ethernet,
)
from xdpstackd.inetstack.layer3.icmp import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    build_icmp_echo,
    parse_icmp_echo,
)
from xdpstackd.inetstack.layer3.ipv4 import IPPROTO_ICMP, ip_from_str, parse_ipv4

REQUEST = build_icmp_echo(ICMP_ECHO_REQUEST, 0x1234, 7, b"ping payload " * 10)


def test_echo_request_to_owned_address_is_answered() -> None:
    stack = make_stack()
    stack.arp.insert(PEER_IP, PEER_MAC, now=0.0)
    stack.receive_frame(ipv4_frame(REQUEST, IPPROTO_ICMP), now=1.0)
    (frame,) = stack.poll_transmit()
    eth, packet = parse_ethernet(frame)
    assert (eth.dst, eth.src, eth.ethertype) == (PEER_MAC, OUR_MAC, ETHERTYPE_IPV4)
    ip, message = parse_ipv4(packet)
    assert (ip.src, ip.dst, ip.protocol) == (OUR_IP, PEER_IP, IPPROTO_ICMP)
    reply = parse_icmp_echo(message)  # verifies the checksum
    assert (reply.type, reply.identifier, reply.sequence) == (ICMP_ECHO_REPLY, 0x1234, 7)
    assert reply.data == b"ping payload " * 10
    assert stack.counters["icmp_echo_replies"] == 1
    assert stack.counters["eth_frames_out"] == 1
    assert stack.counters["ipv4_packets_out"] == 1


def test_echo_reply_waits_for_arp_resolution_of_the_requester() -> None:
    stack = make_stack()
    stack.receive_frame(ipv4_frame(REQUEST, IPPROTO_ICMP), now=0.0)
    (arp_frame,) = stack.poll_transmit()
    eth, payload = parse_ethernet(arp_frame)
    assert (eth.dst, eth.ethertype) == (BROADCAST_MAC, ETHERTYPE_ARP)
    assert parse_arp(payload) == ArpPacket(ARP_REQUEST, OUR_MAC, OUR_IP, bytes(6), PEER_IP)
    assert stack.next_deadline() is not None
    arp_reply = build_arp(ArpPacket(ARP_REPLY, PEER_MAC, PEER_IP, OUR_MAC, OUR_IP))
    stack.receive_frame(build_ethernet(OUR_MAC, PEER_MAC, ETHERTYPE_ARP, arp_reply), now=0.001)
    (frame,) = stack.poll_transmit()
    eth, packet = parse_ethernet(frame)
    assert eth.dst == PEER_MAC
    assert parse_icmp_echo(parse_ipv4(packet)[1]).type == ICMP_ECHO_REPLY


def test_no_echo_reply_in_shared_mode() -> None:
    stack = make_stack(owned_address=False, neighbour_lookup=lambda ip: PEER_MAC)
    stack.receive_frame(ipv4_frame(REQUEST, IPPROTO_ICMP), now=0.0)
    assert stack.poll_transmit() == []
    assert stack.counters["icmp_ignored_shared_mode"] == 1
    assert stack.counters["icmp_echo_replies"] == 0


def test_bad_icmp_checksum_is_dropped_and_counted() -> None:
    stack = make_stack()
    stack.arp.insert(PEER_IP, PEER_MAC, now=0.0)
    damaged = bytearray(REQUEST)
    damaged[-1] ^= 0x01
    stack.receive_frame(ipv4_frame(bytes(damaged), IPPROTO_ICMP), now=0.0)
    assert stack.poll_transmit() == []
    assert stack.counters["icmp_drop_bad_checksum"] == 1


def test_truncated_icmp_is_dropped_and_counted() -> None:
    stack = make_stack()
    stack.receive_frame(ipv4_frame(b"\x08\x00\xf7", IPPROTO_ICMP), now=0.0)
    assert stack.poll_transmit() == []
    assert stack.counters["icmp_drop_truncated"] == 1


def test_echo_replies_and_other_types_are_not_answered() -> None:
    stack = make_stack()
    stack.arp.insert(PEER_IP, PEER_MAC, now=0.0)
    reply = build_icmp_echo(ICMP_ECHO_REPLY, 1, 1, b"x")
    unreachable = build_icmp_echo(3, 0, 0, bytes(28), code=3)  # same layout, type 3
    stack.receive_frame(ipv4_frame(reply, IPPROTO_ICMP), now=0.0)
    stack.receive_frame(ipv4_frame(unreachable, IPPROTO_ICMP), now=0.0)
    assert stack.poll_transmit() == []
    assert stack.counters["icmp_ignored_not_echo_request"] == 1
    assert stack.counters["icmp_echo_replies_in"] == 1
    assert list(stack.echo_replies) == [("10.0.0.2", 1, 1, 0.0)]


def test_echo_to_another_or_broadcast_address_is_not_answered() -> None:
    stack = make_stack()
    stack.arp.insert(PEER_IP, PEER_MAC, now=0.0)
    for dst in ("10.0.0.9", "10.0.0.255", "255.255.255.255"):
        frame = ipv4_frame(REQUEST, IPPROTO_ICMP, dst=ip_from_str(dst), dst_mac=BROADCAST_MAC)
        stack.receive_frame(frame, now=0.0)
        frame = ipv4_frame(REQUEST, IPPROTO_ICMP, dst=ip_from_str(dst))
        stack.receive_frame(frame, now=0.0)
    assert stack.poll_transmit() == []
    assert stack.counters["eth_drop_broadcast_not_arp"] == 3
    assert stack.counters["ipv4_drop_not_for_us"] == 3
