"""IPv4 (RFC 791): parse and build the header; addresses as host-order ints.

Every received packet goes through ``parse_ipv4``, so it does one precompiled ``struct``
unpack, checks the lengths that could make a later slice lie (version, IHL, total
length), verifies the header checksum, and returns the payload as a ``memoryview``
trimmed to ``total_length``. That trim is what removes Ethernet padding from short
frames (a 40-byte TCP ACK arrives in a 60-byte frame).

Options are skipped, not interpreted: nothing we do depends on them. Fragments are not
reassembled; they are flagged (``is_fragment``) so the caller can count and drop them.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import NamedTuple

from xdpstackd.inetstack.errors import ChecksumError, ParseError
from xdpstackd.inetstack.layer3.checksum import ones_complement_sum

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPV4_MIN_HEADER_LEN = 20
IPV4_MAX_TOTAL_LENGTH = 0xFFFF

_HDR = struct.Struct("!BBHHHBBHII")
_CSUM = struct.Struct("!H")
_DF = 0x4000
_MF = 0x2000
_OFFSET_MASK = 0x1FFF


class Ipv4Header(NamedTuple):
    src: int
    dst: int
    protocol: int
    ttl: int
    total_length: int
    header_length: int
    identification: int
    dont_fragment: bool
    more_fragments: bool
    fragment_offset: int  # bytes (the wire field is in 8-byte units)
    tos: int

    @property
    def is_fragment(self) -> bool:
        """True for any piece of a fragmented datagram (first, middle or last)."""
        return self.more_fragments or self.fragment_offset != 0


def parse_ipv4(
    packet: bytes | bytearray | memoryview,
    verify_checksum: bool = True,
) -> tuple[Ipv4Header, memoryview]:
    """Parse an IPv4 packet; return its header and a view of the payload.

    The payload is ``packet[header_length:total_length]``. Raises ``ParseError`` with
    reason ``truncated``, ``bad_version``, ``bad_header_length`` or ``bad_total_length``,
    and ``ChecksumError("bad_checksum")`` when the header checksum does not verify.
    """
    mv = memoryview(packet)
    n = len(mv)
    if n < IPV4_MIN_HEADER_LEN:
        raise ParseError("truncated", f"{n} bytes, an IPv4 header needs 20")
    vihl, tos, total_length, ident, frag, ttl, proto, _csum, src, dst = _HDR.unpack_from(mv)
    if vihl >> 4 != 4:
        raise ParseError("bad_version", f"version {vihl >> 4}")
    header_length = (vihl & 0x0F) * 4
    if header_length < IPV4_MIN_HEADER_LEN or header_length > n:
        raise ParseError("bad_header_length", f"IHL {header_length} bytes in {n} bytes")
    if total_length < header_length or total_length > n:
        raise ParseError(
            "bad_total_length",
            f"total length {total_length}, header {header_length}, {n} bytes present",
        )
    if verify_checksum and ones_complement_sum(mv[:header_length]) != 0xFFFF:
        raise ChecksumError("bad_checksum", "IPv4 header checksum")
    header = Ipv4Header(
        src,
        dst,
        proto,
        ttl,
        total_length,
        header_length,
        ident,
        bool(frag & _DF),
        bool(frag & _MF),
        (frag & _OFFSET_MASK) * 8,
        tos,
    )
    return header, mv[header_length:total_length]


def build_ipv4(
    src: int,
    dst: int,
    protocol: int,
    payload: bytes | bytearray | memoryview,
    *,
    ttl: int = 64,
    identification: int = 0,
    dont_fragment: bool = True,
    tos: int = 0,
) -> bytes:
    """Serialise a 20-byte header (no options, not fragmented) + ``payload``.

    ``identification`` is taken modulo 2**16 so callers can pass a running counter.
    """
    total_length = IPV4_MIN_HEADER_LEN + len(payload)
    if total_length > IPV4_MAX_TOTAL_LENGTH:
        raise ValueError(f"IPv4 total length {total_length} exceeds {IPV4_MAX_TOTAL_LENGTH}")
    buf = bytearray(total_length)
    _HDR.pack_into(
        buf,
        0,
        0x45,
        tos,
        total_length,
        identification & 0xFFFF,
        _DF if dont_fragment else 0,
        ttl,
        protocol,
        0,
        src,
        dst,
    )
    _CSUM.pack_into(buf, 10, ~ones_complement_sum(memoryview(buf)[:20]) & 0xFFFF)
    buf[IPV4_MIN_HEADER_LEN:] = payload
    return bytes(buf)


def ip_to_str(ip: int) -> str:
    """``0x0A000001`` -> ``"10.0.0.1"``."""
    if not isinstance(ip, int) or not 0 <= ip <= 0xFFFFFFFF:
        raise ValueError(f"an IPv4 address is an int in [0, 2**32), got {ip!r}")
    return f"{ip >> 24}.{(ip >> 16) & 0xFF}.{(ip >> 8) & 0xFF}.{ip & 0xFF}"


def ip_from_str(text: str) -> int:
    """``"10.0.0.1"`` -> ``0x0A000001``; strict dotted quad (no leading zeros, no spaces)."""
    if not isinstance(text, str):
        raise ValueError(f"an IPv4 address string is expected, got {type(text).__name__}")
    try:
        return int(ipaddress.IPv4Address(text))
    except ipaddress.AddressValueError as exc:
        raise ValueError(f"invalid IPv4 address {text!r}: {exc}") from None
