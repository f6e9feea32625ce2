"""Hostile and broken clients: bad hellos, malformed, truncated, oversized and unknown
frames, clients that stop reading. The daemon answers or disconnects that client, never
crashes, and keeps serving the others."""

from __future__ import annotations

import errno
import random
import socket
import struct
import time

import pytest
from harness import FAR_IP, OUR_IP, Daemon, pattern

import xdpstack
from xdpstack import protocol as P
from xdpstack.protocol import FrameType, Op

WAIT = 10.0


class Raw:
    """A hand-driven client on the daemon's socket."""

    def __init__(self, path: str, hello: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(path)
        self.buf = b""
        if hello:
            self.sock.sendall(P.encode_hello())
            frame = self.frame()
            assert frame.type == FrameType.HELLO
            _, self.client_id, self.max_payload = P.decode_server_hello(frame.payload)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self) -> P.Frame:
        while True:
            decoded = P.decode_frame(self.buf, 0, 1 << 24)
            if decoded is not None:
                frame, end = decoded
                payload = bytes(frame.payload)
                self.buf = self.buf[end:]
                return P.Frame(frame.type, frame.op, frame.flags, frame.request_id, payload)
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError("daemon closed the connection")
            self.buf += chunk

    def error(self) -> tuple[int, str, P.Frame]:
        frame = self.frame()
        assert frame.type == FrameType.ERROR, frame
        err, message = P.decode_error(frame.payload)
        return err, message, frame

    def reply(self) -> object:
        frame = self.frame()
        assert frame.type == FrameType.REPLY, (frame, P.decode_error(frame.payload))
        return P.decode_value(frame.payload)

    def closed_by_daemon(self) -> bool:
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def still_serves(daemon: Daemon, lib: xdpstack.Lib | None = None) -> None:
    """The daemon answers a fresh client, and ``lib`` (if given) still works."""
    with daemon.connect() as fresh:
        qd = fresh.socket()
        assert fresh.getsockname(qd) == ("0.0.0.0", 0)
    if lib is not None:
        qd = lib.socket()
        lib.close(qd)


# ================================================================================ hello
def test_bad_magic(daemon: Daemon) -> None:
    raw = Raw(daemon.path, hello=False)
    raw.send(b"GET / HTTP/1.1\r\n\r\n")
    err, message, _ = raw.error()
    assert err == errno.EPROTO and "magic" in message
    assert raw.closed_by_daemon()
    still_serves(daemon)


def test_wrong_version(daemon: Daemon) -> None:
    raw = Raw(daemon.path, hello=False)
    raw.send(P.encode_hello(99))
    err, message, _ = raw.error()
    assert err == errno.EPROTONOSUPPORT and "99" in message
    assert raw.closed_by_daemon()
    still_serves(daemon)


def test_wrong_version_through_the_library(daemon: Daemon, monkeypatch) -> None:
    other = P.PROTOCOL_VERSION + 1
    monkeypatch.setattr(xdpstack.lib.P, "encode_hello", lambda: P.HELLO.pack(P.MAGIC, other, 0))
    with pytest.raises(OSError) as info:
        xdpstack.connect(daemon.path)
    assert info.value.errno == errno.EPROTONOSUPPORT
    assert info.value.filename == daemon.path


def test_hello_in_pieces_then_requests_in_one_write(daemon: Daemon) -> None:
    raw = Raw(daemon.path, hello=False)
    hello = P.encode_hello()
    for byte in hello[:-1]:
        raw.send(bytes([byte]))
        time.sleep(0.001)
    # last hello byte, then three requests, all in one write
    raw.send(
        hello[-1:] + P.request(Op.SOCKET, 1) + P.request(Op.SOCKET, 2) + P.request(Op.SOCKET, 3)
    )
    assert raw.frame().type == FrameType.HELLO
    qds = [raw.reply() for _ in range(3)]
    assert len(set(qds)) == 3
    raw.close()


def test_client_that_never_says_hello(daemon: Daemon) -> None:
    raw = Raw(daemon.path, hello=False)
    raw.send(b"XD")
    still_serves(daemon)
    raw.close()
    still_serves(daemon)


# ================================================================================ frames
def test_unknown_op_gets_enosys_and_the_connection_goes_on(daemon: Daemon) -> None:
    raw = Raw(daemon.path)
    for op in (0, 15, 63, 99, 255):
        raw.send(P.request(op, 7))
        err, _, frame = raw.error()
        assert (err, frame.op, frame.request_id) == (errno.ENOSYS, op, 7)
    raw.send(P.request(max(Op) + 1, 8))  # the first op number after the control ops
    assert raw.error()[0] == errno.ENOSYS
    raw.send(P.request(Op.SOCKET, 9))
    assert isinstance(raw.reply(), int)
    raw.close()


@pytest.mark.parametrize(
    ("op", "payload"),
    [
        (Op.BIND, b"\x01\x00\x00"),
        (Op.POP, b""),
        (Op.SETSOCKOPT, b"\x01\x00\x00\x00\x03ABC\x09"),
        (Op.STATUS, b"{"),
        (Op.SOCKET, b"junk"),
    ],
)
def test_malformed_payload_gets_einval(daemon: Daemon, op: int, payload: bytes) -> None:
    raw = Raw(daemon.path)
    raw.send(P.encode_frame(FrameType.REQUEST, op, 5, payload))
    err, _, frame = raw.error()
    assert (err, frame.request_id) == (errno.EINVAL, 5)
    raw.send(P.request(Op.SOCKET, 6))
    assert isinstance(raw.reply(), int)
    raw.close()


def test_frames_that_are_not_requests(daemon: Daemon) -> None:
    raw = Raw(daemon.path)
    for ftype in (FrameType.REPLY, FrameType.ERROR, FrameType.COMPLETION, FrameType.HELLO):
        raw.send(P.encode_frame(ftype, Op.SOCKET, 3, b"\x00"))
        assert raw.error()[0] == errno.EINVAL
    raw.send(P.request(Op.SOCKET, 4))
    assert isinstance(raw.reply(), int)
    raw.close()


def test_oversized_frame_is_refused_and_the_client_dropped(daemon: Daemon, lib) -> None:
    qd = lib.socket()
    raw = Raw(daemon.path)
    # a header announcing 64 MiB: refused from the length alone, no need to send it
    raw.send(struct.pack("<IBBHI", 8 + (64 << 20), FrameType.REQUEST, Op.PUSH, 0, 77))
    err, _, frame = raw.error()
    assert err == errno.EMSGSIZE and frame.request_id == 77
    assert raw.closed_by_daemon()
    assert lib.getsockname(qd) == ("0.0.0.0", 0)
    still_serves(daemon, lib)


def test_just_over_the_limit(daemon: Daemon) -> None:
    raw = Raw(daemon.path)
    payload = b"\x00" * (raw.max_payload + 1)
    raw.send(P.encode_frame(FrameType.REQUEST, Op.PUSH, 1, b"")[:4])  # nothing yet
    raw.close()
    raw = Raw(daemon.path)
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        raw.send(P.encode_frame(FrameType.REQUEST, Op.PUSH, 1, payload))
        raw.send(b"\x00" * (1 << 20))  # keeps going after the daemon hung up
    still_serves(daemon)


def test_length_below_header_drops_the_client(daemon: Daemon) -> None:
    raw = Raw(daemon.path)
    raw.send(struct.pack("<I", 3) + b"\x00" * 16)
    assert raw.error()[0] == errno.EINVAL
    assert raw.closed_by_daemon()
    still_serves(daemon)


def test_unknown_frame_type_drops_the_client(daemon: Daemon) -> None:
    raw = Raw(daemon.path)
    raw.send(struct.pack("<IBBHI", 8, 200, 1, 0, 1))
    assert raw.error()[0] == errno.EINVAL
    assert raw.closed_by_daemon()
    still_serves(daemon)


def test_truncated_frame_then_disconnect(daemon: Daemon) -> None:
    lib = daemon.connect()
    qd = lib.socket()
    lib._sock.sendall(P.request_push_head(50, qd, 1000) + b"abc")  # never finished
    lib.disconnect()
    still_serves(daemon)
    # the fresh client's hang-up and this question race on the loop: wait for the former
    deadline = time.monotonic() + 5
    while daemon.sessions() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert daemon.sessions() == []
    assert qd not in daemon.our_sockets()


def test_random_garbage_never_hurts(daemon: Daemon, lib: xdpstack.Lib) -> None:
    qd, far_qd = _connected(daemon, lib)
    rng = random.Random(1234)
    for i in range(60):
        raw = Raw(daemon.path, hello=(i % 3 != 0))
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300)))
        if i % 2:
            # a valid header with a random op and payload
            blob = struct.pack("<IBBHI", 8 + len(blob), 1, rng.randrange(256), 0, i) + blob
        try:
            raw.send(blob)
        except OSError:
            pass
        raw.close()
    # the honest client's connection still carries data
    daemon.far.push(far_qd, b"ping")
    assert lib.wait(lib.pop(qd), WAIT).data == b"ping"
    still_serves(daemon, lib)
    assert daemon.server.counters["internal_errors"] == 0


def _connected(daemon: Daemon, lib: xdpstack.Lib, port: int = 80) -> tuple[int, int]:
    lqd = daemon.far.listen(port)
    aqt = daemon.far.accept(lqd)
    qd = lib.socket()
    lib.wait(lib.connect(qd, (FAR_IP, port)), WAIT)
    return qd, daemon.far.wait_ok(aqt).new_qd


# ======================================================================= back-pressure
def test_client_that_does_not_read_replies_is_paused(tmp_path) -> None:
    daemon = Daemon(str(tmp_path / "s.sock"), write_high=64 * 1024).start()
    try:
        raw = Raw(daemon.path)
        raw.send(P.request(Op.SOCKET, 1))
        qd = raw.reply()
        request = P.request_qd(Op.GETSOCKNAME, 2, qd)
        raw.sock.setblocking(False)
        sent = 0
        blocked_since = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the daemon stops reading us for good
            try:
                raw.sock.send(request)
                sent += 1
                blocked_since = None
            except BlockingIOError:
                now = time.monotonic()
                blocked_since = blocked_since or now
                if now - blocked_since > 0.5:
                    break
                time.sleep(0.01)
        raw.sock.setblocking(True)
        raw.sock.settimeout(WAIT)
        assert blocked_since is not None
        (session,) = [s for s in daemon.sessions() if s["id"] == raw.client_id]
        assert session["reading_paused"]
        assert session["output_queued"] < 4 * 64 * 1024  # bounded, not everything
        still_serves(daemon)
        # reading everything resumes the client: every request gets its reply
        for _ in range(sent):
            assert raw.reply() == ("0.0.0.0", 0)
        raw.close()
        daemon.check_healthy()
    finally:
        daemon.stop()


def test_client_that_never_reads_completions_is_dropped(tmp_path) -> None:
    max_frame = 64 * 1024 + P.PAYLOAD_OVERHEAD
    daemon = Daemon(
        str(tmp_path / "s.sock"), max_frame=max_frame, write_high=64 * 1024, write_hard_limit=0
    ).start()
    try:
        lqd = daemon.far.listen(80)
        aqt = daemon.far.accept(lqd)
        raw = Raw(daemon.path)
        assert raw.max_payload == max_frame
        raw.send(P.request(Op.SOCKET, 1))
        qd = raw.reply()
        raw.send(P.request_addr(Op.CONNECT, 2, qd, (FAR_IP, 80)))
        raw.reply()
        assert raw.frame().type == FrameType.COMPLETION
        far_qd = daemon.far.wait_ok(aqt).new_qd
        daemon.far.push(far_qd, pattern(1 << 20))  # fills our receive buffer
        assert daemon.engine is not None
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            queued = daemon.engine.snapshot(qd)["ordered_delivery"]["recv_queue_bytes"]
            if queued >= 512 << 10:  # more than the client gets before it is dropped
                break
            time.sleep(0.01)
        # 40 pops, each completing at once with up to 64 KiB, and we never read: more
        # than the Unix socket's buffer plus the hard limit (write_high + 2 frames).
        raw.send(b"".join(P.request_pop(10 + i, qd, None) for i in range(40)))
        deadline = time.monotonic() + WAIT
        while daemon.sessions() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert daemon.sessions() == []
        assert daemon.server.counters["clients_dropped"] == 1
        # its connection was closed (with unread data: reset)
        with pytest.raises(OSError):
            daemon.far.recv_until_eof(far_qd)
        still_serves(daemon)
        raw.close()
        daemon.check_healthy()
    finally:
        daemon.stop()


def test_max_clients(tmp_path) -> None:
    daemon = Daemon(str(tmp_path / "s.sock"), max_clients=1).start()
    try:
        first = daemon.connect()
        with pytest.raises(ConnectionRefusedError) as info:
            daemon.connect()
        assert "too many clients" in str(info.value)
        assert daemon.path in str(info.value)
        first.disconnect()
        deadline = time.monotonic() + WAIT
        while daemon.sessions() and time.monotonic() < deadline:
            time.sleep(0.01)
        with daemon.connect() as again:
            again.socket()
        daemon.check_healthy()
    finally:
        daemon.stop()


def test_many_clients_at_once(daemon: Daemon) -> None:
    lqd = daemon.far.listen(80, backlog=64)
    libs = [daemon.connect() for _ in range(20)]
    conns = []
    for lib in libs:
        aqt = daemon.far.accept(lqd)
        qd = lib.socket()
        conns.append((lib, qd, lib.connect(qd, (FAR_IP, 80)), aqt))
    far_qds = []
    for lib, _qd, qt, aqt in conns:
        lib.wait(qt, WAIT)
        far_qds.append(daemon.far.wait_ok(aqt).new_qd)
    for i, ((lib, qd, _, _), far_qd) in enumerate(zip(conns, far_qds)):
        lib.push(qd, f"client {i}".encode())
        assert daemon.far.recv_exactly(far_qd, len(f"client {i}")) == f"client {i}".encode()
    assert len(daemon.sessions()) == 20
    assert len({lib.client_id for lib in libs}) == 20
    for lib in libs:
        lib.disconnect()
    for far_qd in far_qds:
        assert daemon.far.recv_until_eof(far_qd) == b""
    assert OUR_IP  # our stack's address (used by the far end above)
