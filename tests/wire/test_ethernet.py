"""Ethernet II: header parse/build, zero-copy payloads, MAC address text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xdpstackd.inetstack.errors import ParseError
from xdpstackd.inetstack.layer2.ethernet import (
    BROADCAST_MAC,
    ETH_HEADER_LEN,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    ETHERTYPE_VLAN,
    EthernetHeader,
    build_ethernet,
    mac_from_str,
    mac_to_str,
    parse_ethernet,
)

# The head of a captured-style SYN (see test_tcp_header.py for the whole frame).
SYN_FRAME_HEAD = bytes.fromhex("020000000002" "020000000001" "0800" "4500003c")  # fmt: skip

macs = st.binary(min_size=6, max_size=6)


def test_known_frame_header_fields() -> None:
    header, payload = parse_ethernet(SYN_FRAME_HEAD)
    assert header == EthernetHeader(
        dst=b"\x02\x00\x00\x00\x00\x02", src=b"\x02\x00\x00\x00\x00\x01", ethertype=0x0800
    )
    assert header.ethertype == ETHERTYPE_IPV4
    assert bytes(payload) == bytes.fromhex("4500003c")


def test_payload_is_a_zero_copy_view_of_the_frame() -> None:
    frame = bytearray(SYN_FRAME_HEAD)
    _, payload = parse_ethernet(frame)
    assert isinstance(payload, memoryview)
    assert payload.obj is frame
    frame[ETH_HEADER_LEN] = 0x46
    assert payload[0] == 0x46


def test_macs_are_plain_bytes() -> None:
    header, _ = parse_ethernet(memoryview(SYN_FRAME_HEAD))
    assert type(header.dst) is bytes and type(header.src) is bytes


def test_every_truncated_header_raises_truncated() -> None:
    for length in range(ETH_HEADER_LEN):
        with pytest.raises(ParseError) as exc:
            parse_ethernet(SYN_FRAME_HEAD[:length])
        assert exc.value.reason == "truncated"


def test_header_only_frame_has_empty_payload() -> None:
    _, payload = parse_ethernet(SYN_FRAME_HEAD[:ETH_HEADER_LEN])
    assert len(payload) == 0


def test_vlan_tagged_frame_reports_the_tpid_as_ethertype() -> None:
    frame = BROADCAST_MAC + b"\x02" * 6 + b"\x81\x00" + b"\x00\x05\x08\x06"
    header, payload = parse_ethernet(frame)
    assert header.ethertype == ETHERTYPE_VLAN
    assert bytes(payload) == b"\x00\x05\x08\x06"


def test_build_known_arp_broadcast_header() -> None:
    frame = build_ethernet(BROADCAST_MAC, b"\x02\x00\x00\x00\x00\x01", ETHERTYPE_ARP, b"xy")
    assert frame.hex() == "ffffffffffff" "020000000001" "0806" "7879"  # fmt: skip


def test_build_accepts_memoryview_payload() -> None:
    frame = build_ethernet(BROADCAST_MAC, BROADCAST_MAC, ETHERTYPE_IPV4, memoryview(b"abc"))
    assert frame.endswith(b"abc") and len(frame) == ETH_HEADER_LEN + 3


@pytest.mark.parametrize("bad", [b"", b"\x00" * 5, b"\x00" * 7])
def test_build_rejects_wrong_length_macs(bad: bytes) -> None:
    with pytest.raises(ValueError):
        build_ethernet(bad, BROADCAST_MAC, ETHERTYPE_IPV4, b"")
    with pytest.raises(ValueError):
        build_ethernet(BROADCAST_MAC, bad, ETHERTYPE_IPV4, b"")


@given(macs, macs, st.integers(0, 0xFFFF), st.binary(max_size=1600))
def test_build_then_parse_gives_back_the_fields(
    dst: bytes, src: bytes, ethertype: int, payload: bytes
) -> None:
    header, parsed_payload = parse_ethernet(build_ethernet(dst, src, ethertype, payload))
    assert header == EthernetHeader(dst, src, ethertype)
    assert bytes(parsed_payload) == payload


@given(st.binary(max_size=64))
def test_random_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    try:
        _header, payload = parse_ethernet(data)
    except ParseError:
        assert len(data) < ETH_HEADER_LEN
    else:
        assert len(payload) == len(data) - ETH_HEADER_LEN


def test_mac_to_str_known_answer() -> None:
    assert mac_to_str(b"\x02\x00\x00\x00\x00\x01") == "02:00:00:00:00:01"
    assert mac_to_str(BROADCAST_MAC) == "ff:ff:ff:ff:ff:ff"


def test_mac_from_str_known_answers() -> None:
    assert mac_from_str("02:00:00:00:00:01") == b"\x02\x00\x00\x00\x00\x01"
    assert mac_from_str("AA:bb:CC:dd:EE:ff") == bytes.fromhex("aabbccddeeff")
    assert mac_from_str("aa-bb-cc-dd-ee-ff") == bytes.fromhex("aabbccddeeff")


@given(macs)
def test_mac_text_round_trip(mac: bytes) -> None:
    assert mac_from_str(mac_to_str(mac)) == mac


@pytest.mark.parametrize(
    "text",
    [
        "",
        "02:00:00:00:00",
        "02:00:00:00:00:01:02",
        "0g:00:00:00:00:01",
        "2:0:0:0:0:1",
        "02:00:00:00:00:001",
        " 02:00:00:00:00:01",
        "02:00:00-00:00:01",
        "020000000001",
        "+2:00:00:00:00:01",
        "٠٢:00:00:00:00:01",  # Arabic-Indic digits: int() would accept them
    ],
)
def test_mac_from_str_rejects_bad_text_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match="invalid MAC address"):
        mac_from_str(text)


def test_mac_from_str_rejects_non_strings() -> None:
    with pytest.raises(ValueError):
        mac_from_str(b"02:00:00:00:00:01")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [b"", b"\x00" * 5, b"\x00" * 7])
def test_mac_to_str_rejects_wrong_length(bad: bytes) -> None:
    with pytest.raises(ValueError):
        mac_to_str(bad)
