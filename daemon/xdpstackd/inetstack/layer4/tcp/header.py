"""TCP header and options (RFC 9293 3.1, RFC 7323, RFC 2018): parse and build.

Parsing is bounds-checked: anything truncated or inconsistent raises ``ParseError``
with a reason token (the caller counts it as ``tcp_drop_<reason>``). Unknown option
kinds are skipped by their length; an option whose length is impossible is malformed.
"""

from __future__ import annotations

import struct

from xdpstackd.inetstack.errors import ChecksumError, ParseError
from xdpstackd.inetstack.layer3.checksum import (
    as_buffer,
    fold_sum,
    ones_complement_sum,
    pseudo_header_sum,
    raw_sum,
)
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

IPPROTO_TCP = 6
TCP_MIN_HEADER_LEN = 20

FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80

OPT_EOL = 0
OPT_NOP = 1
OPT_MSS = 2
OPT_WSCALE = 3
OPT_SACK_PERMITTED = 4
OPT_SACK = 5
OPT_TIMESTAMPS = 8

MAX_WINDOW_SCALE = 14  # RFC 7323 2.3

_HDR = struct.Struct("!HHIIBBHHH")
_TWO_U32 = struct.Struct("!II")
_DATA_OFFSET_5 = 0x5000  # the data offset byte of an option-less header, as the high half
_FLAG_NAMES = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"))


class TcpOptions:
    """The options we understand; anything else was skipped while parsing."""

    __slots__ = ("mss", "sack_blocks", "sack_permitted", "timestamps", "window_scale")

    def __init__(
        self,
        mss: int | None = None,
        window_scale: int | None = None,
        sack_permitted: bool = False,
        sack_blocks: tuple[tuple[int, int], ...] = (),
        timestamps: tuple[int, int] | None = None,
    ) -> None:
        self.mss = mss
        self.window_scale = window_scale
        self.sack_permitted = sack_permitted
        self.sack_blocks = sack_blocks
        self.timestamps = timestamps

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TcpOptions) and all(
            getattr(self, s) == getattr(other, s) for s in self.__slots__
        )

    def __repr__(self) -> str:
        # Not a truthiness test: mss=0 and window_scale=0 are values worth seeing.
        parts = [
            f"{s}={v!r}"
            for s in self.__slots__
            if (v := getattr(self, s)) is not None and v is not False and v != ()
        ]
        return f"TcpOptions({', '.join(parts)})"


class TcpHeader:
    """A TCP header. ``options`` is None when the segment carried none."""

    __slots__ = (
        "ack_num",
        "checksum",
        "dst_port",
        "flags",
        "header_length",
        "options",
        "seq_num",
        "src_port",
        "urgent",
        "window",
    )

    def __init__(
        self,
        src_port: int,
        dst_port: int,
        seq_num: SeqNumber,
        ack_num: SeqNumber,
        flags: int,
        window: int,
        options: TcpOptions | None = None,
        urgent: int = 0,
        checksum: int = 0,
        header_length: int = TCP_MIN_HEADER_LEN,
    ) -> None:
        self.src_port = src_port
        self.dst_port = dst_port
        self.seq_num = seq_num
        self.ack_num = ack_num
        self.flags = flags
        self.window = window
        self.options = options
        self.urgent = urgent
        self.checksum = checksum
        self.header_length = header_length

    @property
    def syn(self) -> bool:
        return bool(self.flags & SYN)

    @property
    def ack(self) -> bool:
        return bool(self.flags & ACK)

    @property
    def fin(self) -> bool:
        return bool(self.flags & FIN)

    @property
    def rst(self) -> bool:
        return bool(self.flags & RST)

    @property
    def psh(self) -> bool:
        return bool(self.flags & PSH)

    @property
    def urg(self) -> bool:
        return bool(self.flags & URG)

    def flag_string(self) -> str:
        """tcpdump-style flags: ``S``, ``S.``, ``P.``, ``F.``, ``R``, ``.``."""
        return "".join(ch for bit, ch in _FLAG_NAMES if self.flags & bit) or "none"

    def __repr__(self) -> str:
        return (
            f"TcpHeader({self.src_port}->{self.dst_port} [{self.flag_string()}] "
            f"seq={self.seq_num.value} ack={self.ack_num.value} win={self.window} "
            f"{self.options!r})"
        )


def _parse_options(buf: memoryview) -> TcpOptions:
    opts = TcpOptions()
    i = 0
    n = len(buf)
    while i < n:
        kind = buf[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= n:
            raise ParseError("bad_option_length", f"option {kind} has no length byte")
        length = buf[i + 1]
        if length < 2 or i + length > n:
            raise ParseError("bad_option_length", f"option {kind} length {length}")
        if kind == OPT_MSS:
            if length != 4:
                raise ParseError("bad_option_length", f"MSS length {length}")
            opts.mss = (buf[i + 2] << 8) | buf[i + 3]
        elif kind == OPT_WSCALE:
            if length != 3:
                raise ParseError("bad_option_length", f"window scale length {length}")
            opts.window_scale = buf[i + 2]
        elif kind == OPT_SACK_PERMITTED:
            if length != 2:
                raise ParseError("bad_option_length", f"SACK-permitted length {length}")
            opts.sack_permitted = True
        elif kind == OPT_SACK:
            if (length - 2) % 8 or length == 2:
                raise ParseError("bad_option_length", f"SACK length {length}")
            blocks = []
            for j in range(i + 2, i + length, 8):
                left, right = _TWO_U32.unpack_from(buf, j)
                blocks.append((left, right))
            opts.sack_blocks = tuple(blocks)
        elif kind == OPT_TIMESTAMPS:
            if length != 10:
                raise ParseError("bad_option_length", f"timestamps length {length}")
            opts.timestamps = _TWO_U32.unpack_from(buf, i + 2)
        i += length
    return opts


def parse_tcp(
    segment: bytes | bytearray | memoryview,
    src_ip: int,
    dst_ip: int,
    verify_checksum: bool = True,
) -> tuple[TcpHeader, memoryview]:
    """Parse a TCP segment (header + payload) carried from ``src_ip`` to ``dst_ip``.

    Returns the header and a memoryview of the payload. Raises ``ChecksumError`` when
    the checksum (over the pseudo-header) does not verify, ``ParseError`` otherwise.
    """
    mv = memoryview(segment)
    n = len(mv)
    if n < TCP_MIN_HEADER_LEN:
        raise ParseError("truncated", f"{n} bytes, a TCP header needs {TCP_MIN_HEADER_LEN}")
    src_port, dst_port, seq, ack, off, flags, window, csum, urgent = _HDR.unpack_from(mv)
    header_length = (off >> 4) * 4
    if header_length < TCP_MIN_HEADER_LEN or header_length > n:
        raise ParseError("bad_data_offset", f"data offset {header_length} in {n} bytes")
    if verify_checksum:
        # the pseudo-header's words summed in place (below 2**32: no fold needed)
        pseudo = (src_ip >> 16) + (src_ip & 0xFFFF) + (dst_ip >> 16) + (dst_ip & 0xFFFF) + n
        if raw_sum(as_buffer(mv), n, pseudo + IPPROTO_TCP) != 0xFFFF:
            raise ChecksumError("bad_checksum")
    options = _parse_options(mv[TCP_MIN_HEADER_LEN:header_length]) if header_length > 20 else None
    header = TcpHeader(
        src_port,
        dst_port,
        SeqNumber(seq),
        SeqNumber(ack),
        flags,
        window,
        options,
        urgent,
        csum,
        header_length,
    )
    return header, mv[header_length:]


def build_options(opts: TcpOptions | None) -> bytes:
    """Options in the order Linux sends them, padded with NOPs to a 4-byte multiple."""
    if opts is None:
        return b""
    out = bytearray()
    if opts.mss is not None:
        out += struct.pack("!BBH", OPT_MSS, 4, opts.mss)
    if opts.sack_permitted and opts.timestamps is not None:
        out += struct.pack("!BBBBII", OPT_SACK_PERMITTED, 2, OPT_TIMESTAMPS, 10, *opts.timestamps)
    else:
        if opts.sack_permitted:
            out += bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2))
        if opts.timestamps is not None:
            out += struct.pack("!BBBBII", OPT_NOP, OPT_NOP, OPT_TIMESTAMPS, 10, *opts.timestamps)
    if opts.sack_blocks:
        out += bytes((OPT_NOP, OPT_NOP, OPT_SACK, 2 + 8 * len(opts.sack_blocks)))
        for left, right in opts.sack_blocks:
            out += struct.pack("!II", left, right)
    if opts.window_scale is not None:
        out += bytes((OPT_NOP, OPT_WSCALE, 3, opts.window_scale))
    while len(out) % 4:
        out.append(OPT_NOP)
    if len(out) > 40:
        raise ValueError(f"TCP options take {len(out)} bytes, at most 40 fit")
    return bytes(out)


def build_tcp_segment(
    src_port: int,
    dst_port: int,
    seq: int,
    ack: int,
    flags: int,
    window: int,
    payload: bytes | bytearray | memoryview,
    src_ip: int,
    dst_ip: int,
) -> bytes:
    """A segment without options, byte for byte what ``build_tcp`` makes of the same
    header: the established path's builder, so no ``TcpHeader`` and no second copy.

    The checksum is summed from the header fields as ints and the payload where it lies
    (the send buffer), so the payload is copied exactly once, into the result."""
    n = len(payload)
    total = TCP_MIN_HEADER_LEN + n
    s = (
        pseudo_header_sum(src_ip, dst_ip, IPPROTO_TCP, total)
        + src_port
        + dst_port
        + (seq >> 16)
        + (seq & 0xFFFF)
        + (ack >> 16)
        + (ack & 0xFFFF)
        + (_DATA_OFFSET_5 | flags)
        + window
    )
    s = raw_sum(as_buffer(payload), n, s) if n else fold_sum(s)
    header = _HDR.pack(src_port, dst_port, seq, ack, 0x50, flags, window, ~s & 0xFFFF, 0)
    return header + payload if n else header


def build_tcp(
    header: TcpHeader,
    payload: bytes | bytearray | memoryview,
    src_ip: int,
    dst_ip: int,
) -> bytes:
    """Serialise ``header`` + ``payload`` with a full checksum (never a partial one)."""
    opt_bytes = build_options(header.options)
    header_length = TCP_MIN_HEADER_LEN + len(opt_bytes)
    total = header_length + len(payload)
    buf = bytearray(total)
    _HDR.pack_into(
        buf,
        0,
        header.src_port,
        header.dst_port,
        header.seq_num.value,
        header.ack_num.value,
        (header_length // 4) << 4,
        header.flags,
        header.window,
        0,
        header.urgent,
    )
    if opt_bytes:
        buf[TCP_MIN_HEADER_LEN:header_length] = opt_bytes
    if payload:
        buf[header_length:] = payload
    csum = ~ones_complement_sum(buf, pseudo_header_sum(src_ip, dst_ip, IPPROTO_TCP, total))
    struct.pack_into("!H", buf, 16, csum & 0xFFFF)
    return bytes(buf)
