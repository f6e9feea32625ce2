"""The client library against the API server and a real Engine on the simulated link.

Our stack is 10.0.0.1 (the daemon's); the far end is another InetStack at 10.0.0.2.
"""

from __future__ import annotations

import errno
import os
import socket

import pytest
from harness import (
    FAR_IP,
    OUR_IP,
    Daemon,
    lib_recv_exactly,
    lib_recv_until_eof,
    pattern,
    sha256,
)

import xdpstack
from xdpstack import OpCode, QResult
from xdpstack import protocol as P
from xdpstack.protocol import Op

WAIT = 10.0


def connect_to_far(daemon: Daemon, lib: xdpstack.Lib, port: int = 80) -> tuple[int, int]:
    """An established connection: (our qd, the far end's accepted qd)."""
    lqd = daemon.far.listen(port)
    aqt = daemon.far.accept(lqd)
    qd = lib.socket()
    lib.wait(lib.connect(qd, (FAR_IP, port)), WAIT)
    return qd, daemon.far.wait_ok(aqt).new_qd


# ================================================================== full call sequences
def test_active_open_full_sequence(daemon: Daemon, lib: xdpstack.Lib) -> None:
    lqd = daemon.far.listen(80)
    aqt = daemon.far.accept(lqd)

    qd = lib.socket()
    assert isinstance(qd, int)
    lib.setsockopt(qd, "TCP_NODELAY", True)
    assert lib.getsockopt(qd, "TCP_NODELAY") == 1
    assert lib.getsockopt(qd, socket.TCP_NODELAY) == 1
    lib.setsockopt(qd, socket.SO_SNDBUF, 256 * 1024)
    assert lib.getsockopt(qd, "SO_SNDBUF") == 256 * 1024

    qt = lib.connect(qd, (FAR_IP, 80))
    r = lib.wait(qt, WAIT)
    assert r == QResult(OpCode.CONNECT, qd, qt, b"", None, None)
    far_qd = daemon.far.wait_ok(aqt).new_qd

    local = lib.getsockname(qd)
    assert local[0] == OUR_IP and 0 < local[1] < 65536
    assert lib.getpeername(qd) == (FAR_IP, 80)

    # data both ways, checked with sha256
    up = pattern(3_000_000, seed=1)
    push_qt = lib.push(qd, up)
    got = daemon.far.recv_exactly(far_qd, len(up))
    assert sha256(got) == sha256(up)
    r = lib.wait(push_qt, WAIT)
    assert (r.opcode, r.qd, r.qt) == (OpCode.PUSH, qd, push_qt)

    down = pattern(2_500_000, seed=2)
    far_push = daemon.far.push(far_qd, down)
    assert sha256(lib_recv_exactly(lib, qd, len(down))) == sha256(down)
    daemon.far.wait_ok(far_push)

    # half close from us: the far end sees EOF, then sends more and closes
    lib.shutdown(qd)
    assert daemon.far.recv_until_eof(far_qd) == b""
    daemon.far.wait_ok(daemon.far.push(far_qd, b"after shutdown"))
    daemon.far.close(far_qd)
    assert lib_recv_until_eof(lib, qd) == b"after shutdown"
    lib.close(qd)
    assert qd not in lib.descriptors()
    with pytest.raises(OSError) as info:
        lib.getsockname(qd)
    assert info.value.errno == errno.EBADF


def test_passive_open_full_sequence(daemon: Daemon, lib: xdpstack.Lib) -> None:
    lqd = lib.socket()
    lib.bind(lqd, (OUR_IP, 8080))
    lib.listen(lqd, backlog=16)
    assert lib.getsockname(lqd) == (OUR_IP, 8080)

    aqt = lib.accept(lqd)
    with pytest.raises(TimeoutError):
        lib.wait(aqt, 0.05)  # nobody has connected yet

    far_qd, cqt = daemon.far.connect((OUR_IP, 8080))
    r = lib.wait(aqt, WAIT)
    daemon.far.wait_ok(cqt)
    far_local = daemon.far.call(daemon.far.stack.getsockname, far_qd)
    assert r.opcode == OpCode.ACCEPT and r.qd == lqd and r.qt == aqt
    assert r.addr == far_local and r.addr[0] == FAR_IP
    qd = r.new_qd
    assert qd in lib.descriptors()
    assert lib.getpeername(qd) == far_local
    assert lib.getsockname(qd) == (OUR_IP, 8080)

    down = pattern(1_500_000, seed=3)
    daemon.far.push(far_qd, down)
    assert sha256(lib_recv_exactly(lib, qd, len(down))) == sha256(down)
    up = pattern(1_200_000, seed=4)
    lib.push(qd, up)  # not waited: completes on its own
    assert sha256(daemon.far.recv_exactly(far_qd, len(up))) == sha256(up)

    # close from the far side: pop returns b"" at EOF
    daemon.far.close(far_qd)
    r = lib.wait(lib.pop(qd), WAIT)
    assert r.data == b"" and r.opcode == OpCode.POP
    lib.close(qd)
    lib.close(lqd)


def test_pushes_keep_order_and_large_pushes_are_split(daemon: Daemon, lib: xdpstack.Lib) -> None:
    qd, far_qd = connect_to_far(daemon, lib)
    parts = [pattern(n, seed=n) for n in (1, 1000, 3 * (1 << 20) + 5, 17, 1 << 20, 70_000)]
    qts = [lib.push(qd, memoryview(p)) for p in parts]
    whole = b"".join(parts)
    assert sha256(daemon.far.recv_exactly(far_qd, len(whole), timeout=60)) == sha256(whole)
    for qt in qts:
        assert lib.wait(qt, WAIT).opcode == OpCode.PUSH
    assert lib.pending() == []


def test_empty_push_completes(daemon: Daemon, lib: xdpstack.Lib) -> None:
    qd, far_qd = connect_to_far(daemon, lib)
    assert lib.wait(lib.push(qd, b""), WAIT).opcode == OpCode.PUSH
    lib.wait(lib.push(qd, bytearray(b"after")), WAIT)
    assert daemon.far.recv_exactly(far_qd, 5) == b"after"


def test_pop_size_and_clamp(daemon: Daemon, lib: xdpstack.Lib) -> None:
    qd, far_qd = connect_to_far(daemon, lib)
    data = pattern(900_000)
    daemon.far.wait_ok(daemon.far.push(far_qd, data))
    r = lib.wait(lib.pop(qd, 10), WAIT)
    assert 1 <= len(r.data) <= 10
    got = bytearray(r.data)
    while len(got) < len(data):
        r = lib.wait(lib.pop(qd, 1 << 40), WAIT)  # huge sizes are clamped
        assert r.data
        got += r.data
    assert bytes(got) == data


# ========================================================================== errors
def test_connection_refused_has_qt_and_qd(lib: xdpstack.Lib) -> None:
    qd = lib.socket()
    qt = lib.connect(qd, (FAR_IP, 9))  # nothing listens there: RST
    with pytest.raises(ConnectionRefusedError) as info:
        lib.wait(qt, WAIT)
    assert info.value.errno == errno.ECONNREFUSED
    assert info.value.qt == qt
    assert info.value.qd == qd
    assert qt not in lib.pending()
    with pytest.raises(ValueError):
        lib.wait(qt, 0)  # consumed


def test_reset_by_peer(daemon: Daemon, lib: xdpstack.Lib) -> None:
    qd, far_qd = connect_to_far(daemon, lib)
    qt = lib.pop(qd)
    daemon.far.abort(far_qd)
    with pytest.raises(ConnectionResetError) as info:
        lib.wait(qt, WAIT)
    assert (info.value.qt, info.value.qd) == (qt, qd)


def test_immediate_errors(daemon: Daemon, lib: xdpstack.Lib) -> None:
    a = lib.socket()
    lib.bind(a, (OUR_IP, 7000))
    b = lib.socket()
    with pytest.raises(OSError) as info:
        lib.bind(b, (OUR_IP, 7000))
    assert info.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as info:
        lib.bind(b, ("10.9.9.9", 7001))
    assert info.value.errno == errno.EADDRNOTAVAIL
    with pytest.raises(OSError) as info:
        lib.getpeername(b)
    assert info.value.errno == errno.ENOTCONN
    # token calls do not wait for the daemon: their immediate errors come with the wait
    qt = lib.pop(b)
    with pytest.raises(OSError) as info:
        lib.wait(qt, WAIT)
    assert (info.value.errno, info.value.qt, info.value.qd) == (errno.ENOTCONN, qt, b)
    with pytest.raises(OSError) as info:
        lib.wait(lib.accept(b), WAIT)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        lib.pop(a, 0)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        lib.setsockopt(a, "SO_NOSUCH", 1)
    assert info.value.errno == errno.ENOPROTOOPT
    with pytest.raises(OSError) as info:
        lib.getsockopt(a, 12345)
    assert info.value.errno == errno.ENOPROTOOPT
    with pytest.raises(OSError) as info:
        lib.setsockopt(a, "SO_SNDBUF", 10)
    assert info.value.errno == errno.EINVAL
    for call in (lib.close, lib.abort, lib.getsockname, lib.shutdown):
        with pytest.raises(OSError) as info:
            call(999_999)
        assert info.value.errno == errno.EBADF
    for token_call in (lib.accept, lib.pop):
        with pytest.raises(OSError) as info:
            lib.wait(token_call(999_999), WAIT)
        assert info.value.errno == errno.EBADF
    with pytest.raises(ValueError):
        lib.bind(b, ("not an ip", 1))
    with pytest.raises(TypeError):
        lib.setsockopt(a, "TCP_NODELAY", "yes")
    # the connection is still fine after all that
    assert lib.getsockname(a) == (OUR_IP, 7000)


def test_unknown_token(lib: xdpstack.Lib) -> None:
    with pytest.raises(ValueError):
        lib.wait(12345)
    with pytest.raises(ValueError):
        lib.wait_any([])


# ========================================================================== waiting
def test_wait_timeout_leaves_token_pending(daemon: Daemon, lib: xdpstack.Lib) -> None:
    qd, far_qd = connect_to_far(daemon, lib)
    qt = lib.pop(qd)
    with pytest.raises(TimeoutError):
        lib.wait(qt, 0.05)
    with pytest.raises(TimeoutError):
        lib.wait(qt, 0)
    assert qt in lib.pending()
    daemon.far.push(far_qd, b"late")
    r = lib.wait(qt, WAIT)
    assert r.data == b"late"


def test_wait_any(daemon: Daemon, lib: xdpstack.Lib) -> None:
    qd1, far1 = connect_to_far(daemon, lib, 80)
    qd2, far2 = connect_to_far(daemon, lib, 81)
    qt1, qt2 = lib.pop(qd1), lib.pop(qd2)
    with pytest.raises(TimeoutError):
        lib.wait_any([qt1, qt2], 0.05)
    daemon.far.push(far2, b"two")
    i, r = lib.wait_any([qt1, qt2], WAIT)
    assert (i, r.qt, r.qd, r.data) == (1, qt2, qd2, b"two")
    daemon.far.push(far1, b"one")
    i, r = lib.wait_any([qt1], WAIT)
    assert (i, r.data) == (0, b"one")
    # an error raised by wait_any names its token
    qt3 = lib.pop(qd1)
    qt4 = lib.pop(qd2)
    daemon.far.abort(far2)
    with pytest.raises(ConnectionResetError) as info:
        lib.wait_any([qt3, qt4], WAIT)
    assert (info.value.qt, info.value.qd) == (qt4, qd2)
    assert qt3 in lib.pending()


# ====================================================================== isolation
def test_clients_cannot_touch_each_others_descriptors(daemon: Daemon, lib: xdpstack.Lib) -> None:
    qd, far_qd = connect_to_far(daemon, lib)
    lqd = lib.socket()
    lib.bind(lqd, (OUR_IP, 9000))
    lib.listen(lqd)
    with daemon.connect() as other:
        for call, args in [
            (other.getsockname, (qd,)),
            (other.getpeername, (qd,)),
            (other.shutdown, (qd,)),
            (other.setsockopt, (qd, "TCP_NODELAY", 1)),
            (other.getsockopt, (qd, "TCP_NODELAY")),
            (other.listen, (lqd,)),
            (other.bind, (qd, (OUR_IP, 1))),
            (other.close, (qd,)),
            (other.abort, (qd,)),
        ]:
            with pytest.raises(OSError) as info:
                call(*args)
            assert info.value.errno == errno.EBADF, call
        # token calls: the error comes with the wait, and the far end got nothing
        for call, args in [
            (other.pop, (qd,)),
            (other.push, (qd, b"x")),
            (other.accept, (lqd,)),
            (other.connect, (qd, (FAR_IP, 1))),
        ]:
            with pytest.raises(OSError) as info:
                other.wait(call(*args), WAIT)
            assert info.value.errno == errno.EBADF, call
        mine = other.socket()
        with pytest.raises(OSError) as info:
            lib.close(mine)
        assert info.value.errno == errno.EBADF
    # untouched: still connected, still works
    daemon.far.push(far_qd, b"still here")
    assert lib.wait(lib.pop(qd), WAIT).data == b"still here"


def test_accepted_descriptor_belongs_to_the_listener_session(
    daemon: Daemon, lib: xdpstack.Lib
) -> None:
    lqd = lib.socket()
    lib.bind(lqd, (OUR_IP, 8081))
    lib.listen(lqd)
    with daemon.connect() as other:
        aqt = lib.accept(lqd)
        daemon.far.connect((OUR_IP, 8081))
        new_qd = lib.wait(aqt, WAIT).new_qd
        with pytest.raises(OSError) as info:
            other.getpeername(new_qd)
        assert info.value.errno == errno.EBADF
        assert lib.getpeername(new_qd)[0] == FAR_IP
    sessions = daemon.sessions()
    assert len(sessions) == 1 and new_qd in sessions[0]["descriptors"]


def test_disconnect_closes_the_clients_sockets(daemon: Daemon) -> None:
    lib = daemon.connect()
    qd, far_qd = connect_to_far(daemon, lib)
    lqd = lib.socket()
    lib.bind(lqd, (OUR_IP, 8082))
    lib.listen(lqd)
    lib.pop(qd)  # a pending token when we go
    lib.disconnect()  # as if the process exited
    # the far end sees our FIN (graceful close: nothing unread on our side)
    assert daemon.far.recv_until_eof(far_qd) == b""
    # and the listener is gone: a new connection is refused
    _, cqt = daemon.far.connect((OUR_IP, 8082))
    c = daemon.far.completion(cqt, WAIT)
    assert c.errno == errno.ECONNREFUSED
    assert daemon.sessions() == []
    assert qd not in daemon.our_sockets() and lqd not in daemon.our_sockets()


def test_disconnect_with_unread_data_resets(daemon: Daemon) -> None:
    lib = daemon.connect()
    qd, far_qd = connect_to_far(daemon, lib)
    daemon.far.wait_ok(daemon.far.push(far_qd, b"never read"))
    lib.wait(lib.push(qd, b"x"), WAIT)  # a round trip: the data has arrived by now
    daemon.far.recv_exactly(far_qd, 1)
    lib.disconnect()
    with pytest.raises(OSError) as info:
        daemon.far.recv_until_eof(far_qd)
    assert info.value.errno == errno.ECONNRESET


def test_close_all_and_context_manager(daemon: Daemon) -> None:
    with daemon.connect() as lib:
        qd, far_qd = connect_to_far(daemon, lib)
        extra = lib.socket()
        assert lib.descriptors() == {qd, extra}
    assert lib.closed
    assert daemon.far.recv_until_eof(far_qd) == b""
    with pytest.raises(OSError) as info:
        lib.socket()
    assert info.value.errno == errno.EBADF
    lib.close_all()  # idempotent


# ================================================================ identity and control
def test_peercred_recorded(daemon: Daemon, lib: xdpstack.Lib) -> None:
    qd = lib.socket()
    (session,) = daemon.sessions()
    assert session["pid"] == os.getpid()
    assert session["uid"] == os.getuid()
    assert session["gid"] == os.getgid()
    assert session["id"] == lib.client_id
    assert session["descriptors"] == [qd]


def test_control_ops(daemon: Daemon, lib: xdpstack.Lib) -> None:
    qd, _ = connect_to_far(daemon, lib)
    status = lib.control(Op.STATUS)
    assert status["protocol"] == P.PROTOCOL_VERSION and status["pid"] == os.getpid()
    assert status["socket"] == daemon.path
    assert [c["pid"] for c in status["clients"]] == [os.getpid()]
    conns = lib.control(Op.CONNECTIONS)
    assert len(conns) == 1
    cm = conns[0]["connection_management"]
    assert cm["qd"] == qd and cm["remote"] == [FAR_IP, 80]
    shown = lib.control(Op.SHOW, {"id": cm["id"]})
    assert shown["connection_management"]["id"] == cm["id"]
    assert lib.control(Op.SHOW, {"qd": qd})["connection_management"]["qd"] == qd
    with pytest.raises(FileNotFoundError):
        lib.control(Op.SHOW, {"id": 10**6})
    stats = lib.control(Op.STATS)
    assert stats["stack"]["eth_frames_in"] > 0 and stats["api"]["requests"] > 0
    steering = lib.control(Op.STEERING)
    assert steering["source"] == "engine"
    assert {"address": OUR_IP, "port": lib.getsockname(qd)[1]} in steering["entries"]


# ===================================================================== other loops
def test_default_asyncio_loop(tmp_path) -> None:
    daemon = Daemon(str(tmp_path / "s.sock"), use_uvloop=False).start()
    try:
        with daemon.connect() as lib:
            qd, far_qd = connect_to_far(daemon, lib)
            data = pattern(2_000_000)
            lib.push(qd, data)
            assert daemon.far.recv_exactly(far_qd, len(data)) == data
            daemon.far.push(far_qd, data)
            assert lib_recv_exactly(lib, qd, len(data)) == data
        daemon.check_healthy()
    finally:
        daemon.stop()
