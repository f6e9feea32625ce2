"""ICMP echo: parse/build, checksum, the reply to a request, fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xdpstackd.inetstack.errors import ChecksumError, ParseError
from xdpstackd.inetstack.layer3.checksum import internet_checksum
from xdpstackd.inetstack.layer3.icmp import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    IcmpEcho,
    build_icmp_echo,
    echo_reply_for,
    parse_icmp,
    parse_icmp_echo,
)

DATA = b"abcdefghijklmnopqrstuvwabcdefghi"  # Windows ping's 32-byte payload
# id 1, seq 0x21; checksums 0x4d3a / 0x553a (naive RFC 1071 sum, cross-checked with scapy).
ECHO_REQUEST = bytes.fromhex("08004d3a00010021") + DATA
ECHO_REPLY = bytes.fromhex("0000553a00010021") + DATA

u16 = st.integers(0, 0xFFFF)


def test_known_echo_request_parses() -> None:
    assert parse_icmp_echo(ECHO_REQUEST) == IcmpEcho(ICMP_ECHO_REQUEST, 0, 1, 0x21, DATA)


def test_known_echo_request_is_built_byte_for_byte() -> None:
    assert build_icmp_echo(ICMP_ECHO_REQUEST, 1, 0x21, DATA) == ECHO_REQUEST


def test_reply_for_the_known_request_is_the_known_reply() -> None:
    assert echo_reply_for(parse_icmp_echo(ECHO_REQUEST)) == ECHO_REPLY


def test_parse_icmp_returns_type_code_and_a_view_of_the_rest() -> None:
    type_, code, rest = parse_icmp(ECHO_REQUEST)
    assert (type_, code) == (ICMP_ECHO_REQUEST, 0)
    assert isinstance(rest, memoryview) and rest.obj is ECHO_REQUEST
    assert bytes(rest) == ECHO_REQUEST[4:]


def test_other_types_parse_but_are_not_echo() -> None:
    unreachable = bytearray(b"\x03\x01\x00\x00" + bytes(4) + b"original datagram")
    unreachable[2:4] = internet_checksum(unreachable).to_bytes(2, "big")
    type_, code, _ = parse_icmp(unreachable)
    assert (type_, code) == (3, 1)
    with pytest.raises(ParseError) as exc:
        parse_icmp_echo(unreachable)
    assert exc.value.reason == "not_echo"


def test_every_truncation_raises_parse_error() -> None:
    for length in range(len(ECHO_REQUEST)):
        with pytest.raises(ParseError) as exc:
            parse_icmp_echo(ECHO_REQUEST[:length])
        if length < 8:
            assert exc.value.reason == "truncated"


@pytest.mark.parametrize("index", range(len(ECHO_REQUEST)))
def test_any_corrupted_byte_fails_the_checksum(index: int) -> None:
    corrupted = bytearray(ECHO_REQUEST)
    corrupted[index] ^= 0x10
    with pytest.raises(ChecksumError) as exc:
        parse_icmp(corrupted)
    assert exc.value.reason == "bad_checksum"


def test_checksum_verification_can_be_skipped() -> None:
    corrupted = bytearray(ECHO_REQUEST)
    corrupted[-1] ^= 0xFF
    echo = parse_icmp_echo(corrupted, verify_checksum=False)
    assert echo.data[-1] == DATA[-1] ^ 0xFF


def test_reply_keeps_an_odd_length_payload_intact() -> None:
    request = parse_icmp_echo(build_icmp_echo(ICMP_ECHO_REQUEST, 7, 9, b"odd"))
    reply = parse_icmp_echo(echo_reply_for(request))
    assert reply == IcmpEcho(ICMP_ECHO_REPLY, 0, 7, 9, b"odd")


def test_no_reply_to_a_reply() -> None:
    with pytest.raises(ValueError):
        echo_reply_for(parse_icmp_echo(ECHO_REPLY))


@given(
    st.sampled_from([ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY]),
    u16,
    u16,
    st.binary(max_size=200),
    st.integers(0, 255),
)
def test_build_then_parse_gives_back_the_fields(
    type_: int, identifier: int, sequence: int, data: bytes, code: int
) -> None:
    message = build_icmp_echo(type_, identifier, sequence, data, code)
    assert parse_icmp_echo(message) == IcmpEcho(type_, code, identifier, sequence, data)


@given(u16, u16, st.binary(max_size=200))
def test_reply_echoes_identifier_sequence_and_data(
    identifier: int, sequence: int, data: bytes
) -> None:
    request = IcmpEcho(ICMP_ECHO_REQUEST, 0, identifier, sequence, data)
    reply = parse_icmp_echo(echo_reply_for(request))
    assert reply == IcmpEcho(ICMP_ECHO_REPLY, 0, identifier, sequence, data)


@given(st.binary(max_size=64), st.booleans())
def test_random_bytes_parse_or_raise_parse_error(data: bytes, verify: bool) -> None:
    for parser in (parse_icmp, parse_icmp_echo):
        try:
            parser(data, verify_checksum=verify)
        except ParseError:
            pass
