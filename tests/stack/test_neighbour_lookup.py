"""The output path: next hop (on-link or gateway), shared-mode neighbour lookup, MSS from MTU.

TCP output is injected through a stand-in for ``stack.tcp`` so these tests pin the
routing and framing alone, whatever the TCP core does.
"""

from __future__ import annotations

import pytest
from stack_helpers import (
    GATEWAY_IP,
    GATEWAY_IP_STR,
    GATEWAY_MAC,
    OUR_IP,
    OUR_MAC,
    PEER_IP,
    PEER_MAC,
    make_stack,
)

from xdpstackd.inetstack.config import StackConfig, TcpConfig
from xdpstackd.inetstack.layer2.arp import ARP_REQUEST, ArpPacket, build_arp, parse_arp
from xdpstackd.inetstack.layer2.ethernet import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    build_ethernet,
    parse_ethernet,
)
from xdpstackd.inetstack.layer3.ipv4 import IPPROTO_TCP, ip_from_str, parse_ipv4
from xdpstackd.inetstack.stack import InetStack

FAR_IP = ip_from_str("192.0.2.7")


class FakeTcp:
    """Just enough of TcpPeer for the output path: segments queued by the test."""

    def __init__(self) -> None:
        self.out: list[tuple[int, int, bytes]] = []

    def poll_transmit(self) -> list[tuple[int, int, bytes]]:
        out, self.out = self.out, []
        return out

    def handle_timers(self, now: float) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None


def with_fake_tcp(stack: InetStack) -> FakeTcp:
    fake = FakeTcp()
    stack.tcp = fake  # type: ignore[assignment]
    return fake


def decode(frame: bytes) -> tuple[bytes, int, int, bytes]:
    eth, packet = parse_ethernet(frame)
    assert eth.src == OUR_MAC and eth.ethertype == ETHERTYPE_IPV4
    ip, payload = parse_ipv4(packet)
    assert ip.protocol == IPPROTO_TCP and ip.src == OUR_IP
    return eth.dst, ip.src, ip.dst, bytes(payload)


class Lookup:
    def __init__(self, table: dict[int, bytes]) -> None:
        self.table = table
        self.asked: list[int] = []

    def __call__(self, ip: int) -> bytes | None:
        self.asked.append(ip)
        return self.table.get(ip)


def test_shared_mode_sends_to_the_mac_the_lookup_returns() -> None:
    lookup = Lookup({PEER_IP: PEER_MAC})
    stack = make_stack(owned_address=False, neighbour_lookup=lookup)
    tcp = with_fake_tcp(stack)
    tcp.out.append((OUR_IP, PEER_IP, b"segment-1"))
    (frame,) = stack.poll_transmit()
    assert decode(frame) == (PEER_MAC, OUR_IP, PEER_IP, b"segment-1")
    assert lookup.asked == [PEER_IP]
    assert stack.counters["arp_requests_out"] == 0


def test_off_subnet_destinations_go_to_the_gateway() -> None:
    lookup = Lookup({GATEWAY_IP: GATEWAY_MAC})
    stack = make_stack(owned_address=False, neighbour_lookup=lookup, gateway=GATEWAY_IP_STR)
    tcp = with_fake_tcp(stack)
    tcp.out.append((OUR_IP, FAR_IP, b"far away"))
    (frame,) = stack.poll_transmit()
    assert decode(frame) == (GATEWAY_MAC, OUR_IP, FAR_IP, b"far away")
    assert lookup.asked == [GATEWAY_IP]


def test_off_subnet_without_gateway_is_dropped_as_no_route() -> None:
    stack = make_stack(owned_address=False, neighbour_lookup=Lookup({}))
    tcp = with_fake_tcp(stack)
    tcp.out.append((OUR_IP, FAR_IP, b"nowhere"))
    assert stack.poll_transmit() == []
    assert stack.counters["ipv4_drop_no_route"] == 1


def test_unanswered_lookup_queues_and_retries_on_the_next_timer_tick() -> None:
    lookup = Lookup({})
    stack = make_stack(owned_address=False, neighbour_lookup=lookup)
    tcp = with_fake_tcp(stack)
    tcp.out += [(OUR_IP, PEER_IP, b"first"), (OUR_IP, PEER_IP, b"second")]
    stack.handle_timers(0.0)
    assert stack.poll_transmit() == []
    deadline = stack.next_deadline()
    assert deadline is not None and 0.0 < deadline <= stack.config.arp_request_timeout_s
    assert lookup.asked == [PEER_IP]  # asked once; the second frame queued behind the first
    lookup.table[PEER_IP] = PEER_MAC
    stack.handle_timers(deadline)
    frames = stack.poll_transmit()
    assert [decode(f)[3] for f in frames] == [b"first", b"second"]
    assert all(decode(f)[0] == PEER_MAC for f in frames)
    assert stack.next_deadline() is None


def test_unanswered_lookup_gives_up_after_a_bounded_time() -> None:
    config = StackConfig(arp_request_timeout_s=0.5, arp_retries=2)
    lookup = Lookup({})
    stack = make_stack(owned_address=False, neighbour_lookup=lookup, config=config)
    tcp = with_fake_tcp(stack)
    tcp.out.append((OUR_IP, PEER_IP, b"lost"))
    stack.handle_timers(0.0)
    stack.poll_transmit()
    now = 0.0
    for _ in range(1000):
        deadline = stack.next_deadline()
        if deadline is None:
            break
        now = deadline
        stack.handle_timers(now)
    assert stack.next_deadline() is None
    assert now == pytest.approx(1.5)  # (1 + retries) * timeout
    assert stack.counters["arp_drop_unresolved"] == 1
    assert len(lookup.asked) <= 1 + 10 * 3  # bounded number of kernel lookups
    assert stack.poll_transmit() == []


def test_shared_mode_ignores_arp_frames() -> None:
    stack = make_stack(owned_address=False, neighbour_lookup=Lookup({}))
    request = build_arp(ArpPacket(ARP_REQUEST, PEER_MAC, PEER_IP, bytes(6), OUR_IP))
    stack.receive_frame(build_ethernet(BROADCAST_MAC, PEER_MAC, ETHERTYPE_ARP, request), 0.0)
    assert stack.poll_transmit() == []
    assert stack.counters["arp_ignored_shared_mode"] == 1


def test_owned_mode_resolves_the_gateway_by_arp() -> None:
    stack = make_stack(gateway=GATEWAY_IP_STR)
    tcp = with_fake_tcp(stack)
    tcp.out.append((OUR_IP, FAR_IP, b"via gw"))
    stack.handle_timers(0.0)
    (frame,) = stack.poll_transmit()
    eth, payload = parse_ethernet(frame)
    assert eth.dst == BROADCAST_MAC and eth.ethertype == ETHERTYPE_ARP
    assert parse_arp(payload).target_ip == GATEWAY_IP


def test_shared_mode_needs_a_lookup() -> None:
    with pytest.raises(ValueError, match="neighbour_lookup"):
        InetStack(StackConfig(), mac=OUR_MAC, ip="10.0.0.1", prefix_len=24, owned_address=False)


def test_gateway_must_be_on_link() -> None:
    with pytest.raises(ValueError, match="not on-link"):
        InetStack(StackConfig(), mac=OUR_MAC, ip="10.0.0.1", prefix_len=24, gateway="10.0.1.1")


@pytest.mark.parametrize(("mtu", "mss"), [(1500, 1460), (9000, 8960), (576, 536), (3800, 3760)])
def test_mss_follows_the_mtu_without_touching_the_callers_config(mtu: int, mss: int) -> None:
    config = StackConfig(mtu=mtu, tcp=TcpConfig(mss=1234))
    stack = InetStack(config, mac=OUR_MAC, ip="10.0.0.1", prefix_len=24)
    assert stack.config.tcp.mss == mss
    assert config.tcp.mss == 1234


@pytest.mark.parametrize("mtu", [0, 67, 575, 65536])
def test_insane_mtu_is_refused(mtu: int) -> None:
    with pytest.raises(ValueError, match="MTU"):
        InetStack(StackConfig(mtu=mtu), mac=OUR_MAC, ip="10.0.0.1", prefix_len=24)
