"""ICMP (RFC 792): enough to answer ping.

The stack answers echo requests addressed to it and ignores other ICMP types, so this
module parses the common 4-byte header (verifying the checksum, which covers the whole
message), decodes echo request/reply, and builds the reply for a request. Other
types (unreachable, time exceeded) are returned by ``parse_icmp`` for counting only.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from xdpstackd.inetstack.errors import ChecksumError, ParseError
from xdpstackd.inetstack.layer3.checksum import ones_complement_sum

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMP_MIN_LEN = 8  # type, code, checksum, and the 4-byte rest-of-header every type has

_HDR = struct.Struct("!BBH")
_ECHO = struct.Struct("!BBHHH")
_ECHO_REST = struct.Struct("!HH")
_CSUM = struct.Struct("!H")


class IcmpEcho(NamedTuple):
    type: int
    code: int
    identifier: int
    sequence: int
    data: bytes


def parse_icmp(
    message: bytes | bytearray | memoryview,
    verify_checksum: bool = True,
) -> tuple[int, int, memoryview]:
    """Return ``(type, code, view of the message after its first 4 bytes)``.

    Raises ``ParseError("truncated")`` under 8 bytes and ``ChecksumError`` when the
    checksum over the whole message does not verify.
    """
    mv = memoryview(message)
    n = len(mv)
    if n < ICMP_MIN_LEN:
        raise ParseError("truncated", f"{n} bytes, an ICMP message needs {ICMP_MIN_LEN}")
    if verify_checksum and ones_complement_sum(mv) != 0xFFFF:
        raise ChecksumError("bad_checksum", "ICMP checksum")
    type_, code, _csum = _HDR.unpack_from(mv)
    return type_, code, mv[4:]


def parse_icmp_echo(
    message: bytes | bytearray | memoryview,
    verify_checksum: bool = True,
) -> IcmpEcho:
    """Decode an echo request or reply; ``ParseError("not_echo")`` for any other type."""
    type_, code, rest = parse_icmp(message, verify_checksum)
    if type_ != ICMP_ECHO_REQUEST and type_ != ICMP_ECHO_REPLY:
        raise ParseError("not_echo", f"ICMP type {type_}")
    identifier, sequence = _ECHO_REST.unpack_from(rest)
    return IcmpEcho(type_, code, identifier, sequence, bytes(rest[4:]))


def build_icmp_echo(
    type_: int,
    identifier: int,
    sequence: int,
    data: bytes | bytearray | memoryview,
    code: int = 0,
) -> bytes:
    """Serialise an echo request/reply (8-byte header + ``data``) with its checksum."""
    buf = bytearray(ICMP_MIN_LEN + len(data))
    _ECHO.pack_into(buf, 0, type_, code, 0, identifier, sequence)
    buf[ICMP_MIN_LEN:] = data
    _CSUM.pack_into(buf, 2, ~ones_complement_sum(buf) & 0xFFFF)
    return bytes(buf)


def echo_reply_for(request: IcmpEcho) -> bytes:
    """The echo reply message for ``request`` (RFC 792: same id, sequence and data, code 0).

    Refuses anything but a request: answering a reply would let two stacks ping-pong.
    """
    if request.type != ICMP_ECHO_REQUEST:
        raise ValueError(f"only echo requests are answered, got ICMP type {request.type}")
    return build_icmp_echo(ICMP_ECHO_REPLY, request.identifier, request.sequence, request.data)
