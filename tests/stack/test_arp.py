"""ARP wire format and ArpCache: expiry, retries, give-up, pending bound, learning, replies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xdpstackd.inetstack.config import StackConfig
from xdpstackd.inetstack.counters import Counters
from xdpstackd.inetstack.errors import ParseError
from xdpstackd.inetstack.layer2.arp import (
    ARP_REPLY,
    ARP_REQUEST,
    ArpCache,
    ArpPacket,
    build_arp,
    parse_arp,
)
from xdpstackd.inetstack.layer2.ethernet import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    parse_ethernet,
)
from xdpstackd.inetstack.layer3.ipv4 import ip_from_str

OUR_MAC = bytes.fromhex("020000000001")
OUR_IP = ip_from_str("10.0.0.1")
PEER_MAC = bytes.fromhex("020000000002")
PEER_IP = ip_from_str("10.0.0.2")
OTHER_MAC = bytes.fromhex("020000000003")
OTHER_IP = ip_from_str("10.0.0.3")
ZERO_MAC = bytes(6)


def make_cache(**overrides: float) -> ArpCache:
    config = StackConfig(
        arp_cache_ttl_s=10.0, arp_request_timeout_s=1.0, arp_retries=2, arp_pending_max_frames=3
    )
    for name, value in overrides.items():
        setattr(config, name, value)
    return ArpCache(config, mac=OUR_MAC, ip=OUR_IP, counters=Counters())


def drain(cache: ArpCache) -> list[bytes]:
    out = list(cache.tx)
    cache.tx.clear()
    return out


def arp_of(frame: bytes) -> tuple[bytes, ArpPacket]:
    eth, payload = parse_ethernet(frame)
    assert eth.ethertype == ETHERTYPE_ARP
    assert eth.src == OUR_MAC
    return eth.dst, parse_arp(payload)


def reply_from_peer(mac: bytes = PEER_MAC, ip: int = PEER_IP) -> ArpPacket:
    return ArpPacket(ARP_REPLY, mac, ip, OUR_MAC, OUR_IP)


# ---------------------------------------------------------------- wire format
def test_build_parse_round_trip() -> None:
    packet = ArpPacket(ARP_REQUEST, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP)
    wire = build_arp(packet)
    assert len(wire) == 28
    assert wire[:8] == bytes.fromhex("0001080006040001")
    assert parse_arp(wire) == packet
    assert parse_arp(wire + bytes(18)) == packet  # Ethernet padding is ignored


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (0, b"\x00\x06", "unsupported_hardware"),
        (2, b"\x86\xdd", "unsupported_protocol"),
        (4, b"\x08", "bad_address_length"),
        (5, b"\x10", "bad_address_length"),
        (6, b"\x00\x03", "unknown_op"),
    ],
)
def test_parse_rejects_non_ethernet_ipv4(offset: int, value: bytes, reason: str) -> None:
    wire = bytearray(build_arp(ArpPacket(ARP_REQUEST, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP)))
    wire[offset : offset + len(value)] = value
    with pytest.raises(ParseError) as info:
        parse_arp(bytes(wire))
    assert info.value.reason == reason


def test_parse_truncated() -> None:
    with pytest.raises(ParseError) as info:
        parse_arp(bytes(27))
    assert info.value.reason == "truncated"


@given(st.binary(max_size=64))
def test_parse_random_bytes_raises_only_parse_error(data: bytes) -> None:
    try:
        parse_arp(data)
    except ParseError:
        pass


# ---------------------------------------------------------------- resolution
def test_unknown_neighbour_gets_a_broadcast_request_and_frames_wait() -> None:
    cache = make_cache()
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"one", now=0.0)
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"two", now=0.1)
    frames = drain(cache)
    assert len(frames) == 1  # one request, not one per frame
    dst, request = arp_of(frames[0])
    assert dst == BROADCAST_MAC
    assert request == ArpPacket(ARP_REQUEST, OUR_MAC, OUR_IP, ZERO_MAC, PEER_IP)
    assert cache.pending() == {PEER_IP: 2}
    assert cache.next_deadline() == 1.0
    assert cache.counters["arp_requests_out"] == 1


def test_reply_learns_entry_and_releases_waiting_frames_in_order() -> None:
    cache = make_cache()
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"one", now=0.0)
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"two", now=0.0)
    drain(cache)
    cache.receive(reply_from_peer(), now=0.2)
    released = drain(cache)
    assert [parse_ethernet(f)[1].tobytes() for f in released] == [b"one", b"two"]
    assert all(parse_ethernet(f)[0].dst == PEER_MAC for f in released)
    assert cache.lookup(PEER_IP, 0.2) == PEER_MAC
    assert cache.pending() == {}
    assert cache.next_deadline() is None
    # Now resolved: frames go straight out.
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"three", now=0.3)
    (frame,) = drain(cache)
    eth, payload = parse_ethernet(frame)
    assert (eth.dst, eth.ethertype, payload.tobytes()) == (PEER_MAC, ETHERTYPE_IPV4, b"three")


def test_requests_are_retried_then_frames_dropped_and_counted() -> None:
    cache = make_cache()  # timeout 1 s, 2 retries: requests at 0, 1, 2; give up at 3
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"a", now=0.0)
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"b", now=0.5)
    assert len(drain(cache)) == 1
    cache.handle_timers(0.99)
    assert drain(cache) == []
    for t in (1.0, 2.0):
        assert cache.next_deadline() == t
        cache.handle_timers(t)
        (frame,) = drain(cache)
        assert arp_of(frame)[1].op == ARP_REQUEST
    assert cache.counters["arp_requests_out"] == 3
    assert cache.counters["arp_request_retries"] == 2
    assert cache.next_deadline() == 3.0
    cache.handle_timers(3.0)
    assert drain(cache) == []
    assert cache.counters["arp_drop_unresolved"] == 2
    assert cache.pending() == {}
    assert cache.next_deadline() is None
    # A later frame starts a fresh resolution.
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"c", now=5.0)
    assert len(drain(cache)) == 1
    assert cache.counters["arp_requests_out"] == 4


def test_late_reply_after_give_up_still_learns() -> None:
    cache = make_cache()
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"a", now=0.0)
    for t in (1.0, 2.0, 3.0):
        cache.handle_timers(t)
    drain(cache)
    cache.receive(reply_from_peer(), now=3.5)
    assert cache.lookup(PEER_IP, 3.5) == PEER_MAC
    assert drain(cache) == []


def test_pending_queue_is_bounded_per_neighbour() -> None:
    cache = make_cache()  # arp_pending_max_frames = 3
    for i in range(5):
        cache.send(PEER_IP, ETHERTYPE_IPV4, bytes([i]), now=0.0)
    cache.send(OTHER_IP, ETHERTYPE_IPV4, b"x", now=0.0)  # another neighbour has its own
    assert cache.pending() == {PEER_IP: 3, OTHER_IP: 1}
    assert cache.counters["arp_drop_pending_overflow"] == 2
    drain(cache)
    cache.receive(reply_from_peer(), now=0.1)
    released = [parse_ethernet(f)[1].tobytes() for f in drain(cache)]
    assert released == [b"\x00", b"\x01", b"\x02"]  # the oldest kept, tail dropped


def test_entry_expires_after_ttl() -> None:
    cache = make_cache()  # ttl 10 s
    cache.receive(reply_from_peer(), now=0.0)
    assert cache.lookup(PEER_IP, 9.999) == PEER_MAC
    assert cache.lookup(PEER_IP, 10.0) is None
    assert PEER_IP not in cache.entries(10.0)
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"late", now=10.0)
    (frame,) = drain(cache)
    dst, request = arp_of(frame)
    assert dst == BROADCAST_MAC and request.target_ip == PEER_IP
    assert cache.pending() == {PEER_IP: 1}


def test_entry_in_use_is_refreshed_by_unicast_before_it_expires() -> None:
    cache = make_cache()  # ttl 10 s, refresh window min(5, 3) = 3 s
    cache.receive(reply_from_peer(), now=0.0)
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"early", now=6.9)
    assert len(drain(cache)) == 1  # just the frame
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"late", now=7.0)
    refresh, data = drain(cache)
    dst, request = arp_of(refresh)
    assert dst == PEER_MAC and request.op == ARP_REQUEST and request.target_ip == PEER_IP
    assert parse_ethernet(data)[0].dst == PEER_MAC
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"again", now=7.5)
    assert len(drain(cache)) == 1  # one refresh per period
    cache.receive(reply_from_peer(), now=7.6)
    assert cache.lookup(PEER_IP, 17.5) == PEER_MAC


def test_expired_entries_are_purged_by_timers() -> None:
    cache = make_cache()
    cache.receive(reply_from_peer(), now=0.0)
    cache.handle_timers(0.0)
    cache.handle_timers(20.0)
    assert cache._entries == {}


# ---------------------------------------------------------------- reception
def test_request_for_our_address_is_answered_and_requester_learned() -> None:
    cache = make_cache()
    cache.receive(ArpPacket(ARP_REQUEST, PEER_MAC, PEER_IP, ZERO_MAC, OUR_IP), now=0.0)
    (frame,) = drain(cache)
    dst, reply = arp_of(frame)
    assert dst == PEER_MAC
    assert reply == ArpPacket(ARP_REPLY, OUR_MAC, OUR_IP, PEER_MAC, PEER_IP)
    assert cache.counters["arp_replies_out"] == 1
    assert cache.lookup(PEER_IP, 0.0) == PEER_MAC


def test_request_for_another_address_is_ignored_and_not_learned() -> None:
    cache = make_cache()
    cache.receive(ArpPacket(ARP_REQUEST, PEER_MAC, PEER_IP, ZERO_MAC, OTHER_IP), now=0.0)
    assert drain(cache) == []
    assert cache.lookup(PEER_IP, 0.0) is None
    assert cache.counters["arp_ignored_not_for_us"] == 1


def test_reply_to_someone_else_does_not_create_an_entry() -> None:
    cache = make_cache()
    cache.receive(ArpPacket(ARP_REPLY, PEER_MAC, PEER_IP, OTHER_MAC, OTHER_IP), now=0.0)
    assert cache.entries(0.0) == {}


def test_gratuitous_arp_updates_an_existing_entry_only() -> None:
    cache = make_cache()
    cache.receive(reply_from_peer(), now=0.0)
    new_mac = bytes.fromhex("02000000aaaa")
    garp = ArpPacket(ARP_REQUEST, new_mac, PEER_IP, BROADCAST_MAC, PEER_IP)
    cache.receive(garp, now=1.0)
    assert cache.lookup(PEER_IP, 1.0) == new_mac
    assert cache.lookup(PEER_IP, 10.5) == new_mac  # and refreshed
    assert cache.counters["arp_entries_updated"] == 1
    assert drain(cache) == []
    # A gratuitous ARP for a neighbour we do not know creates nothing.
    cache.receive(ArpPacket(ARP_REPLY, OTHER_MAC, OTHER_IP, BROADCAST_MAC, OTHER_IP), now=1.0)
    assert OTHER_IP not in cache.entries(1.0)


def test_senders_claiming_our_address_or_a_group_mac_are_not_learned() -> None:
    cache = make_cache()
    cache.receive(ArpPacket(ARP_REQUEST, PEER_MAC, OUR_IP, ZERO_MAC, OUR_IP), now=0.0)
    cache.receive(ArpPacket(ARP_REQUEST, BROADCAST_MAC, PEER_IP, ZERO_MAC, OUR_IP), now=0.0)
    assert cache.entries(0.0) == {}
    assert drain(cache) == []
    assert cache.counters["arp_drop_address_conflict"] == 1
    assert cache.counters["arp_drop_bad_sender_mac"] == 1


def test_probe_for_our_address_is_answered_without_learning() -> None:
    cache = make_cache()
    cache.receive(ArpPacket(ARP_REQUEST, PEER_MAC, 0, ZERO_MAC, OUR_IP), now=0.0)
    (frame,) = drain(cache)
    dst, reply = arp_of(frame)
    assert dst == PEER_MAC and reply.op == ARP_REPLY and reply.sender_ip == OUR_IP
    assert cache.entries(0.0) == {}


# ---------------------------------------------------------------- shared mode
def test_neighbour_lookup_mode_asks_the_callable_and_retries_then_gives_up() -> None:
    answers: dict[int, bytes] = {}
    asked: list[int] = []

    def lookup(ip: int) -> bytes | None:
        asked.append(ip)
        return answers.get(ip)

    config = StackConfig(arp_request_timeout_s=1.0, arp_retries=1)
    cache = ArpCache(config, mac=OUR_MAC, ip=OUR_IP, counters=Counters(), neighbour_lookup=lookup)
    cache.send(PEER_IP, ETHERTYPE_IPV4, b"a", now=0.0)
    assert drain(cache) == []  # no ARP traffic in shared mode
    assert cache.next_deadline() == pytest.approx(0.1)
    cache.handle_timers(0.1)
    answers[PEER_IP] = PEER_MAC
    cache.handle_timers(0.2)
    (frame,) = drain(cache)
    assert parse_ethernet(frame)[0].dst == PEER_MAC
    # Give-up: budget (1 + retries) * timeout = 2 s.
    cache.send(OTHER_IP, ETHERTYPE_IPV4, b"b", now=1.0)
    t = 1.0
    while cache.next_deadline() is not None:
        t = cache.next_deadline()
        cache.handle_timers(t)
    assert t == pytest.approx(3.0)
    assert cache.counters["arp_drop_unresolved"] == 1
    assert cache.counters["arp_requests_out"] == 0


def test_a_second_answer_within_locktime_does_not_replace_the_first() -> None:
    cache = make_cache()
    cache.receive(reply_from_peer(), now=0.0)
    cache.receive(reply_from_peer(mac=OTHER_MAC), now=0.5)  # e.g. a damaged duplicate
    assert cache.lookup(PEER_IP, 0.5) == PEER_MAC
    assert cache.counters["arp_ignored_locktime"] == 1
    cache.receive(reply_from_peer(mac=OTHER_MAC), now=1.5)  # past locktime: believed
    assert cache.lookup(PEER_IP, 1.5) == OTHER_MAC
