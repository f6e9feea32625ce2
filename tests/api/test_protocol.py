"""xdpstack.protocol: round trips of every frame, and total decoding (ProtocolError only)."""

from __future__ import annotations

import enum
import errno
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpstack import protocol as P
from xdpstack.protocol import FrameType, Op, OpCode, ProtocolError


def one_frame(data: bytes, max_payload: int = P.DEFAULT_MAX_PAYLOAD) -> P.Frame:
    decoded = P.decode_frame(data, 0, max_payload)
    assert decoded is not None
    frame, end = decoded
    assert end == len(data)
    return frame


def roundtrip(data: bytes) -> tuple[Op, tuple]:
    frame = one_frame(data)
    assert frame.type == FrameType.REQUEST
    return P.decode_request(frame)


# ------------------------------------------------------------------------------ hello
def test_hello_round_trip() -> None:
    assert len(P.encode_hello()) == 8
    assert P.decode_hello(P.encode_hello()) == P.PROTOCOL_VERSION
    assert P.decode_hello(P.encode_hello(7)) == 7


def test_bad_hello() -> None:
    with pytest.raises(ProtocolError) as info:
        P.decode_hello(b"HTTP/1.1")
    assert info.value.errno == errno.EPROTO
    with pytest.raises(ProtocolError):
        P.decode_hello(b"XDPS")


def test_server_hello_round_trip() -> None:
    frame = one_frame(P.encode_server_hello(42, 123456))
    assert frame.type == FrameType.HELLO
    assert P.decode_server_hello(frame.payload) == (P.PROTOCOL_VERSION, 42, 123456)
    with pytest.raises(ProtocolError):
        P.decode_server_hello(b"\x01\x00")


# ---------------------------------------------------------------------------- requests
ADDR = ("10.0.0.1", 8080)


@pytest.mark.parametrize(
    ("data", "op", "args"),
    [
        (P.request(Op.SOCKET, 1), Op.SOCKET, ()),
        (P.request_addr(Op.BIND, 2, 5, ADDR), Op.BIND, (5, ADDR)),
        (
            P.request_addr(Op.CONNECT, 2, 5, ("192.168.1.254", 0)),
            Op.CONNECT,
            (5, ("192.168.1.254", 0)),
        ),
        (P.request_addr(Op.BIND, 2, 5, ("", 80)), Op.BIND, (5, ("0.0.0.0", 80))),
        (P.request_listen(3, 5, 128), Op.LISTEN, (5, 128)),
        (P.request_qd(Op.ACCEPT, 4, 5), Op.ACCEPT, (5,)),
        (P.request_pop(5, 9, None), Op.POP, (9, None)),
        (P.request_pop(5, 9, 100), Op.POP, (9, 100)),
        (P.request_qd(Op.CLOSE, 6, 9), Op.CLOSE, (9,)),
        (P.request_qd(Op.ABORT, 6, 9), Op.ABORT, (9,)),
        (P.request_qd(Op.SHUTDOWN, 6, 9), Op.SHUTDOWN, (9,)),
        (P.request_qd(Op.GETSOCKNAME, 6, 9), Op.GETSOCKNAME, (9,)),
        (P.request_qd(Op.GETPEERNAME, 6, 9), Op.GETPEERNAME, (9,)),
        (P.request_setsockopt(7, 9, "TCP_NODELAY", 1), Op.SETSOCKOPT, (9, "TCP_NODELAY", 1)),
        (P.request_setsockopt(7, 9, "TCP_KEEPIDLE", 2.5), Op.SETSOCKOPT, (9, "TCP_KEEPIDLE", 2.5)),
        (P.request_getsockopt(8, 9, "SO_RCVBUF"), Op.GETSOCKOPT, (9, "SO_RCVBUF")),
        (P.request_control(Op.STATUS, 1), Op.STATUS, ({},)),
        (P.request_control(Op.SHOW, 1, {"id": 3}), Op.SHOW, ({"id": 3},)),
        (P.request(Op.STATS, 1), Op.STATS, ({},)),
    ],
)
def test_request_round_trip(data: bytes, op: Op, args: tuple) -> None:
    assert roundtrip(data) == (op, args)


def test_request_id_and_header() -> None:
    frame = one_frame(P.request_qd(Op.CLOSE, 0xDEADBEEF, 3))
    assert (frame.type, frame.op, frame.flags, frame.request_id) == (
        FrameType.REQUEST,
        Op.CLOSE,
        0,
        0xDEADBEEF,
    )
    assert bytes(frame.payload) == struct.pack("<I", 3)


def test_push_round_trip() -> None:
    data = bytes(range(256)) * 100
    wire = P.request_push_head(11, 4, len(data)) + data
    assert roundtrip(wire) == (Op.PUSH, (4, data))
    assert roundtrip(P.request_push_head(11, 4, 0)) == (Op.PUSH, (4, b""))


def test_header_layout() -> None:
    # u32 length of the rest, u8 type, u8 op, u16 flags, u32 request id
    wire = P.request_qd(Op.ACCEPT, 0x01020304, 7)
    assert wire[:12] == struct.pack("<IBBHI", 8 + 4, 1, 4, 0, 0x01020304)
    assert P.HEADER_SIZE == 12


def test_bad_arguments_fail_on_encode() -> None:
    with pytest.raises(ValueError):
        P.request_addr(Op.BIND, 1, 3, ("10.0.0.300", 80))
    with pytest.raises(ValueError):
        P.request_addr(Op.BIND, 1, 3, ("10.0.0.1", 70000))
    with pytest.raises(TypeError):
        P.request_addr(Op.BIND, 1, 3, "10.0.0.1:80")
    with pytest.raises(TypeError):
        P.request_addr(Op.BIND, 1, 3, ("10.0.0.1", "80"))
    with pytest.raises(ValueError):
        P.request_qd(Op.CLOSE, 1, -1)
    with pytest.raises(TypeError):
        P.request_qd(Op.CLOSE, 1, "3")
    with pytest.raises(ValueError):
        P.request_getsockopt(1, 3, "")
    with pytest.raises(ValueError):
        P.request_getsockopt(1, 3, "X" * 65)


# ------------------------------------------------------------------- malformed requests
def req(op: int, payload: bytes, rid: int = 1) -> P.Frame:
    return one_frame(P.encode_frame(FrameType.REQUEST, op, rid, payload))


@pytest.mark.parametrize(
    ("op", "payload"),
    [
        (Op.SOCKET, b"\x00"),
        (Op.BIND, b"\x01\x00\x00"),
        (Op.BIND, b"\x01\x00\x00\x00" + b"\x0a\x00\x00\x01\x50"),
        (Op.LISTEN, b"\x01\x00\x00\x00"),
        (Op.ACCEPT, b""),
        (Op.ACCEPT, b"\x01\x00\x00\x00\x00"),
        (Op.PUSH, b"\x01\x00"),
        (Op.POP, b"\x01\x00\x00\x00"),
        (Op.SETSOCKOPT, b"\x01\x00\x00\x00"),
        (Op.SETSOCKOPT, b"\x01\x00\x00\x00\x05ABC"),
        (Op.SETSOCKOPT, b"\x01\x00\x00\x00\x03ABC"),  # no value
        (Op.SETSOCKOPT, b"\x01\x00\x00\x00\x03ABC\x05xyz"),  # a string value
        (Op.SETSOCKOPT, b"\x01\x00\x00\x00\x03ABC\x01\x00"),  # short INT
        (Op.SETSOCKOPT, b"\x01\x00\x00\x00\x00"),
        (Op.SETSOCKOPT, b"\x01\x00\x00\x00\x02\xff\xfe\x01" + b"\x00" * 8),
        (Op.GETSOCKOPT, b"\x01\x00\x00\x00\x03ABCD"),
        (Op.STATUS, b"[1, 2]"),
        (Op.STATUS, b"{not json"),
        (Op.STATUS, b"\xff\xfe"),
    ],
)
def test_malformed_request(op: int, payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        P.decode_request(req(op, payload))
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("op", [0, 15, 63, 71, 200, 255])
def test_unknown_op_is_enosys(op: int) -> None:
    with pytest.raises(ProtocolError) as info:
        P.decode_request(req(op, b""))
    assert info.value.errno == errno.ENOSYS


def test_not_a_request() -> None:
    frame = one_frame(P.reply(Op.SOCKET, 1, 3))
    with pytest.raises(ProtocolError):
        P.decode_request(frame)


# -------------------------------------------------------------------------------- framing
def test_incomplete_frames_wait() -> None:
    wire = P.request_qd(Op.CLOSE, 1, 3)
    for cut in range(len(wire)):
        assert P.decode_frame(wire[:cut]) is None


def test_two_frames_in_one_buffer() -> None:
    wire = P.request_qd(Op.CLOSE, 1, 3) + P.request(Op.SOCKET, 2)
    frame1, off = P.decode_frame(wire)
    frame2, end = P.decode_frame(wire, off)
    assert (frame1.request_id, frame2.request_id, end) == (1, 2, len(wire))
    assert P.decode_frame(wire, end) is None


def test_oversized_frame_known_from_length_alone() -> None:
    head = struct.pack("<I", 8 + 1000)
    with pytest.raises(ProtocolError) as info:
        P.decode_frame(head, 0, max_payload=999)
    assert info.value.errno == errno.EMSGSIZE
    big = struct.pack("<I", 0xFFFFFFFF)
    with pytest.raises(ProtocolError) as info:
        P.decode_frame(big)
    assert info.value.errno == errno.EMSGSIZE


def test_length_shorter_than_header() -> None:
    for n in range(8):
        with pytest.raises(ProtocolError) as info:
            P.decode_frame(struct.pack("<I", n) + b"\x00" * 20)
        assert info.value.errno == errno.EINVAL


def test_unknown_frame_type() -> None:
    with pytest.raises(ProtocolError):
        P.decode_frame(struct.pack("<IBBHI", 8, 99, 0, 0, 0))


# ----------------------------------------------------------------- replies and values
@pytest.mark.parametrize(
    "value",
    [
        None,
        0,
        -1,
        7,
        (1 << 63) - 1,
        -(1 << 63),
        1.5,
        ("10.0.0.1", 80),
        ("0.0.0.0", 0),
        "TCP_NODELAY",
        {"a": [1, 2, {"b": None}]},
        [1, "x"],
    ],
)
def test_value_round_trip(value) -> None:
    frame = one_frame(P.reply(Op.GETSOCKOPT, 5, value))
    assert frame.type == FrameType.REPLY
    assert frame.request_id == 5
    assert P.decode_value(frame.payload) == value


def test_bool_and_huge_int_values() -> None:
    assert P.decode_value(P.encode_value(True)) == 1
    assert P.decode_value(P.encode_value(1 << 70)) == 1 << 70  # as JSON


def test_json_of_odd_types() -> None:
    class Colour(enum.Enum):
        RED = "red"

    class Seq:
        def __int__(self) -> int:
            return 99

    text = P.json_dumps({"c": Colour.RED, "s": Seq(), "t": (1, 2), "b": b"\x01", "o": object()})
    value = P.decode_value(P.encode_value({"c": Colour.RED, "s": Seq(), "t": (1, 2)}))
    assert value == {"c": "red", "s": 99, "t": [1, 2]}
    assert '"b":"01"' in text


def test_error_round_trip() -> None:
    frame = one_frame(P.error(Op.BIND, 9, errno.EADDRINUSE, "address in use"))
    assert frame.type == FrameType.ERROR
    assert (frame.op, frame.request_id) == (Op.BIND, 9)
    assert P.decode_error(frame.payload) == (errno.EADDRINUSE, "address in use")
    with pytest.raises(ProtocolError):
        P.decode_error(b"\x01")


# --------------------------------------------------------------------------- completions
@pytest.mark.parametrize(
    ("qt", "qd", "opcode", "err", "data", "addr", "new_qd"),
    [
        (1, 2, OpCode.CONNECT, 0, b"", None, None),
        (1 << 40, 7, OpCode.CONNECT, errno.ECONNREFUSED, b"", None, None),
        (3, 4, OpCode.ACCEPT, 0, b"", ("10.0.0.2", 51000), 5),
        (3, 4, OpCode.ACCEPT, 0, b"", ("10.0.0.2", 51000), 0),
        (6, 4, OpCode.PUSH, 0, b"", None, None),
        (7, 4, OpCode.POP, 0, b"hello" * 1000, None, None),
        (8, 4, OpCode.POP, 0, b"", None, None),
        (9, 4, OpCode.POP, errno.ECONNRESET, b"", None, None),
    ],
)
def test_completion_round_trip(qt, qd, opcode, err, data, addr, new_qd) -> None:
    wire = b"".join(P.completion_frame(qt, qd, opcode, err, data, addr, new_qd))
    frame = one_frame(wire)
    assert frame.type == FrameType.COMPLETION
    c = P.decode_completion(frame.payload)
    assert (c.qt, c.qd, c.opcode, c.errno, c.data, c.addr, c.new_qd) == (
        qt,
        qd,
        opcode,
        err,
        data,
        addr,
        new_qd,
    )


def test_bad_completions() -> None:
    with pytest.raises(ProtocolError):
        P.decode_completion(b"\x00" * 10)
    good = bytearray(P.completion_frame(1, 2, OpCode.POP)[0][P.HEADER_SIZE :])
    bad_opcode = bytearray(good)
    bad_opcode[16] = 9
    with pytest.raises(ProtocolError):
        P.decode_completion(bytes(bad_opcode))
    bad_flags = bytearray(good)
    bad_flags[17] = 0x80
    with pytest.raises(ProtocolError):
        P.decode_completion(bytes(bad_flags))


# ------------------------------------------------------------------ total decoding
def decode_everything(data: bytes) -> None:
    """Every decoder on ``data``; each returns or raises ProtocolError."""
    for decoder in (
        P.decode_completion,
        P.decode_value,
        P.decode_error,
        P.decode_server_hello,
        P.decode_hello,
        P.decode_addr,
    ):
        try:
            decoder(data)
        except ProtocolError:
            pass
    offset = 0
    while True:
        try:
            decoded = P.decode_frame(data, offset, max_payload=4096)
        except ProtocolError:
            return
        if decoded is None:
            return
        frame, offset = decoded
        try:
            P.decode_request(frame)
        except ProtocolError:
            pass
        for decoder in (P.decode_completion, P.decode_value, P.decode_error):
            try:
                decoder(frame.payload)
            except ProtocolError:
                pass


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_totally(data: bytes) -> None:
    decode_everything(data)


@settings(max_examples=3000, deadline=None)
@given(
    st.sampled_from([*range(0, 16), *range(60, 75), 255]),
    st.sampled_from([*FrameType, 0, 6, 255]),
    st.integers(0, 0xFFFF),
    st.binary(max_size=64),
)
def test_random_payloads_under_valid_headers(
    op: int, ftype: int, flags: int, payload: bytes
) -> None:
    wire = struct.pack("<IBBHI", 8 + len(payload), ftype, op, flags, 1) + payload
    decode_everything(wire)
    if ftype == FrameType.REQUEST:
        frame = one_frame(wire)
        try:
            got_op, args = P.decode_request(frame)
        except ProtocolError:
            return
        assert got_op == op
        assert isinstance(args, tuple)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(list(Op)[1:15]), min_size=1, max_size=5), st.data())
def test_mutated_valid_requests_decode_totally(ops: list[Op], data) -> None:
    wire = bytearray()
    for op in ops:
        if op is Op.PUSH:
            wire += P.request_push_head(1, 2, 3) + b"abc"
        elif op in (Op.BIND, Op.CONNECT):
            wire += P.request_addr(op, 1, 2, ADDR)
        elif op is Op.LISTEN:
            wire += P.request_listen(1, 2, 3)
        elif op is Op.POP:
            wire += P.request_pop(1, 2, 3)
        elif op is Op.SETSOCKOPT:
            wire += P.request_setsockopt(1, 2, "SO_SNDBUF", 65536)
        elif op is Op.GETSOCKOPT:
            wire += P.request_getsockopt(1, 2, "SO_SNDBUF")
        elif op is Op.SOCKET:
            wire += P.request(op, 1)
        else:
            wire += P.request_qd(op, 1, 2)
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(wire) - 1), st.integers(0, 255))))
    for index, value in flips:
        wire[index] = value
    cut = data.draw(st.integers(0, len(wire)))
    decode_everything(bytes(wire[:cut]))


# ======================================================= version 2: tokens, limits, flags
OURS = 1 << 63


@pytest.mark.parametrize(
    ("wire", "op", "qt", "args"),
    [
        (P.request_pop(0, 9, None, OURS + 1), Op.POP, OURS + 1, (9, None)),
        (P.request_pop(0, 9, 100, 7), Op.POP, 7, (9, 100)),
        (P.request_accept(0, 3, OURS), Op.ACCEPT, OURS, (3,)),
        (P.request_connect(0, 3, ("10.0.0.2", 80), 5), Op.CONNECT, 5, (3, ("10.0.0.2", 80))),
        (P.request_push_head(0, 4, 3, OURS + 2) + b"abc", Op.PUSH, OURS + 2, (4, b"abc")),
        (P.request_push_head(0, 4, 0, 1), Op.PUSH, 1, (4, b"")),
    ],
)
def test_requests_with_the_clients_token_carry_it_and_f_qt(wire, op, qt, args) -> None:
    frame = one_frame(wire)
    assert frame.flags & P.F_QT
    assert P.decode_request_qt(frame) == (op, qt, args)


def test_requests_without_a_token_decode_as_version_1() -> None:
    for wire in (P.request_pop(5, 9, None), P.request_accept(5, 3)):
        frame = one_frame(wire)
        assert not frame.flags & P.F_QT
        op, qt, args = P.decode_request_qt(frame)
        assert qt is None and (op, args) == P.decode_request(frame)


@pytest.mark.parametrize(
    ("op", "payload", "flags"),
    [
        (Op.GETSOCKNAME, struct.pack("<QI", 1, 2), P.F_QT),  # no token for this op
        (Op.POP, b"\x01" * 7, P.F_QT),  # shorter than a token
        (Op.POP, struct.pack("<QI", 1, 2), P.F_QT),  # a token, then too little
        (Op.PUSH, struct.pack("<Q", 1) + b"\x02", P.F_QT),
        (Op.ACCEPT, struct.pack("<Q", 1), P.F_QT),
        (Op.GETSOCKNAME, struct.pack("<I", 2), P.F_NOREPLY),  # a call that is answered
    ],
)
def test_malformed_token_requests_are_einval(op: int, payload: bytes, flags: int) -> None:
    frame = one_frame(P.encode_frame(FrameType.REQUEST, op, 1, payload, flags))
    with pytest.raises(ProtocolError) as info:
        P.decode_request_qt(frame)
    assert info.value.errno == errno.EINVAL


def test_no_reply_close_and_setsockopt_decode_as_their_ops() -> None:
    frame = one_frame(P.request_qd(Op.CLOSE, 0, 4, P.F_NOREPLY))
    assert P.decode_request_qt(frame) == (Op.CLOSE, None, (4,))
    frame = one_frame(P.request_setsockopt(0, 4, "TCP_NODELAY", 1, P.F_NOREPLY))
    assert P.decode_request_qt(frame) == (Op.SETSOCKOPT, None, (4, "TCP_NODELAY", 1))


def test_server_hello_carries_the_clients_limits_and_its_version() -> None:
    frame = one_frame(P.encode_server_hello(42, 123456, (40, 1000, 1 << 33)))
    assert P.decode_server_hello(frame.payload) == (P.PROTOCOL_VERSION, 42, 123456)
    assert P.decode_server_limits(frame.payload) == (40, 1000, 1 << 33)
    old = one_frame(P.encode_server_hello(42, 123456, version=1))
    assert P.decode_server_hello(old.payload)[0] == 1
    # a version 1 daemon's hello has no limits: none known
    assert P.decode_server_limits(P.SERVER_HELLO.pack(1, 0, 42, 123456)) == (0, 0, 0)


def test_a_lazy_push_carries_f_lazy() -> None:
    frame = one_frame(P.request_push_head(0, 4, 2, OURS, lazy=True) + b"ab")
    assert frame.flags == P.F_QT | P.F_LAZY
    assert P.decode_request_qt(frame) == (Op.PUSH, OURS, (4, b"ab"))
