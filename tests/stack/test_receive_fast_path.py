"""The receive hot path (Ethernet + IPv4 checked in one unpack) decides as the layered
parsers do: what reaches TCP, with which addresses and bytes, and what is dropped."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from stack_helpers import OUR_IP, OUR_MAC, PEER_IP, ipv4_frame, make_stack

from xdpstackd.inetstack.errors import ParseError
from xdpstackd.inetstack.layer2.ethernet import ETHERTYPE_IPV4, parse_ethernet
from xdpstackd.inetstack.layer3.checksum import internet_checksum
from xdpstackd.inetstack.layer3.ipv4 import IPPROTO_TCP, parse_ipv4
from xdpstackd.inetstack.layer4.tcp.header import ACK, build_tcp_segment

SEGMENT = build_tcp_segment(40000, 80, 1, 2, ACK, 100, b"payload!", PEER_IP, OUR_IP)
VALID = ipv4_frame(SEGMENT, IPPROTO_TCP)


def layered_decision(frame: bytes) -> tuple[int, int, bytes] | None:
    """What the layered parsers let through to TCP (the reference)."""
    try:
        eth, packet = parse_ethernet(frame)
        if eth.dst != OUR_MAC or eth.ethertype != ETHERTYPE_IPV4:
            return None
        ip, payload = parse_ipv4(packet)
    except ParseError:
        return None
    src = ip.src
    martian = src in (OUR_IP, 0) or src >= 0xE0000000 or src >> 24 == 127 or src == 0x0A0000FF
    if ip.dst != OUR_IP or martian or ip.is_fragment or ip.protocol != IPPROTO_TCP:
        return None
    return ip.src, ip.dst, bytes(payload)


def stack_decision(frame: bytes) -> tuple[tuple[int, int, bytes] | None, int]:
    stack = make_stack()
    seen: list[tuple[int, int, bytes]] = []
    stack.tcp.receive = lambda src, dst, seg, now: seen.append((src, dst, bytes(seg)))  # type: ignore[method-assign]
    stack.receive_frame(frame, 0.0)
    assert len(seen) <= 1
    drops = sum(v for k, v in stack.counters.items() if "_drop_" in k)
    return (seen[0] if seen else None), drops


def test_a_valid_frame_reaches_tcp_trimmed_of_padding() -> None:
    got, drops = stack_decision(VALID + bytes(7))
    assert got == (PEER_IP, OUR_IP, SEGMENT)
    assert drops == 0


@settings(max_examples=400, deadline=None)
@given(
    changes=st.lists(st.tuples(st.integers(0, 33), st.integers(0, 255)), min_size=1, max_size=3),
    cut=st.integers(0, 8),
    refresh=st.booleans(),
)
def test_changed_headers_are_decided_as_the_layered_parsers_decide(
    changes: list[tuple[int, int]], cut: int, refresh: bool
) -> None:
    """Bytes of the Ethernet and IPv4 headers changed, the frame maybe cut short, and
    (``refresh``) the header checksum made right again, so the change itself is judged."""
    frame = bytearray(VALID)
    for offset, value in changes:
        frame[offset] = value
    if cut:
        del frame[-cut:]
    if refresh:
        frame[24:26] = b"\0\0"
        frame[24:26] = internet_checksum(frame[14:34]).to_bytes(2, "big")
    expected = layered_decision(bytes(frame))
    got, drops = stack_decision(bytes(frame))
    assert got == expected
    if expected is None:
        assert drops == 1
