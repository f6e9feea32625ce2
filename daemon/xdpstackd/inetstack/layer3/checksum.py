"""The internet checksum (RFC 1071) and the TCP/UDP pseudo-header (RFC 9293 3.1).

Summing 16-bit words through ``memoryview.cast("H")`` is the fastest pure-Python way:
it sums in native (little-endian) order, and one's-complement sums are byte-order
independent (RFC 1071 2.B), so we swap the folded result once at the end.
"""

from __future__ import annotations

import sys

_LITTLE = sys.byteorder == "little"


def ones_complement_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The folded 16-bit one's-complement sum of ``data`` (network order), plus ``initial``."""
    mv = memoryview(data)
    n = len(mv)
    if n & 1:
        total = sum(mv[: n - 1].cast("H")) if n > 1 else 0
        last = mv[n - 1]
        total += last if _LITTLE else last << 8
    else:
        total = sum(mv.cast("H")) if n else 0
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    if _LITTLE:
        total = ((total & 0xFF) << 8) | (total >> 8)
    total += initial
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The value to put in a checksum field: the complement of the folded sum."""
    return ~ones_complement_sum(data, initial) & 0xFFFF


def pseudo_header_sum(src: int, dst: int, protocol: int, length: int) -> int:
    """Folded sum of the IPv4 pseudo-header (src, dst, zero, protocol, L4 length)."""
    total = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + protocol + length
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total
