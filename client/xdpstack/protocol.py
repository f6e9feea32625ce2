"""The wire format between ``xdpstackd`` and its clients (one Unix stream socket each).

Shared by the daemon's API server and the client library; pure functions on bytes, no
I/O. All integers are little-endian.

Hello (once, right after connecting)
    client -> daemon: ``HELLO`` = magic ``b"XDPS"``, u16 version, u16 flags (0): 8 bytes.
    daemon -> client: a ``HELLO`` frame whose payload is ``SERVER_HELLO`` (u16 version,
    u16 flags, u32 client id, u32 max payload) then ``SERVER_LIMITS`` (u32 max descriptors,
    u32 max pending tokens, u64 max bytes in pending pushes: the client's limits, 0 =
    none), or an ``ERROR`` frame (EPROTO for a bad magic, EPROTONOSUPPORT for another
    version, ECONNREFUSED when the daemon is full), after which the daemon closes the
    connection. Version 2 added ``SERVER_LIMITS``, :data:`F_QT` and :data:`F_NOREPLY`. The
    daemon still serves version 1 clients: its hello carries the client's version (a
    version 1 client ignores the limits after it, and never sets the new flags).

Frames (both directions, after the hello)
    ``HEADER`` = u32 length of the rest (8 + payload), u8 frame type, u8 op, u16 flags,
    u32 request id; then the payload. A payload larger than the receiver's maximum
    (:data:`DEFAULT_MAX_PAYLOAD` unless agreed otherwise) is an error: the daemon answers
    EMSGSIZE and closes that client. Header flags: :data:`F_STREAM`, :data:`F_END` (see
    "Replies in several frames"), :data:`F_QT` (see "Requests without a reply"); other
    bits are 0 and ignored.

Frame types
    REQUEST (client -> daemon, ``op`` says which call), REPLY (ok: a tagged value),
    ERROR (u32 errno + UTF-8 message), COMPLETION (asynchronous, request id 0; payload
    ``COMPLETION`` = u64 qt, u32 qd, u32 new_qd, u8 opcode, u8 flags, u16 errno, 4-byte
    IPv4 address, u16 port, then the popped data), HELLO (the daemon's answer to hello).

Request payloads (``qd`` is u32, an address is 4 bytes + u16 port)
    SOCKET: empty. BIND, CONNECT: qd, addr. LISTEN: qd, u32 backlog. PUSH: qd, data.
    POP: qd, u32 size (0: no limit; the daemon clamps to what one frame carries).
    ACCEPT, CLOSE, ABORT, SHUTDOWN, GETSOCKNAME, GETPEERNAME: qd.
    SETSOCKOPT: qd, u8 name length, ASCII name, tagged value. GETSOCKOPT: qd, name.
    Control ops (STATUS, CONNECTIONS, SHOW, STATS, STEERING, ABORT_CONN, CAPTURE): a JSON
    object (empty payload = ``{}``); the reply is a JSON value, possibly in several
    frames (below). They are for ``xdpstackctl``, never on the data path.

Requests without a reply (:data:`F_QT`)
    ACCEPT, CONNECT, PUSH and POP come in two forms. Without ``F_QT`` (version 1's): the
    daemon answers with a REPLY carrying the queue token it chose (INT), or an ERROR when
    the call fails at once; the token's COMPLETION follows that reply. With ``F_QT`` in
    the REQUEST's flags, the payload starts with a u64 queue token the *client* chose
    (then the payload above) and there is no reply at all: the only answer is that
    token's COMPLETION, carrying the errno when the call fails at once (EBADF, ENOTCONN,
    EMFILE, ENOBUFS for the client's limits...). Only a request that cannot be decoded
    gets an ERROR frame (with its request id; 0 by convention for these). This is the
    data path: a client pushes and pops without waiting for the daemon, which answers
    with one frame per operation. The client keeps its tokens apart from the daemon's
    (the library uses values from 2**63 up) and knows its limits from ``SERVER_LIMITS``:
    where a limit could refuse a call, it uses the replied form, so that the refusal
    comes back at once.

    A PUSH may add :data:`F_LAZY`: the client does not wait for it, so its (successful)
    COMPLETION goes out with the session's next frame -- typically a pop's data -- or
    after a millisecond, instead of waking the client on its own.

    CLOSE, ABORT and SETSOCKOPT with :data:`F_NOREPLY` get no reply either (the payload
    as without it); a failure is counted by the daemon, not reported. For calls that
    cannot fail as the client makes them (closing a descriptor it holds, TCP_NODELAY on
    or off), so that they cost no wait.

Tagged values (REPLY payloads, SETSOCKOPT values)
    u8 tag, then: NONE nothing; INT i64; FLOAT f64; ADDR 4 bytes + u16; JSON / STR UTF-8.

Replies in several frames
    A control reply can outgrow one frame (CONNECTIONS carries every connection's four
    control-block components, over 1 KB each). A client that can read such a reply says
    so with :data:`F_STREAM` in its REQUEST's flags. A reply whose tagged value is larger
    than the max payload then goes as REPLY frames (same op and request id) flagged
    ``F_STREAM``, the last one ``F_STREAM | F_END``; their payloads, concatenated, are
    the tagged value (:func:`reply_frames`; a reply that fits goes as one ordinary REPLY
    frame either way). The daemon writes them back to back (a reader still takes any
    COMPLETION frame between them as it comes). Without the request flag, or past the
    daemon's limit for one reply, the answer is an ERROR EMSGSIZE and the connection
    stays usable. (CAPTURE's reply is never split: its ``F_STREAM`` frames, after its
    first REPLY, are pcap records; see :mod:`xdpstack.ctl_pcap`.)

Decoding is total: any malformed input raises :class:`ProtocolError` (with an ``errno``
the daemon can answer with) and nothing else.
"""

from __future__ import annotations

import enum
import errno as _errno
import json
import socket as _socket
import struct
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 2
#: The oldest client version the daemon still serves (version 1 clients never set F_QT or
#: F_NOREPLY and ignore SERVER_LIMITS).
MIN_PROTOCOL_VERSION = 1
MAGIC = b"XDPS"

#: Most data bytes one PUSH request or POP completion carries.
MAX_DATA = 1 << 20
#: Room in a frame's payload beyond its data (the largest fixed part is a completion's).
PAYLOAD_OVERHEAD = 64
#: Largest payload either side accepts unless the hello says otherwise.
DEFAULT_MAX_PAYLOAD = MAX_DATA + PAYLOAD_OVERHEAD

HELLO = struct.Struct("<4sHH")  # magic, version, flags
SERVER_HELLO = struct.Struct("<HHII")  # version, flags, client id, max payload
SERVER_LIMITS = struct.Struct("<IIQ")  # max descriptors, max pending, max push bytes
HEADER = struct.Struct("<IBBHI")  # length of the rest, frame type, op, flags, request id
HEADER_SIZE = HEADER.size  # 12
LENGTH_REST = HEADER_SIZE - 4  # the header bytes the length field counts

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_ADDR = struct.Struct("<4sH")
_QD = _U32
_QD_ADDR = struct.Struct("<I4sH")
_QD_U32 = struct.Struct("<II")
_ERROR = _U32
COMPLETION = struct.Struct("<QIIBBH4sH")  # qt, qd, new_qd, opcode, flags, errno, ip, port

# Header + qd of a PUSH, packed together (the data follows in a second buffer).
_PUSH_HEAD = struct.Struct("<IBBHII")
# The same with F_QT: header, the client's queue token, qd.
_PUSH_HEAD_QT = struct.Struct("<IBBHIQI")
_QT = struct.Struct("<Q")
_QT_QD = struct.Struct("<QI")
_QT_QD_U32 = struct.Struct("<QII")
_QT_QD_ADDR = struct.Struct("<QI4sH")

U32_MAX = 0xFFFFFFFF
U64_MAX = (1 << 64) - 1

# Header flags. REQUEST: F_STREAM = the client reads a reply split over several frames.
# REPLY: F_STREAM = one of several frames answering one request, F_END = the last of them.
F_STREAM = 0x0001
F_END = 0x0002
# REQUEST (ACCEPT, CONNECT, PUSH, POP): the payload starts with the client's u64 queue
# token and no reply comes, only that token's COMPLETION.
F_QT = 0x0004
# REQUEST (CLOSE, ABORT, SETSOCKOPT): no reply; a failure is counted, not reported.
F_NOREPLY = 0x0008
# REQUEST (PUSH with F_QT): the client does not wait for this push; its completion may
# wait for the session's next frame (a millisecond at most).
F_LAZY = 0x0010


class FrameType(enum.IntEnum):
    REQUEST = 1
    REPLY = 2
    ERROR = 3
    COMPLETION = 4
    HELLO = 5


class Op(enum.IntEnum):
    NONE = 0
    SOCKET = 1
    BIND = 2
    LISTEN = 3
    ACCEPT = 4
    CONNECT = 5
    PUSH = 6
    POP = 7
    CLOSE = 8
    ABORT = 9
    SHUTDOWN = 10
    SETSOCKOPT = 11
    GETSOCKOPT = 12
    GETSOCKNAME = 13
    GETPEERNAME = 14
    # control ops (JSON payloads), for xdpstackctl
    STATUS = 64
    CONNECTIONS = 65
    SHOW = 66
    STATS = 67
    STEERING = 68
    ABORT_CONN = 69
    CAPTURE = 70


CONTROL_OPS = frozenset(
    {Op.STATUS, Op.CONNECTIONS, Op.SHOW, Op.STATS, Op.STEERING, Op.ABORT_CONN, Op.CAPTURE}
)
_OPS = {int(op): op for op in Op}
_FRAME_TYPES = {int(t): t for t in FrameType}


class OpCode(enum.IntEnum):
    """What a queue token was for (the same numbers as the stack's ``OpCode``)."""

    ACCEPT = 1
    CONNECT = 2
    PUSH = 3
    POP = 4


_OPCODES = {int(c): c for c in OpCode}

# COMPLETION flags
C_HAS_NEW_QD = 0x01
C_HAS_ADDR = 0x02

# Value tags
V_NONE = 0
V_INT = 1
V_FLOAT = 2
V_ADDR = 3
V_JSON = 4
V_STR = 5

MAX_OPTION_NAME = 64


class ProtocolError(Exception):
    """Malformed, truncated, oversized or unknown input. The only error decoding raises.

    ``errno`` is what the daemon answers with: EINVAL (malformed), EMSGSIZE (too large),
    ENOSYS (unknown op), EPROTO (not a frame / bad magic), EPROTONOSUPPORT (version).
    """

    def __init__(self, message: str, errno: int = _errno.EINVAL) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(slots=True, frozen=True)
class Frame:
    type: int
    op: int
    flags: int
    request_id: int
    payload: bytes | memoryview


@dataclass(slots=True, frozen=True)
class WireCompletion:
    """A COMPLETION frame's payload, decoded."""

    qt: int
    qd: int
    opcode: OpCode
    errno: int
    data: bytes
    addr: tuple[str, int] | None
    new_qd: int | None


# =====================================================================================
# hello
# =====================================================================================
def encode_hello(version: int = PROTOCOL_VERSION) -> bytes:
    return HELLO.pack(MAGIC, version, 0)


def decode_hello(data: bytes | memoryview) -> int:
    """The client's hello -> its version. Bad magic or length -> ProtocolError(EPROTO)."""
    if len(data) != HELLO.size:
        raise ProtocolError(f"hello is {HELLO.size} bytes, got {len(data)}", _errno.EPROTO)
    magic, version, _flags = HELLO.unpack(data)
    if magic != MAGIC:
        raise ProtocolError("not an xdpstack client (bad magic)", _errno.EPROTO)
    return version


def encode_server_hello(
    client_id: int,
    max_payload: int,
    limits: tuple[int, int, int] = (0, 0, 0),
    version: int = PROTOCOL_VERSION,
) -> bytes:
    """``limits``: the client's (max descriptors, max pending tokens, max push bytes);
    ``version``: the one the client speaks (an older one the daemon still serves)."""
    descriptors, pending, push_bytes = limits
    return encode_frame(
        FrameType.HELLO,
        Op.NONE,
        0,
        SERVER_HELLO.pack(version, 0, client_id & U32_MAX, max_payload)
        + SERVER_LIMITS.pack(
            min(descriptors, U32_MAX), min(pending, U32_MAX), min(push_bytes, U64_MAX)
        ),
    )


def decode_server_limits(payload: bytes | memoryview) -> tuple[int, int, int]:
    """The server hello's (max descriptors, max pending tokens, max push bytes); a
    field that is 0 or missing (an older daemon) reads as "no limit known" (0)."""
    if len(payload) < SERVER_HELLO.size + SERVER_LIMITS.size:
        return (0, 0, 0)
    return SERVER_LIMITS.unpack_from(payload, SERVER_HELLO.size)


def decode_server_hello(payload: bytes | memoryview) -> tuple[int, int, int]:
    """-> (version, client id, max payload)."""
    if len(payload) < SERVER_HELLO.size:
        raise ProtocolError("truncated server hello")
    version, _flags, client_id, max_payload = SERVER_HELLO.unpack_from(payload)
    if max_payload < PAYLOAD_OVERHEAD + 1:
        raise ProtocolError(f"server hello: max payload {max_payload} is too small")
    return version, client_id, max_payload


# =====================================================================================
# frames
# =====================================================================================
def encode_frame(
    frame_type: int, op: int, request_id: int, payload: bytes | bytearray = b"", flags: int = 0
) -> bytes:
    return HEADER.pack(LENGTH_REST + len(payload), frame_type, op, flags, request_id) + payload


def frame_length(buf: bytes | bytearray | memoryview, offset: int = 0) -> int | None:
    """Total size (header + payload) of the frame starting at ``offset``, or None when
    fewer than 4 bytes are there. Does not check bounds; see :func:`decode_frame`."""
    if len(buf) - offset < 4:
        return None
    return _U32.unpack_from(buf, offset)[0] + 4


def decode_frame(
    buf: bytes | bytearray | memoryview, offset: int = 0, max_payload: int = DEFAULT_MAX_PAYLOAD
) -> tuple[Frame, int] | None:
    """Decode the frame at ``buf[offset:]``.

    Returns ``(frame, next_offset)``, or None when the frame is not complete yet. The
    payload is a memoryview into ``buf`` (copy it before changing ``buf``). Raises
    ProtocolError for a length below the header's (EINVAL), a payload above
    ``max_payload`` (EMSGSIZE; known from the first 4 bytes already) or an unknown frame
    type (EINVAL). The op is not checked here (see :func:`decode_request`).
    """
    avail = len(buf) - offset
    if avail < 4 or offset < 0:
        return None
    (rest,) = _U32.unpack_from(buf, offset)
    if rest < LENGTH_REST:
        raise ProtocolError(f"frame length {rest} is shorter than the header")
    if rest - LENGTH_REST > max_payload:
        raise ProtocolError(
            f"frame payload of {rest - LENGTH_REST} bytes exceeds the limit of {max_payload}",
            _errno.EMSGSIZE,
        )
    end = offset + 4 + rest
    if len(buf) < end:
        return None
    _, ftype, op, flags, request_id = HEADER.unpack_from(buf, offset)
    if ftype not in _FRAME_TYPES:
        raise ProtocolError(f"unknown frame type {ftype}")
    payload = memoryview(buf)[offset + HEADER_SIZE : end]
    return Frame(ftype, op, flags, request_id, payload), end


# =====================================================================================
# addresses and tagged values
# =====================================================================================
def encode_addr(addr: Any) -> bytes:
    """``(ip, port)`` -> 6 bytes. ``""`` means 0.0.0.0. ValueError/TypeError when bad."""
    try:
        ip, port = addr
    except (TypeError, ValueError):
        raise TypeError(f"an address is an (ip, port) tuple, got {addr!r}") from None
    if not isinstance(ip, str):
        raise TypeError(f"the IP address must be a str, got {ip!r}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"the port must be an int, got {port!r}")
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is outside 0-65535")
    try:
        packed = _socket.inet_pton(_socket.AF_INET, ip or "0.0.0.0")
    except OSError:
        raise ValueError(f"{ip!r} is not an IPv4 address") from None
    return _ADDR.pack(packed, port)


def _addr_from(packed: bytes, port: int) -> tuple[str, int]:
    return (_socket.inet_ntoa(packed), port)


def decode_addr(data: bytes | memoryview, offset: int = 0) -> tuple[str, int]:
    if len(data) - offset < _ADDR.size or offset < 0:
        raise ProtocolError("truncated address")
    packed, port = _ADDR.unpack_from(data, offset)
    return _addr_from(packed, port)


def encode_value(value: Any) -> bytes:
    """A Python value -> tagged bytes. None, bool/int (i64), float, (ip, port), str;
    anything else JSON-encodable goes as JSON."""
    if value is None:
        return b"\x00"
    if isinstance(value, bool | int):
        value = int(value)
        if -(1 << 63) <= value < (1 << 63):
            return _U8.pack(V_INT) + _I64.pack(value)
        return _U8.pack(V_JSON) + json.dumps(value).encode()
    if isinstance(value, float):
        return _U8.pack(V_FLOAT) + _F64.pack(value)
    if isinstance(value, str):
        return _U8.pack(V_STR) + value.encode("utf-8", "surrogatepass")
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    ):
        try:
            return _U8.pack(V_ADDR) + encode_addr(value)
        except (TypeError, ValueError):
            pass
    return _U8.pack(V_JSON) + json_dumps(value).encode()


def decode_value(data: bytes | memoryview, offset: int = 0) -> Any:
    """Tagged bytes at ``data[offset:]`` (to the end) -> the value."""
    n = len(data) - offset
    if n < 1 or offset < 0:
        raise ProtocolError("missing value")
    tag = data[offset]
    body = n - 1
    if tag == V_NONE:
        if body:
            raise ProtocolError("trailing bytes after a NONE value")
        return None
    if tag == V_INT:
        if body != 8:
            raise ProtocolError("an INT value is 8 bytes")
        return _I64.unpack_from(data, offset + 1)[0]
    if tag == V_FLOAT:
        if body != 8:
            raise ProtocolError("a FLOAT value is 8 bytes")
        return _F64.unpack_from(data, offset + 1)[0]
    if tag == V_ADDR:
        if body != _ADDR.size:
            raise ProtocolError("an ADDR value is 6 bytes")
        return decode_addr(data, offset + 1)
    if tag == V_STR:
        return _utf8(data[offset + 1 :])
    if tag == V_JSON:
        return _json_loads(data[offset + 1 :])
    raise ProtocolError(f"unknown value tag {tag}")


def _utf8(data: bytes | memoryview) -> str:
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("invalid UTF-8") from None


def _json_loads(data: bytes | memoryview) -> Any:
    try:
        return json.loads(_utf8(data))
    except (ValueError, RecursionError):
        raise ProtocolError("invalid JSON") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value if isinstance(obj.value, int | str | float) else obj.name
    if isinstance(obj, bytes | bytearray | memoryview):
        return bytes(obj).hex()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    index = getattr(obj, "__index__", None) or getattr(obj, "__int__", None)
    if index is not None:
        try:
            return int(index())
        except Exception:
            pass
    return str(obj)


def json_dumps(obj: Any) -> str:
    """JSON for control replies: enums, sequence numbers, bytes and the like are made
    plain (never raises for an odd type; it falls back to ``str``)."""
    return json.dumps(obj, default=_json_default, separators=(",", ":"))


# =====================================================================================
# requests (client side encodes, daemon side decodes)
# =====================================================================================
def _check_u32(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {value!r}")
    if not 0 <= value <= U32_MAX:
        raise ValueError(f"{what} {value} is outside 0-{U32_MAX}")
    return value


def request(op: int, request_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return encode_frame(FrameType.REQUEST, op, request_id, payload, flags)


def request_qd(op: int, request_id: int, qd: int, flags: int = 0) -> bytes:
    return request(op, request_id, _QD.pack(_check_u32(qd, "qd")), flags)


def request_addr(op: int, request_id: int, qd: int, addr: Any) -> bytes:
    return request(op, request_id, _QD.pack(_check_u32(qd, "qd")) + encode_addr(addr))


def request_listen(request_id: int, qd: int, backlog: int) -> bytes:
    payload = _QD_U32.pack(_check_u32(qd, "qd"), _check_u32(backlog, "backlog"))
    return request(Op.LISTEN, request_id, payload)


def request_pop(request_id: int, qd: int, size: int | None, qt: int | None = None) -> bytes:
    """A POP; with ``qt`` (the client's token) in the no-reply form (:data:`F_QT`)."""
    size = 0 if size is None else _check_u32(size, "size")
    if qt is None:
        return request(Op.POP, request_id, _QD_U32.pack(_check_u32(qd, "qd"), size))
    return request(Op.POP, request_id, _QT_QD_U32.pack(qt, _check_u32(qd, "qd"), size), F_QT)


def request_accept(request_id: int, qd: int, qt: int | None = None) -> bytes:
    """An ACCEPT; with ``qt`` in the no-reply form (:data:`F_QT`)."""
    if qt is None:
        return request_qd(Op.ACCEPT, request_id, qd)
    return request(Op.ACCEPT, request_id, _QT_QD.pack(qt, _check_u32(qd, "qd")), F_QT)


def request_connect(request_id: int, qd: int, addr: Any, qt: int | None = None) -> bytes:
    """A CONNECT; with ``qt`` in the no-reply form (:data:`F_QT`)."""
    if qt is None:
        return request_addr(Op.CONNECT, request_id, qd, addr)
    payload = _QT_QD.pack(qt, _check_u32(qd, "qd")) + encode_addr(addr)
    return request(Op.CONNECT, request_id, payload, F_QT)


def request_push_head(
    request_id: int, qd: int, data_len: int, qt: int | None = None, lazy: bool = False
) -> bytes:
    """Header + qd of a PUSH (with ``qt``: the no-reply form, :data:`F_QT`; ``lazy``:
    :data:`F_LAZY` too); send ``data`` right after it (e.g. with ``sendmsg``)."""
    if qt is None:
        return _PUSH_HEAD.pack(
            LENGTH_REST + 4 + data_len,
            FrameType.REQUEST,
            Op.PUSH,
            0,
            request_id,
            _check_u32(qd, "qd"),
        )
    return _PUSH_HEAD_QT.pack(
        LENGTH_REST + 12 + data_len,
        FrameType.REQUEST,
        Op.PUSH,
        F_QT | F_LAZY if lazy else F_QT,
        request_id,
        qt,
        _check_u32(qd, "qd"),
    )


def _encode_option_name(name: str) -> bytes:
    raw = name.encode("ascii", "replace")
    if not 0 < len(raw) <= MAX_OPTION_NAME:
        raise ValueError(f"option name must be 1-{MAX_OPTION_NAME} characters")
    return _U8.pack(len(raw)) + raw


def request_setsockopt(request_id: int, qd: int, name: str, value: Any, flags: int = 0) -> bytes:
    payload = _QD.pack(_check_u32(qd, "qd")) + _encode_option_name(name) + encode_value(value)
    return request(Op.SETSOCKOPT, request_id, payload, flags)


def request_getsockopt(request_id: int, qd: int, name: str) -> bytes:
    payload = _QD.pack(_check_u32(qd, "qd")) + _encode_option_name(name)
    return request(Op.GETSOCKOPT, request_id, payload)


def request_control(
    op: int, request_id: int, args: dict[str, Any] | None = None, *, stream: bool = False
) -> bytes:
    """A control request; ``stream``: the reply may come in several frames (the
    request carries :data:`F_STREAM`)."""
    flags = F_STREAM if stream else 0
    return request(op, request_id, json_dumps(args or {}).encode(), flags)


def _need(payload: bytes | memoryview, size: int, op: Op, exact: bool = True) -> None:
    n = len(payload)
    if n < size or (exact and n != size):
        raise ProtocolError(f"{op.name}: payload of {n} bytes, expected {size}")


def _decode_option_name(payload: bytes | memoryview, op: Op) -> tuple[str, int]:
    _need(payload, 5, op, exact=False)
    n = payload[4]
    if n == 0 or n > MAX_OPTION_NAME or len(payload) < 5 + n:
        raise ProtocolError(f"{op.name}: bad option name length {n}")
    raw = bytes(payload[5 : 5 + n])
    if not raw.isascii():
        raise ProtocolError(f"{op.name}: option name is not ASCII")
    return raw.decode("ascii"), 5 + n


#: The ops that may carry :data:`F_QT`.
QT_OPS = frozenset({Op.ACCEPT, Op.CONNECT, Op.PUSH, Op.POP})
#: The ops that may carry :data:`F_NOREPLY`.
NOREPLY_OPS = frozenset({Op.CLOSE, Op.ABORT, Op.SETSOCKOPT})


def decode_request_qt(frame: Frame) -> tuple[Op, int | None, tuple[Any, ...]]:
    """A REQUEST frame -> ``(op, qt, args)``: ``qt`` is the client's queue token of a
    request in the no-reply form (:data:`F_QT`), else None; ``op`` and ``args`` as
    :func:`decode_request` gives them. ``F_QT`` on another op -> ProtocolError(EINVAL)."""
    if not frame.flags & F_QT:
        op, args = decode_request(frame)
        if frame.flags & F_NOREPLY and op not in NOREPLY_OPS:
            raise ProtocolError(f"F_NOREPLY on {op.name}, which is answered")
        return op, None, args
    op = _OPS.get(frame.op)
    if op not in QT_OPS:
        raise ProtocolError(f"F_QT on op {frame.op}, which has no queue token")
    payload = frame.payload
    if len(payload) < 8:
        raise ProtocolError(f"{op.name}: payload of {len(payload)} bytes has no queue token")
    if op is Op.PUSH:
        if len(payload) < 12:
            raise ProtocolError(f"PUSH: payload of {len(payload)} bytes, expected 12 or more")
        qt, qd = _QT_QD.unpack_from(payload)
        return op, qt, (qd, bytes(payload[12:]))
    if op is Op.POP:
        _need(payload, 16, op)
        qt, qd, size = _QT_QD_U32.unpack_from(payload)
        return op, qt, (qd, size or None)
    (qt,) = _QT.unpack_from(payload)
    view = memoryview(payload)[8:]
    try:
        op, args = decode_request(Frame(frame.type, frame.op, 0, frame.request_id, view))
    finally:
        view.release()
    return op, qt, args


def decode_request(frame: Frame) -> tuple[Op, tuple[Any, ...]]:
    """A REQUEST frame -> ``(op, args)`` with args as the Engine call takes them:

    SOCKET ``()``; BIND/CONNECT ``(qd, (ip, port))``; LISTEN ``(qd, backlog)``;
    PUSH ``(qd, data: bytes)``; POP ``(qd, size | None)``; ACCEPT/CLOSE/ABORT/
    SHUTDOWN/GETSOCKNAME/GETPEERNAME ``(qd,)``; SETSOCKOPT ``(qd, name, value)``;
    GETSOCKOPT ``(qd, name)``; control ops ``(dict,)``.
    Unknown op -> ProtocolError(ENOSYS); malformed -> ProtocolError(EINVAL).
    """
    if frame.type != FrameType.REQUEST:
        raise ProtocolError(f"expected a REQUEST frame, got type {frame.type}")
    op = _OPS.get(frame.op)
    if op is None or op is Op.NONE:
        raise ProtocolError(f"unknown op {frame.op}", _errno.ENOSYS)
    payload = frame.payload
    if op is Op.PUSH:
        _need(payload, 4, op, exact=False)
        return op, (_QD.unpack_from(payload)[0], bytes(payload[4:]))
    if op is Op.POP:
        _need(payload, 8, op)
        qd, size = _QD_U32.unpack_from(payload)
        return op, (qd, size or None)
    if op in _QD_ONLY:
        _need(payload, 4, op)
        return op, (_QD.unpack_from(payload)[0],)
    if op is Op.SOCKET:
        _need(payload, 0, op)
        return op, ()
    if op is Op.BIND or op is Op.CONNECT:
        _need(payload, _QD_ADDR.size, op)
        qd, packed, port = _QD_ADDR.unpack_from(payload)
        return op, (qd, _addr_from(packed, port))
    if op is Op.LISTEN:
        _need(payload, 8, op)
        return op, _QD_U32.unpack_from(payload)
    if op is Op.SETSOCKOPT:
        name, end = _decode_option_name(payload, op)
        value = decode_value(payload, end)
        if not isinstance(value, int | float):
            raise ProtocolError("SETSOCKOPT: the value must be an INT or a FLOAT")
        return op, (_QD.unpack_from(payload)[0], name, value)
    if op is Op.GETSOCKOPT:
        name, end = _decode_option_name(payload, op)
        if end != len(payload):
            raise ProtocolError("GETSOCKOPT: trailing bytes")
        return op, (_QD.unpack_from(payload)[0], name)
    # control ops
    args = _json_loads(payload) if len(payload) else {}
    if not isinstance(args, dict):
        raise ProtocolError(f"{op.name}: the payload must be a JSON object")
    return op, (args,)


_QD_ONLY = frozenset({Op.ACCEPT, Op.CLOSE, Op.ABORT, Op.SHUTDOWN, Op.GETSOCKNAME, Op.GETPEERNAME})


# =====================================================================================
# replies, errors and completions (daemon side encodes, client side decodes)
# =====================================================================================
def reply(op: int, request_id: int, value: Any = None) -> bytes:
    return encode_frame(FrameType.REPLY, op, request_id, encode_value(value))


def reply_frames(
    op: int, request_id: int, payload: bytes, max_payload: int
) -> list[bytes | memoryview]:
    """A REPLY whose tagged-value ``payload`` is larger than ``max_payload``, as buffers:
    REPLY frames flagged :data:`F_STREAM` carrying ``max_payload`` bytes each, the last
    flagged ``F_STREAM | F_END`` (see "Replies in several frames"). A payload that fits
    gives one ordinary REPLY frame."""
    size = len(payload)
    if size <= max_payload:
        return [encode_frame(FrameType.REPLY, op, request_id, payload)]
    if max_payload < 1:
        raise ValueError(f"max payload {max_payload} is too small")
    view = memoryview(payload)
    out: list[bytes | memoryview] = []
    for start in range(0, size, max_payload):
        part = view[start : start + max_payload]
        flags = F_STREAM | F_END if start + max_payload >= size else F_STREAM
        out.append(HEADER.pack(LENGTH_REST + len(part), FrameType.REPLY, op, flags, request_id))
        out.append(part)
    return out


def error(op: int, request_id: int, err: int, message: str = "") -> bytes:
    payload = _ERROR.pack(err & U32_MAX) + message.encode("utf-8", "replace")[:4096]
    return encode_frame(FrameType.ERROR, op, request_id, payload)


def decode_error(payload: bytes | memoryview) -> tuple[int, str]:
    if len(payload) < 4:
        raise ProtocolError("truncated ERROR frame")
    (err,) = _ERROR.unpack_from(payload)
    return err, bytes(payload[4:]).decode("utf-8", "replace")


def completion_frame(
    qt: int,
    qd: int,
    opcode: int,
    err: int = 0,
    data: bytes = b"",
    addr: tuple[str, int] | None = None,
    new_qd: int | None = None,
) -> list[bytes]:
    """A COMPLETION frame as buffers (header+fixed part, then the data if any).

    Numbers are masked to their field widths (the stack reports a cancelled operation's
    descriptor as -1, which goes out as 0xFFFFFFFF); this never raises for an int."""
    flags = 0
    if new_qd is not None:
        flags |= C_HAS_NEW_QD
    else:
        new_qd = 0
    packed_ip, port = b"\0\0\0\0", 0
    if addr is not None:
        flags |= C_HAS_ADDR
        packed_ip, port = _ADDR.unpack(encode_addr(addr))
    head = HEADER.pack(
        LENGTH_REST + COMPLETION.size + len(data), FrameType.COMPLETION, Op.NONE, 0, 0
    ) + COMPLETION.pack(
        qt & U64_MAX,
        qd & U32_MAX,
        new_qd & U32_MAX,
        opcode & 0xFF,
        flags,
        err & 0xFFFF,
        packed_ip,
        port,
    )
    return [head, data] if data else [head]


def decode_completion(payload: bytes | memoryview) -> WireCompletion:
    if len(payload) < COMPLETION.size:
        raise ProtocolError("truncated COMPLETION frame")
    qt, qd, new_qd, opcode, flags, err, packed_ip, port = COMPLETION.unpack_from(payload)
    code = _OPCODES.get(opcode)
    if code is None:
        raise ProtocolError(f"unknown completion opcode {opcode}")
    if flags & ~(C_HAS_NEW_QD | C_HAS_ADDR):
        raise ProtocolError(f"unknown completion flags {flags:#x}")
    return WireCompletion(
        qt,
        qd,
        code,
        err,
        bytes(payload[COMPLETION.size :]),
        _addr_from(packed_ip, port) if flags & C_HAS_ADDR else None,
        new_qd if flags & C_HAS_NEW_QD else None,
    )
