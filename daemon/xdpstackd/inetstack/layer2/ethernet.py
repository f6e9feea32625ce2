"""Ethernet II framing: the 14-byte header in front of every frame we receive or send.

Parsing is on the per-packet path, so it unpacks the header with one precompiled
``struct`` call and hands the payload back as a ``memoryview`` (no copy). Only the two
MAC addresses are materialised as ``bytes``, because the rest of the stack keys ARP and
neighbour state on them.

802.1Q-tagged frames are not unwrapped: they come back with ``ethertype ==
ETHERTYPE_VLAN`` and the caller drops them (the XDP program only steers untagged
traffic to us). Frames are built without padding to the 60-byte minimum; the NIC pads
short frames on transmit, and a receiver trims padding by the IPv4 total length.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from xdpstackd.inetstack.errors import ParseError

ETH_HEADER_LEN = 14
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_ARP = 0x0806
ETHERTYPE_VLAN = 0x8100
BROADCAST_MAC = b"\xff" * 6

_HDR = struct.Struct("!6s6sH")
_HEX = frozenset("0123456789abcdefABCDEF")


class EthernetHeader(NamedTuple):
    dst: bytes
    src: bytes
    ethertype: int


def parse_ethernet(
    frame: bytes | bytearray | memoryview,
) -> tuple[EthernetHeader, memoryview]:
    """Split ``frame`` into its header and a zero-copy view of the payload.

    Raises ``ParseError("truncated")`` when the frame is shorter than a header.
    """
    mv = memoryview(frame)
    if len(mv) < ETH_HEADER_LEN:
        raise ParseError("truncated", f"{len(mv)} bytes, an Ethernet header needs 14")
    dst, src, ethertype = _HDR.unpack_from(mv)
    return EthernetHeader(dst, src, ethertype), mv[ETH_HEADER_LEN:]


def build_ethernet(
    dst: bytes,
    src: bytes,
    ethertype: int,
    payload: bytes | bytearray | memoryview,
) -> bytes:
    """Serialise a frame: header followed by ``payload`` (not padded, see the module doc)."""
    if len(dst) != 6 or len(src) != 6:
        raise ValueError(f"MAC addresses are 6 bytes, got dst={dst!r} src={src!r}")
    buf = bytearray(ETH_HEADER_LEN + len(payload))
    _HDR.pack_into(buf, 0, dst, src, ethertype)
    buf[ETH_HEADER_LEN:] = payload
    return bytes(buf)


def mac_to_str(mac: bytes) -> str:
    """``b"\\x02\\0\\0\\0\\0\\x01"`` -> ``"02:00:00:00:00:01"`` (lower case)."""
    if len(mac) != 6:
        raise ValueError(f"a MAC address is 6 bytes, got {len(mac)}: {mac!r}")
    return bytes(mac).hex(":")


def mac_from_str(text: str) -> bytes:
    """``"02:00:00:00:00:01"`` (or ``-`` separated, either case) -> 6 bytes."""
    if not isinstance(text, str):
        raise ValueError(f"a MAC address string is expected, got {type(text).__name__}")
    sep = "-" if "-" in text else ":"
    parts = text.split(sep)
    if len(parts) != 6 or any(len(p) != 2 or not _HEX.issuperset(p) for p in parts):
        raise ValueError(
            f"invalid MAC address {text!r}: expected six two-digit hex groups "
            f"separated by ':' like '02:00:00:00:00:01'"
        )
    return bytes(int(p, 16) for p in parts)
