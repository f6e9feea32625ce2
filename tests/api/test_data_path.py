"""The data path without replies (protocol version 2): ACCEPT/CONNECT/PUSH/POP with the
client's own queue token are answered only by that token's COMPLETION (errors included),
CLOSE/ABORT/SETSOCKOPT with F_NOREPLY by nothing; a session's frames of one loop iteration
go out in one write; a version 1 client is still served."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest
from harness import FAR_IP, Daemon
from test_robustness import Raw

from xdpstack import protocol as P
from xdpstack.protocol import FrameType, Op, OpCode
from xdpstackd.api import session as session_module
from xdpstackd.api.session import Session

WAIT = 10.0
OURS = 1 << 63


def connected(daemon: Daemon, raw: Raw, port: int) -> tuple[int, int]:
    """(our qd, the far end's qd), connected with version 1 requests."""
    lqd = daemon.far.listen(port)
    aqt = daemon.far.accept(lqd)
    raw.send(P.request(Op.SOCKET, 1))
    qd = raw.reply()
    assert isinstance(qd, int)
    raw.send(P.request_connect(2, qd, (FAR_IP, port)))
    raw.reply()
    assert raw.frame().type == FrameType.COMPLETION
    return qd, daemon.far.wait_ok(aqt).new_qd


def completion(raw: Raw) -> P.WireCompletion:
    frame = raw.frame()
    assert frame.type == FrameType.COMPLETION, frame
    return P.decode_completion(frame.payload)


def nothing_else_queued(raw: Raw, qd: int) -> None:
    """The next frame is the reply to a request sent now: nothing was queued before it."""
    raw.send(P.request_qd(Op.GETSOCKNAME, 99, qd))
    frame = raw.frame()
    assert (frame.type, frame.request_id) == (FrameType.REPLY, 99), frame


def test_push_and_pop_with_our_tokens_are_answered_by_their_completions_only(
    daemon: Daemon,
) -> None:
    raw = Raw(daemon.path)
    qd, far_qd = connected(daemon, raw, 80)
    raw.send(
        P.request_pop(0, qd, None, OURS + 1) + P.request_push_head(0, qd, 4, OURS + 2) + b"ping"
    )
    assert daemon.far.recv_exactly(far_qd, 4) == b"ping"
    daemon.far.push(far_qd, b"pong")
    got = {c.qt: c for c in (completion(raw), completion(raw))}
    assert set(got) == {OURS + 1, OURS + 2}
    pop, push = got[OURS + 1], got[OURS + 2]
    assert (pop.opcode, pop.qd, pop.errno, pop.data) == (OpCode.POP, qd, 0, b"pong")
    assert (push.opcode, push.qd, push.errno) == (OpCode.PUSH, qd, 0)
    nothing_else_queued(raw, qd)


def test_a_call_that_fails_at_once_completes_our_token_with_its_errno(daemon: Daemon) -> None:
    raw = Raw(daemon.path)
    raw.send(P.request(Op.SOCKET, 1))
    qd = raw.reply()
    assert isinstance(qd, int)
    for wire, qt, opcode, bad_qd, err in [
        (P.request_pop(0, 999, None, OURS + 1), OURS + 1, OpCode.POP, 999, errno.EBADF),
        (P.request_pop(0, qd, 10, OURS + 2), OURS + 2, OpCode.POP, qd, errno.ENOTCONN),
        (P.request_accept(0, qd, OURS + 3), OURS + 3, OpCode.ACCEPT, qd, errno.EINVAL),
        (P.request_push_head(0, 999, 1, 7) + b"x", 7, OpCode.PUSH, 999, errno.EBADF),
    ]:
        raw.send(wire)
        c = completion(raw)
        assert (c.qt, c.opcode, c.qd, c.errno) == (qt, opcode, bad_qd, err)
    nothing_else_queued(raw, qd)
    assert daemon.server is not None and daemon.server.counters["request_errors"] == 4


def test_a_malformed_token_request_gets_an_error_frame_and_the_client_stays(
    daemon: Daemon,
) -> None:
    raw = Raw(daemon.path)
    raw.send(P.encode_frame(FrameType.REQUEST, Op.POP, 17, b"\x01\x02\x03", P.F_QT))
    err, _message, frame = raw.error()
    assert (err, frame.request_id, frame.op) == (errno.EINVAL, 17, Op.POP)
    raw.send(P.request(Op.SOCKET, 18))
    assert isinstance(raw.reply(), int)


def test_close_without_a_reply_closes_and_a_bad_one_is_only_counted(daemon: Daemon) -> None:
    raw = Raw(daemon.path)
    raw.send(P.request(Op.SOCKET, 1))
    qd = raw.reply()
    assert isinstance(qd, int)
    raw.send(P.request_setsockopt(0, qd, "TCP_NODELAY", 1, P.F_NOREPLY))
    raw.send(P.request_qd(Op.CLOSE, 0, 12345, P.F_NOREPLY))  # not ours: counted
    raw.send(P.request_getsockopt(2, qd, "TCP_NODELAY"))
    assert raw.reply() == 1  # the first answer is to the third request
    raw.send(P.request_qd(Op.CLOSE, 0, qd, P.F_NOREPLY))
    raw.send(P.request_qd(Op.GETSOCKNAME, 3, qd))
    err, _message, frame = raw.error()
    assert (err, frame.request_id) == (errno.EBADF, 3)
    assert daemon.server is not None and daemon.server.counters["request_errors"] == 2
    assert qd not in daemon.our_sockets()


def test_a_version_1_client_is_still_served(daemon: Daemon) -> None:
    raw = Raw(daemon.path, hello=False)
    raw.send(P.encode_hello(1))
    frame = raw.frame()
    assert frame.type == FrameType.HELLO
    assert P.decode_server_hello(frame.payload)[0] == 1
    qd, far_qd = connected(daemon, raw, 81)
    daemon.far.push(far_qd, b"for v1")
    raw.send(P.request_pop(5, qd, None))
    qt = raw.reply()  # version 1: the daemon's token in a reply, then its completion
    c = completion(raw)
    assert (c.qt, c.data) == (qt, b"for v1")


# ============================================================== corked output (unit)
class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[list[bytes]] = []

    def write(self, data: bytes) -> None:
        self.writes.append([bytes(data)])

    def writelines(self, buffers: list[Any]) -> None:
        self.writes.append([bytes(b) for b in buffers])

    def get_write_buffer_size(self) -> int:
        return 0


class EchoServer:
    """Enough of an ApiServer: every request is answered with two frames."""

    max_frame = P.DEFAULT_MAX_PAYLOAD
    write_hard_limit = 1 << 30

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def handle_frame(self, session: Session, frame: P.Frame) -> None:
        session.write(P.reply(frame.op, frame.request_id, 1))
        session.writelines(P.completion_frame(frame.request_id, 1, OpCode.POP, data=b"d"))


def corked_session() -> tuple[Session, FakeTransport, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    session = Session(EchoServer(loop), 1)  # type: ignore[arg-type]
    transport = FakeTransport()
    session.transport = transport  # type: ignore[assignment]
    session.hello_done = True
    return session, transport, loop


def test_every_request_of_one_read_is_answered_in_one_write() -> None:
    session, transport, loop = corked_session()
    try:
        session.data_received(b"".join(P.request_qd(Op.GETSOCKNAME, rid, 1) for rid in (1, 2, 3)))
        assert len(transport.writes) == 1
        frames = b"".join(transport.writes[0])
        rids = []
        offset = 0
        while offset < len(frames):
            decoded = P.decode_frame(frames, offset)
            assert decoded is not None
            frame, offset = decoded
            rids.append((frame.type, frame.request_id))
        expected = [(t, r) for r in (1, 2, 3) for t in (FrameType.REPLY, FrameType.COMPLETION)]
        assert rids == [(t, r if t == FrameType.REPLY else 0) for t, r in expected]
    finally:
        loop.close()


def test_frames_outside_a_read_go_out_together_once_per_loop_iteration() -> None:
    session, transport, loop = corked_session()
    try:
        for qt in (1, 2, 3):
            session.writelines(P.completion_frame(qt, 1, OpCode.POP, data=b"x"))
        assert transport.writes == []  # not yet: at the end of this loop iteration
        loop.run_until_complete(asyncio.sleep(0))
        assert len(transport.writes) == 1 and len(transport.writes[0]) == 6
    finally:
        loop.close()


def test_a_lazy_frame_waits_for_the_next_other_one(monkeypatch) -> None:
    session, transport, loop = corked_session()
    monkeypatch.setattr(session_module, "LAZY_FLUSH_S", 3600.0)  # only company sends it
    try:
        lazy = P.completion_frame(7, 1, OpCode.PUSH)
        session.write_lazy(lazy)
        loop.run_until_complete(asyncio.sleep(0))
        assert transport.writes == []
        session.writelines(P.completion_frame(8, 1, OpCode.POP, data=b"y"))
        loop.run_until_complete(asyncio.sleep(0))
        assert len(transport.writes) == 1
        qts = []
        data = b"".join(transport.writes[0])
        offset = 0
        while offset < len(data):
            decoded = P.decode_frame(data, offset)
            assert decoded is not None
            frame, offset = decoded
            qts.append(P.decode_completion(frame.payload).qt)
        assert qts == [7, 8]
    finally:
        loop.close()


def test_a_lazy_frame_alone_goes_after_its_delay(monkeypatch) -> None:
    session, transport, loop = corked_session()
    monkeypatch.setattr(session_module, "LAZY_FLUSH_S", 0.0)
    try:
        session.write_lazy(P.completion_frame(7, 1, OpCode.PUSH))
        loop.run_until_complete(asyncio.sleep(0.01))
        assert len(transport.writes) == 1
    finally:
        loop.close()


def test_a_lazy_push_completes_with_the_pops_data(daemon: Daemon, monkeypatch) -> None:
    """F_LAZY: the client does not wait for this push, so its completion does not come on
    its own (here: not within the test's patience), but with the next frame."""
    monkeypatch.setattr(session_module, "LAZY_FLUSH_S", 3600.0)
    raw = Raw(daemon.path)
    qd, far_qd = connected(daemon, raw, 82)
    raw.send(P.request_pop(0, qd, None, OURS + 1))
    raw.send(P.request_push_head(0, qd, 4, OURS + 2, lazy=True) + b"ping")
    assert daemon.far.recv_exactly(far_qd, 4) == b"ping"
    raw.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        raw.frame()
    raw.sock.settimeout(WAIT)
    daemon.far.push(far_qd, b"pong")
    push, pop = completion(raw), completion(raw)
    assert (push.qt, push.errno, pop.qt, pop.data) == (OURS + 2, 0, OURS + 1, b"pong")
