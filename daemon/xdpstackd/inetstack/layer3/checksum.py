"""The internet checksum (RFC 1071) and the TCP/UDP pseudo-header (RFC 9293 3.1).

The one's-complement sum of 16-bit words is the data, read as one big-endian integer,
modulo 0xFFFF (since 2**16 == 1 mod 0xFFFF, every word's place value folds to 1): one
``int.from_bytes`` and one ``%`` in C, several times faster than summing words in
Python. The only care needed is the two zeros of one's complement: a folded sum is 0
only when every word is 0, otherwise a multiple of 0xFFFF folds to 0xFFFF.
"""

from __future__ import annotations


def _py_ones_complement_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The folded 16-bit one's-complement sum of ``data`` (network order), plus ``initial``."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8  # an odd trailing byte is the high half of a zero-padded word
    value += initial
    total = value % 0xFFFF
    if total == 0 and value:
        return 0xFFFF
    return total


try:  # the same sum in C (``_checksum.c``), ~4x faster per segment; built at install
    from xdpstackd.inetstack._checksum import ffi as _ffi
    from xdpstackd.inetstack._checksum import lib as _lib
except ImportError:  # a source tree without the extension built: pure Python is exact too
    ones_complement_sum = _py_ones_complement_sum

    def raw_sum(data: bytes | bytearray | memoryview, length: int, initial: int) -> int:
        return _py_ones_complement_sum(data, initial)

    def as_buffer(data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
        return data
else:
    _c_sum = _lib.xdps_ones_complement_sum
    _from_buffer = _ffi.from_buffer
    #: The per-segment paths call these two directly, one Python frame less than
    #: ``ones_complement_sum``: ``raw_sum(as_buffer(data), len(data), initial)`` with
    #: ``initial`` below 2**32 is ``ones_complement_sum(data, initial)``.
    raw_sum = _c_sum
    as_buffer = _from_buffer

    def ones_complement_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
        """The folded 16-bit one's-complement sum of ``data`` (network order), plus
        ``initial`` (which may be any non-negative int below 2**32)."""
        if initial >> 32:
            initial = _py_ones_complement_sum(b"", initial)
        return _c_sum(_from_buffer(data), len(data), initial)


def internet_checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """The value to put in a checksum field: the complement of the folded sum."""
    return ~ones_complement_sum(data, initial) & 0xFFFF


def fold_sum(value: int) -> int:
    """A sum of 16-bit words below 2**32 folded to 16 bits with end-around carries: the
    same value ``ones_complement_sum`` gives for it (0 only when ``value`` is 0).

    Lets a header summed as ints in Python skip the call when there is no payload."""
    value = (value & 0xFFFF) + (value >> 16)
    return (value & 0xFFFF) + (value >> 16)


def pseudo_header_sum(src: int, dst: int, protocol: int, length: int) -> int:
    """Folded sum of the IPv4 pseudo-header (src, dst, zero, protocol, L4 length)."""
    total = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + protocol + length
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total
