"""The internet checksum (RFC 1071) against known answers and a naive reference."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from xdpstackd.inetstack.layer3.checksum import (
    internet_checksum,
    ones_complement_sum,
    pseudo_header_sum,
)

u32 = st.integers(0, 2**32 - 1)


def naive_sum(data: bytes, initial: int = 0) -> int:
    """Word-by-word big-endian sum with end-around carry, as RFC 1071 describes it."""
    if len(data) % 2:
        data += b"\x00"
    total = initial
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_rfc1071_section3_example_sums_to_ddf2() -> None:
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_ipv4_header_example_checksum_is_b861() -> None:
    # The classic worked example (checksum field zeroed): 192.168.0.1 -> 192.168.0.199, UDP.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    filled = header[:10] + b"\xb8\x61" + header[12:]
    assert ones_complement_sum(filled) == 0xFFFF


def test_odd_length_pads_last_byte_as_high_order() -> None:
    assert ones_complement_sum(b"\x01") == 0x0100
    assert ones_complement_sum(b"\x01\x02\x03") == 0x0102 + 0x0300
    assert internet_checksum(b"\xab") == ~0xAB00 & 0xFFFF


def test_empty_data_sums_to_zero() -> None:
    assert ones_complement_sum(b"") == 0
    assert internet_checksum(b"") == 0xFFFF


def test_carries_wrap_around_into_the_low_bits() -> None:
    assert ones_complement_sum(b"\xff\xff\x00\x01") == 0x0001
    assert ones_complement_sum(b"\xff\xff", initial=1) == 0x0001
    assert ones_complement_sum(b"\xff\xff" * 1000) == 0xFFFF


def test_pseudo_header_sum_known_answer() -> None:
    # 10.0.0.1 -> 10.0.0.2, TCP, 40 bytes: 0a00 + 0001 + 0a00 + 0002 + 0006 + 0028.
    assert pseudo_header_sum(0x0A000001, 0x0A000002, 6, 40) == 0x1431


def test_pseudo_header_sum_folds_carries() -> None:
    s = pseudo_header_sum(0xFFFFFFFF, 0xFFFFFFFF, 6, 0xFFFF)
    assert s == naive_sum(struct.pack("!IIBBH", 0xFFFFFFFF, 0xFFFFFFFF, 0, 6, 0xFFFF))


@given(st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_sum_equals_naive_reference(data: bytes, initial: int) -> None:
    assert ones_complement_sum(data, initial) == naive_sum(data, initial)
    assert internet_checksum(data, initial) == ~naive_sum(data, initial) & 0xFFFF


@given(st.binary(max_size=300), st.integers(0, 7))
def test_sum_of_unaligned_memoryview_slice_equals_naive(data: bytes, offset: int) -> None:
    buf = bytearray(offset) + data
    assert ones_complement_sum(memoryview(buf)[offset:]) == naive_sum(data)


@given(u32, u32, st.integers(0, 255), st.integers(0, 0xFFFF))
def test_pseudo_header_sum_equals_naive_over_packed_bytes(
    src: int, dst: int, protocol: int, length: int
) -> None:
    packed = struct.pack("!IIBBH", src, dst, 0, protocol, length)
    assert pseudo_header_sum(src, dst, protocol, length) == naive_sum(packed)


@given(st.binary(max_size=200).map(lambda b: b[: len(b) & ~1]), st.integers(0, 0xFFFF))
def test_inserting_the_checksum_makes_the_sum_verify(data: bytes, initial: int) -> None:
    # A message with a zeroed checksum slot, then the slot filled: the receiver's sum is -0.
    message = bytearray(b"\x00\x00" + data)
    struct.pack_into("!H", message, 0, internet_checksum(message, initial))
    assert ones_complement_sum(message, initial) == 0xFFFF
