"""TCP header and options: a known SYN, round trips, malformed options, fuzzing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from xdpstackd.inetstack.errors import ChecksumError, ParseError
from xdpstackd.inetstack.layer2.ethernet import parse_ethernet
from xdpstackd.inetstack.layer3.checksum import internet_checksum, pseudo_header_sum
from xdpstackd.inetstack.layer3.ipv4 import parse_ipv4
from xdpstackd.inetstack.layer4.tcp.header import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    TcpHeader,
    TcpOptions,
    build_options,
    build_tcp,
    parse_tcp,
)
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

SRC_IP = 0x0A000001  # 10.0.0.1
DST_IP = 0x0A000002  # 10.0.0.2

# A Linux-style SYN 10.0.0.1:41668 -> 10.0.0.2:80 with MSS 1460, SACK-permitted,
# timestamps (875551, 0), NOP, window scale 7. IPv4 checksum 0x0a74, TCP checksum 0x3618,
# both computed with a naive RFC 1071 sum and cross-checked with scapy 2.7.0.
SYN_FRAME = bytes.fromhex(
    "020000000002" "020000000001" "0800"  # Ethernet: dst, src, IPv4
    "4500003c1c4640004006" "0a74" "0a000001" "0a000002"  # IPv4, DF, TTL 64, TCP
    "a2c40050" "3ad1c8e2" "00000000" "a002" "faf0" "3618" "0000"  # TCP, offset 10, SYN
    "020405b4" "0402" "080a000d5c1f00000000" "01" "030307"  # MSS, SACK-perm, TS, NOP, WS
)  # fmt: skip
SYN_SEGMENT = SYN_FRAME[34:]

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 2**32 - 1)


def parse_frame(frame: bytes) -> tuple[TcpHeader, memoryview]:
    _eth, packet = parse_ethernet(frame)
    ip, segment = parse_ipv4(packet)
    return parse_tcp(segment, ip.src, ip.dst)


def raw_segment(options: bytes, payload: bytes = b"", flags: int = SYN) -> bytes:
    """A segment carrying ``options`` verbatim, with a correct checksum."""
    assert len(options) % 4 == 0 and len(options) <= 40
    header_length = 20 + len(options)
    buf = bytearray(
        struct.pack("!HHIIBBHHH", 1234, 80, 1, 0, (header_length // 4) << 4, flags, 1000, 0, 0)
        + options
        + payload
    )
    csum = internet_checksum(buf, pseudo_header_sum(SRC_IP, DST_IP, 6, len(buf)))
    struct.pack_into("!H", buf, 16, csum)
    return bytes(buf)


def parse_options(options: bytes) -> TcpOptions | None:
    header, _ = parse_tcp(raw_segment(options), SRC_IP, DST_IP)
    return header.options


# --- known answer -------------------------------------------------------------------


def test_known_syn_frame_parses_every_field() -> None:
    header, payload = parse_frame(SYN_FRAME)
    assert (header.src_port, header.dst_port) == (41668, 80)
    assert header.seq_num == SeqNumber(0x3AD1C8E2)
    assert header.ack_num == SeqNumber(0)
    assert header.flags == SYN and header.syn and not header.ack
    assert header.window == 64240
    assert header.checksum == 0x3618
    assert header.header_length == 40
    assert header.urgent == 0
    assert header.options == TcpOptions(
        mss=1460, sack_permitted=True, timestamps=(875551, 0), window_scale=7
    )
    assert len(payload) == 0


def test_known_syn_segment_is_rebuilt_byte_for_byte() -> None:
    header, _ = parse_tcp(SYN_SEGMENT, SRC_IP, DST_IP)
    assert build_tcp(header, b"", SRC_IP, DST_IP) == SYN_SEGMENT


def test_known_syn_options_are_in_linux_order() -> None:
    opts = TcpOptions(mss=1460, sack_permitted=True, timestamps=(875551, 0), window_scale=7)
    assert build_options(opts) == SYN_SEGMENT[20:40]


def test_known_syn_fails_checksum_against_the_wrong_addresses() -> None:
    with pytest.raises(ChecksumError):
        parse_tcp(SYN_SEGMENT, SRC_IP, DST_IP + 1)
    header, _ = parse_tcp(SYN_SEGMENT, SRC_IP, DST_IP + 1, verify_checksum=False)
    assert header.src_port == 41668


def test_payload_is_a_zero_copy_view() -> None:
    segment = raw_segment(b"", payload=b"hello", flags=PSH | ACK)
    _, payload = parse_tcp(segment, SRC_IP, DST_IP)
    assert isinstance(payload, memoryview)
    assert payload.obj is segment
    assert payload == b"hello"


def test_segment_without_options_parses_options_as_none() -> None:
    header, _ = parse_tcp(raw_segment(b"", flags=ACK), SRC_IP, DST_IP)
    assert header.options is None
    assert header.header_length == 20


# --- truncation, bad checksums, fuzzing --------------------------------------------


def test_every_truncation_of_the_known_frame_raises_parse_error() -> None:
    for length in range(len(SYN_FRAME)):
        with pytest.raises(ParseError):
            parse_frame(SYN_FRAME[:length])


def test_every_truncation_of_the_segment_names_the_reason() -> None:
    for length in range(20):
        with pytest.raises(ParseError) as exc:
            parse_tcp(SYN_SEGMENT[:length], SRC_IP, DST_IP)
        assert exc.value.reason == "truncated"
    for length in range(20, 40):
        with pytest.raises(ParseError) as exc:
            parse_tcp(SYN_SEGMENT[:length], SRC_IP, DST_IP)
        assert exc.value.reason == "bad_data_offset"


def test_data_offset_below_five_words_is_rejected() -> None:
    segment = bytearray(raw_segment(b""))
    segment[12] = 4 << 4
    with pytest.raises(ParseError) as exc:
        parse_tcp(segment, SRC_IP, DST_IP, verify_checksum=False)
    assert exc.value.reason == "bad_data_offset"


@pytest.mark.parametrize("index", [i for i in range(len(SYN_SEGMENT)) if i != 12])
def test_any_corrupted_byte_fails_the_checksum(index: int) -> None:
    # Byte 12 is the data offset, whose corruption is caught as bad_data_offset first.
    corrupted = bytearray(SYN_SEGMENT)
    corrupted[index] ^= 0x01
    with pytest.raises(ChecksumError) as exc:
        parse_tcp(corrupted, SRC_IP, DST_IP)
    assert exc.value.reason == "bad_checksum"


@given(st.binary(max_size=80), u32, u32, st.booleans())
def test_random_bytes_parse_or_raise_parse_error(
    data: bytes, src: int, dst: int, verify: bool
) -> None:
    try:
        parse_tcp(data, src, dst, verify_checksum=verify)
    except ParseError:
        pass


@given(st.integers(0, 10).flatmap(lambda words: st.binary(min_size=4 * words, max_size=4 * words)))
def test_random_option_bytes_parse_or_raise_parse_error(options: bytes) -> None:
    try:
        parse_options(options)
    except ParseError as exc:
        assert exc.reason == "bad_option_length"


# --- options: parsing --------------------------------------------------------------


def test_eol_stops_parsing_and_the_rest_is_ignored() -> None:
    # MSS, EOL, then bytes that would be a malformed MSS if they were read.
    opts = parse_options(b"\x02\x04\x05\xb4" + b"\x00" + b"\x02\x09\xff")
    assert opts == TcpOptions(mss=1460)


def test_nops_are_skipped() -> None:
    assert parse_options(b"\x01\x01\x01\x03\x03\x05\x01\x01") == TcpOptions(window_scale=5)


def test_unknown_kinds_are_skipped_by_their_length() -> None:
    # Kind 30 (MPTCP) of length 6, kind 254 (experimental) of length 2, then wscale.
    options = b"\x1e\x06abcd" + b"\xfe\x02" + b"\x03\x03\x0e" + b"\x00"
    assert parse_options(options) == TcpOptions(window_scale=14)


def test_sack_blocks_parse_in_order() -> None:
    options = b"\x01\x01\x05\x12" + struct.pack("!IIII", 100, 200, 2**32 - 10, 5)
    assert parse_options(options) == TcpOptions(sack_blocks=((100, 200), (2**32 - 10, 5)))


def test_timestamps_parse_as_value_and_echo_reply() -> None:
    options = b"\x01\x01\x08\x0a" + struct.pack("!II", 0xDEADBEEF, 7)
    assert parse_options(options).timestamps == (0xDEADBEEF, 7)


@pytest.mark.parametrize(
    ("options", "case"),
    [
        (b"\x1e\x00\x00\x00", "unknown kind with length 0"),
        (b"\x1e\x01\x00\x00", "unknown kind with length 1"),
        (b"\x1e\x08\x00\x00", "length beyond the end of the options"),
        (b"\x01\x01\x01\x1e", "kind as the last byte, no length byte"),
        (b"\x02\x03\x05\x00", "MSS length 3"),
        (b"\x02\x05\x05\xb4\x00\x00\x00\x00", "MSS length 5"),
        (b"\x03\x04\x07\x00", "window scale length 4"),
        (b"\x03\x02\x00\x00", "window scale length 2"),
        (b"\x04\x03\x00\x00", "SACK-permitted length 3"),
        (b"\x05\x02\x00\x00", "SACK with no blocks"),
        (b"\x05\x09" + bytes(10), "SACK length 9"),
        (b"\x05\x0b" + bytes(10), "SACK length 11"),
        (b"\x08\x08" + bytes(6), "timestamps length 8"),
        (b"\x08\x0b" + bytes(10), "timestamps length 11"),
    ],
)
def test_malformed_option_length_is_rejected(options: bytes, case: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_options(options)
    assert exc.value.reason == "bad_option_length", case


# --- options: building -------------------------------------------------------------


def test_build_options_of_none_is_empty() -> None:
    assert build_options(None) == b""
    assert build_options(TcpOptions()) == b""


@pytest.mark.parametrize(
    ("opts", "expected"),
    [
        (TcpOptions(mss=536), "02040218"),
        (TcpOptions(sack_permitted=True), "01010402"),
        (TcpOptions(window_scale=0), "01030300"),
        (TcpOptions(timestamps=(1, 2)), "0101080a0000000100000002"),
    ],
)
def test_build_options_single_option_is_padded_to_four_bytes(
    opts: TcpOptions, expected: str
) -> None:
    assert build_options(opts).hex() == expected


def test_build_options_fills_exactly_forty_bytes() -> None:
    # Timestamps + three SACK blocks: 12 + 28 = 40, the most an ACK can carry.
    opts = TcpOptions(timestamps=(1, 2), sack_blocks=((1, 2), (3, 4), (5, 6)))
    assert len(build_options(opts)) == 40
    assert parse_options(build_options(opts)) == opts


def test_build_options_refuses_more_than_forty_bytes() -> None:
    opts = TcpOptions(timestamps=(1, 2), sack_blocks=((1, 2), (3, 4), (5, 6), (7, 8)))
    with pytest.raises(ValueError):
        build_options(opts)
    with pytest.raises(ValueError):
        build_options(
            TcpOptions(mss=1460, window_scale=7, sack_blocks=((1, 2), (3, 4), (5, 6), (7, 8)))
        )


# --- round trips -------------------------------------------------------------------

option_sets = st.builds(
    TcpOptions,
    mss=st.none() | u16,
    window_scale=st.none() | st.integers(0, 14),
    sack_permitted=st.booleans(),
    sack_blocks=st.lists(st.tuples(u32, u32), max_size=4).map(tuple),
    timestamps=st.none() | st.tuples(u32, u32),
)


@given(option_sets)
def test_build_options_is_a_multiple_of_four_and_parses_back(opts: TcpOptions) -> None:
    try:
        encoded = build_options(opts)
    except ValueError:
        assume(False)
    assert len(encoded) % 4 == 0 and len(encoded) <= 40
    parsed = parse_options(encoded)
    assert parsed == (opts if encoded else None)


@given(
    src_port=u16,
    dst_port=u16,
    seq=u32,
    ack=u32,
    flags=st.integers(0, 0xFF),
    window=u16,
    urgent=u16,
    opts=st.none() | option_sets,
    payload=st.binary(max_size=100),
    src_ip=u32,
    dst_ip=u32,
)
def test_build_then_parse_gives_back_the_fields(
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    urgent: int,
    opts: TcpOptions | None,
    payload: bytes,
    src_ip: int,
    dst_ip: int,
) -> None:
    try:
        encoded_opts = build_options(opts)
    except ValueError:
        assume(False)
    header = TcpHeader(
        src_port, dst_port, SeqNumber(seq), SeqNumber(ack), flags, window, opts, urgent
    )
    segment = build_tcp(header, payload, src_ip, dst_ip)
    parsed, parsed_payload = parse_tcp(segment, src_ip, dst_ip)
    assert (parsed.src_port, parsed.dst_port) == (src_port, dst_port)
    assert (parsed.seq_num, parsed.ack_num) == (SeqNumber(seq), SeqNumber(ack))
    assert (parsed.flags, parsed.window, parsed.urgent) == (flags, window, urgent)
    assert parsed.header_length == 20 + len(encoded_opts)
    assert parsed.options == (opts if encoded_opts else None)
    assert bytes(parsed_payload) == payload


def test_flag_string_is_tcpdump_style() -> None:
    def flags_of(flags: int) -> str:
        return TcpHeader(1, 2, SeqNumber(0), SeqNumber(0), flags, 0).flag_string()

    assert flags_of(SYN) == "S"
    assert flags_of(SYN | ACK) == "S."
    assert flags_of(FIN | ACK) == "F."
    assert flags_of(PSH | ACK) == "P."
    assert flags_of(RST) == "R"
    assert flags_of(0) == "none"


def test_options_repr_shows_zero_window_scale() -> None:
    assert "window_scale=0" in repr(TcpOptions(window_scale=0))
