"""IPv4: header parse/build, checksum, options, padding, fragments, address text."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xdpstackd.inetstack.errors import ChecksumError, ParseError
from xdpstackd.inetstack.layer2.ethernet import parse_ethernet
from xdpstackd.inetstack.layer3.checksum import internet_checksum
from xdpstackd.inetstack.layer3.ipv4 import (
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPV4_MIN_HEADER_LEN,
    Ipv4Header,
    build_ipv4,
    ip_from_str,
    ip_to_str,
    parse_ipv4,
)
from xdpstackd.inetstack.layer4.tcp.header import ACK, parse_tcp

# The IPv4 part of the SYN in test_tcp_header.py: 10.0.0.1 -> 10.0.0.2, id 0x1c46, DF,
# TTL 64, TCP, 60 bytes; checksum 0x0a74 (naive RFC 1071 sum, cross-checked with scapy).
SYN_PACKET = bytes.fromhex(
    "4500003c1c4640004006" "0a74" "0a000001" "0a000002"
    "a2c400503ad1c8e200000000a002faf036180000"
    "020405b40402080a000d5c1f0000000001030307"
)  # fmt: skip

# A bare ACK 10.0.0.2:80 -> 10.0.0.1:41668 (IP 40 bytes) in a 60-byte frame: 6 bytes of
# Ethernet padding follow the IPv4 total length. IPv4 checksum 0x0a87, TCP 0xb5b1.
PADDED_ACK_FRAME = bytes.fromhex(
    "020000000001" "020000000002" "0800"
    "450000281c4740004006" "0a87" "0a000002" "0a000001"
    "0050a2c4" "11223344" "3ad1c8e3" "5010" "faf0" "b5b1" "0000"
    "000000000000"
)  # fmt: skip

u32 = st.integers(0, 2**32 - 1)


def packet_with(
    *,
    ihl: int = 5,
    version: int = 4,
    total_length: int | None = None,
    frag: int = 0x4000,
    options: bytes = b"",
    payload: bytes = b"payload!",
) -> bytes:
    """A packet with arbitrary header fields and a correct header checksum."""
    header_length = 20 + len(options)
    if total_length is None:
        total_length = header_length + len(payload)
    header = bytearray(
        struct.pack(
            "!BBHHHBBHII",
            (version << 4) | ihl,
            0,
            total_length,
            0x1234,
            frag,
            64,
            IPPROTO_TCP,
            0,
            0x0A000001,
            0x0A000002,
        )
        + options
    )
    struct.pack_into("!H", header, 10, internet_checksum(header))
    return bytes(header) + payload


def test_known_syn_packet_header_fields() -> None:
    header, payload = parse_ipv4(SYN_PACKET)
    assert header == Ipv4Header(
        src=0x0A000001,
        dst=0x0A000002,
        protocol=IPPROTO_TCP,
        ttl=64,
        total_length=60,
        header_length=20,
        identification=0x1C46,
        dont_fragment=True,
        more_fragments=False,
        fragment_offset=0,
        tos=0,
    )
    assert not header.is_fragment
    assert bytes(payload) == SYN_PACKET[20:]


def test_known_syn_packet_is_rebuilt_byte_for_byte() -> None:
    rebuilt = build_ipv4(
        0x0A000001, 0x0A000002, IPPROTO_TCP, SYN_PACKET[20:], identification=0x1C46
    )
    assert rebuilt == SYN_PACKET


def test_classic_udp_header_example_verifies() -> None:
    # 192.168.0.1 -> 192.168.0.199, UDP, total length 115, checksum 0xb861.
    header_hex = "4500007300004000" "4011" "b861" "c0a80001" "c0a800c7"  # fmt: skip
    packet = bytes.fromhex(header_hex) + bytes(95)
    header, payload = parse_ipv4(packet)
    assert (header.src, header.dst) == (0xC0A80001, 0xC0A800C7)
    assert (header.protocol, header.total_length, len(payload)) == (17, 115, 95)


def test_payload_is_a_zero_copy_view() -> None:
    packet = bytearray(SYN_PACKET)
    _, payload = parse_ipv4(packet)
    assert isinstance(payload, memoryview)
    assert payload.obj is packet


def test_ethernet_padding_is_trimmed_by_total_length() -> None:
    _, packet = parse_ethernet(PADDED_ACK_FRAME)
    assert len(packet) == 46
    header, segment = parse_ipv4(packet)
    assert header.total_length == 40
    assert len(segment) == 20
    tcp, data = parse_tcp(segment, header.src, header.dst)  # checksum holds without padding
    assert tcp.flags == ACK and len(data) == 0


def test_options_are_skipped() -> None:
    # Router Alert (RFC 2113): kind 148, length 4, value 0.
    packet = packet_with(ihl=6, options=b"\x94\x04\x00\x00", payload=b"abc")
    header, payload = parse_ipv4(packet)
    assert header.header_length == 24
    assert bytes(payload) == b"abc"


def test_maximum_options_are_skipped() -> None:
    packet = packet_with(ihl=15, options=b"\x01" * 40, payload=b"xyz")
    header, payload = parse_ipv4(packet)
    assert header.header_length == 60
    assert bytes(payload) == b"xyz"


def test_more_fragments_flags_the_first_fragment() -> None:
    header, _ = parse_ipv4(packet_with(frag=0x2000))
    assert header.more_fragments and not header.dont_fragment
    assert header.fragment_offset == 0
    assert header.is_fragment


def test_nonzero_offset_flags_the_last_fragment_in_bytes() -> None:
    header, _ = parse_ipv4(packet_with(frag=185))  # 185 * 8 = 1480
    assert not header.more_fragments
    assert header.fragment_offset == 1480
    assert header.is_fragment


def test_dont_fragment_alone_is_not_a_fragment() -> None:
    header, _ = parse_ipv4(packet_with(frag=0x4000))
    assert header.dont_fragment and not header.is_fragment


def test_every_truncation_raises_parse_error_with_its_reason() -> None:
    for length in range(len(SYN_PACKET)):
        with pytest.raises(ParseError) as exc:
            parse_ipv4(SYN_PACKET[:length])
        expected = "truncated" if length < 20 else "bad_total_length"
        assert exc.value.reason == expected


def test_truncation_inside_options_is_a_bad_header_length() -> None:
    packet = packet_with(ihl=6, options=b"\x01\x01\x01\x00", payload=b"")
    for length in range(20, 24):
        with pytest.raises(ParseError) as exc:
            parse_ipv4(packet[:length])
        assert exc.value.reason == "bad_header_length"


@pytest.mark.parametrize("version", [0, 6, 15])
def test_wrong_version_is_rejected(version: int) -> None:
    with pytest.raises(ParseError) as exc:
        parse_ipv4(packet_with(version=version))
    assert exc.value.reason == "bad_version"


@pytest.mark.parametrize("ihl", [0, 4])
def test_ihl_below_five_is_rejected(ihl: int) -> None:
    with pytest.raises(ParseError) as exc:
        parse_ipv4(packet_with(ihl=ihl))
    assert exc.value.reason == "bad_header_length"


def test_ihl_beyond_the_packet_is_rejected() -> None:
    with pytest.raises(ParseError) as exc:
        parse_ipv4(packet_with(ihl=15, payload=b"short"))
    assert exc.value.reason == "bad_header_length"


@pytest.mark.parametrize("total_length", [0, 19, 23, 24 + 8 + 1, 0xFFFF])
def test_total_length_outside_header_and_bytes_present_is_rejected(total_length: int) -> None:
    packet = packet_with(ihl=6, options=bytes(4), total_length=total_length)
    with pytest.raises(ParseError) as exc:
        parse_ipv4(packet)
    assert exc.value.reason == "bad_total_length"


@pytest.mark.parametrize("index", range(20))
def test_any_corrupted_header_byte_fails_the_checksum(index: int) -> None:
    corrupted = bytearray(SYN_PACKET)
    corrupted[index] ^= 0x01 if index else 0x02  # byte 0: keep version 4, change the IHL
    with pytest.raises(ParseError) as exc:
        parse_ipv4(corrupted)
    if index not in (0, 2, 3):  # IHL and total length fail their own checks first
        assert isinstance(exc.value, ChecksumError)
        assert exc.value.reason == "bad_checksum"


def test_checksum_can_be_skipped_and_covers_only_the_header() -> None:
    corrupted = bytearray(SYN_PACKET)
    corrupted[8] = 1  # TTL
    header, _ = parse_ipv4(corrupted, verify_checksum=False)
    assert header.ttl == 1
    payload_corrupted = bytearray(SYN_PACKET)
    payload_corrupted[-1] ^= 0xFF
    parse_ipv4(payload_corrupted)


@given(st.binary(max_size=80), st.booleans())
def test_random_bytes_parse_or_raise_parse_error(data: bytes, verify: bool) -> None:
    try:
        parse_ipv4(data, verify_checksum=verify)
    except ParseError:
        pass


@given(st.integers(0x40, 0x4F), st.binary(max_size=80))
def test_random_version_4_headers_parse_or_raise_parse_error(first: int, rest: bytes) -> None:
    data = bytes([first]) + rest
    try:
        header, payload = parse_ipv4(data, verify_checksum=False)
    except ParseError:
        pass
    else:
        assert header.header_length + len(payload) == header.total_length <= len(data)


@given(
    src=u32,
    dst=u32,
    protocol=st.integers(0, 255),
    payload=st.binary(max_size=300),
    ttl=st.integers(0, 255),
    identification=st.integers(0, 0xFFFF),
    dont_fragment=st.booleans(),
    tos=st.integers(0, 255),
)
def test_build_then_parse_gives_back_the_fields(
    src: int,
    dst: int,
    protocol: int,
    payload: bytes,
    ttl: int,
    identification: int,
    dont_fragment: bool,
    tos: int,
) -> None:
    packet = build_ipv4(
        src,
        dst,
        protocol,
        payload,
        ttl=ttl,
        identification=identification,
        dont_fragment=dont_fragment,
        tos=tos,
    )
    header, parsed_payload = parse_ipv4(packet)
    assert header == Ipv4Header(
        src,
        dst,
        protocol,
        ttl,
        IPV4_MIN_HEADER_LEN + len(payload),
        IPV4_MIN_HEADER_LEN,
        identification,
        dont_fragment,
        False,
        0,
        tos,
    )
    assert bytes(parsed_payload) == payload


def test_build_wraps_identification_counter() -> None:
    header, _ = parse_ipv4(build_ipv4(1, 2, IPPROTO_ICMP, b"", identification=0x10001))
    assert header.identification == 1


def test_build_refuses_a_payload_over_the_total_length_limit() -> None:
    with pytest.raises(ValueError):
        build_ipv4(1, 2, IPPROTO_TCP, bytes(0xFFFF - 19))
    assert len(build_ipv4(1, 2, IPPROTO_TCP, bytes(0xFFFF - 20))) == 0xFFFF


def test_address_text_known_answers() -> None:
    assert ip_to_str(0x0A000001) == "10.0.0.1"
    assert ip_to_str(0) == "0.0.0.0"
    assert ip_to_str(0xFFFFFFFF) == "255.255.255.255"
    assert ip_from_str("192.168.0.199") == 0xC0A800C7


@given(u32)
def test_address_text_round_trip(ip: int) -> None:
    assert ip_from_str(ip_to_str(ip)) == ip


@pytest.mark.parametrize(
    "text",
    ["", "1.2.3", "1.2.3.4.5", "256.0.0.1", "01.2.3.4", "a.b.c.d", " 1.2.3.4", "1.2.3.-4"],
)
def test_ip_from_str_rejects_bad_text(text: str) -> None:
    with pytest.raises(ValueError, match="invalid IPv4 address"):
        ip_from_str(text)


@pytest.mark.parametrize("bad", [-1, 2**32, "10.0.0.1"])
def test_ip_to_str_rejects_non_addresses(bad: object) -> None:
    with pytest.raises(ValueError):
        ip_to_str(bad)  # type: ignore[arg-type]
