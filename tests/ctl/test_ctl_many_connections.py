"""Control replies larger than one frame: ``xdpstackctl connections`` and
``Lib.control(Op.CONNECTIONS)`` on a daemon holding thousands of connections.

CONNECTIONS carries every connection's four control-block components (~1.6 KB each on the
simulated link), so above ~650 connections its reply is more than one frame carries
(1 MiB). A client that says so (request flag F_STREAM, as ``Lib.control`` and
``xdpstackctl`` do) gets it in several REPLY frames; any other gets ERROR EMSGSIZE and
keeps its connection. See "Replies in several frames" in :mod:`xdpstack.protocol`.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ctl_helpers import WAIT, established, table_rows, wait_for
from harness import FAR_IP, OUR_IP, Daemon

import xdpstack
from xdpstack import ctl
from xdpstack import protocol as P
from xdpstack.ctl_client import ControlClient, DaemonError
from xdpstack.protocol import Op

MANY = 3000
PORT = 7000
COMPONENTS = ("connection_management", "ordered_delivery", "flow_control", "congestion_control")


class Busy:
    """A daemon with MANY established connections, all held by ``lib``."""

    def __init__(self, daemon: Daemon, lib: xdpstack.Lib, qds: list[int]) -> None:
        self.daemon = daemon
        self.lib = lib
        self.qds = qds
        self.path = daemon.path


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Busy]:
    d = Daemon(str(tmp_path_factory.mktemp("busy") / "xdpstackd.sock")).start()
    try:
        far = d.far
        assert far is not None
        lqd = far.listen(PORT, backlog=MANY + 16)
        far.call(lambda: [far.stack.accept(lqd) for _ in range(MANY)])
        lib = d.connect()
        qds, qts = [], []
        for _ in range(MANY):  # pipelined: every connect is issued before any wait
            qd = lib.socket()
            qds.append(qd)
            qts.append(lib.connect(qd, (FAR_IP, PORT)))
        for qt in qts:
            lib.wait(qt, WAIT)
        yield Busy(d, lib, qds)
        lib.disconnect()
        d.check_healthy()
    finally:
        d.stop()


def run_ctl(path: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = ctl.main(["--socket", path, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def api_counters(daemon: Daemon) -> dict[str, int]:
    assert daemon.server is not None
    return daemon.call(lambda: dict(daemon.server.counters))


# =========================================================== thousands of connections
def test_old_single_frame_reply_would_not_fit(busy: Busy) -> None:
    """The premise, measured: the CONNECTIONS value is several frames' worth."""
    with busy.daemon.connect() as lib:
        value = lib.control(Op.CONNECTIONS)
    size = len(P.encode_value(value))  # what one REPLY frame would have to carry
    assert len(value) == MANY
    assert size > 2 * P.DEFAULT_MAX_PAYLOAD, size
    assert size / MANY > 1000  # every component of every connection is there


def test_lib_control_returns_every_connection(busy: Busy) -> None:
    before = api_counters(busy.daemon)
    with busy.daemon.connect() as lib:
        conns = lib.control(Op.CONNECTIONS)
        assert len(conns) == MANY
        ids = {c["connection_management"]["id"] for c in conns}
        assert len(ids) == MANY
        assert {c["connection_management"]["qd"] for c in conns} == set(busy.qds)
        for c in conns:
            assert all(c.get(name) for name in COMPONENTS), c
            assert c["connection_management"]["state"] == "ESTABLISHED"
            assert c["owner"]["client"] == busy.lib.client_id
            assert c["owner"]["pid"] == os.getpid()
        # the same connection to the daemon goes on working, for control and data alike
        assert lib.control(Op.STATUS)["connections"] == MANY
        assert len(lib.control(Op.CONNECTIONS)) == MANY
        qd, far_qd = established(busy.daemon, lib, PORT + 1)
        busy.daemon.far.push(far_qd, b"still here")
        assert lib.wait(lib.pop(qd), WAIT).data == b"still here"
        busy.daemon.far.abort(far_qd)  # leave the daemon with its MANY connections
        wait_for(lambda: lib.control(Op.STATS)["connections"] == MANY, "the RST")
    after = api_counters(busy.daemon)
    assert after["replies_split"] - before["replies_split"] == 2
    assert after["replies_too_large"] == before["replies_too_large"]


def test_ctl_connections_json_lists_all(busy: Busy, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_ctl(busy.path, capsys, "connections", "--json")
    assert rc == 0 and err == ""
    rows = json.loads(out)
    assert len(rows) == MANY
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == MANY
    assert {r["qd"] for r in rows} == set(busy.qds)
    for r in rows:
        assert r["state"] == "ESTABLISHED"
        assert r["local"]["address"] == OUR_IP
        assert r["peer"] == {"address": FAR_IP, "port": PORT}
        assert r["pid"] == os.getpid() and r["owner"]["client"] == busy.lib.client_id
        # everything the table shows is there
        for key in ("send_q", "recv_q", "cwnd", "srtt_s", "rto_s", "retransmits", "mss"):
            assert r[key] is not None, (key, r)


def test_ctl_ss_table_prints_all(busy: Busy, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("ss", "connections"):
        rc, out, err = run_ctl(busy.path, capsys, command)
        assert rc == 0 and err == ""
        headers, rows = table_rows(out)
        assert headers[:2] == ["ID", "State"] and headers[-1] == "PID"
        assert len(rows) == MANY
        assert {row[1] for row in rows} == {"ESTABLISHED"}
        assert {row[5] for row in rows} == {f"{FAR_IP}:{PORT}"}
        assert {row[10] for row in rows} == {str(os.getpid())}
        assert len({row[4] for row in rows}) == MANY  # one local port each


def test_other_control_ops_on_a_busy_daemon(busy: Busy, capsys: pytest.CaptureFixture[str]) -> None:
    """STATUS (every client's descriptors), STATS, STEERING (every local port in use) and
    SHOW grow with the connections too; they work through the same path."""
    with busy.daemon.connect() as lib:
        status = lib.control(Op.STATUS)
        holder = next(c for c in status["clients"] if c["id"] == busy.lib.client_id)
        assert len(holder["descriptors"]) == MANY
        assert lib.control(Op.STATS)["connections"] == MANY
        assert len(lib.control(Op.STEERING)["entries"]) >= MANY
        shown = lib.control(Op.SHOW, {"qd": busy.qds[-1]})
        assert shown["connection_management"]["qd"] == busy.qds[-1]
    for argv in (("status",), ("stats",), ("steering",), ("status", "--json")):
        rc, out, err = run_ctl(busy.path, capsys, *argv)
        assert rc == 0 and err == "" and out, argv


def test_client_without_the_stream_flag_gets_emsgsize(busy: Busy) -> None:
    """A client that cannot read a reply in several frames (an older library) gets a
    clear EMSGSIZE and keeps its connection; before, the oversized frame made it fail
    the whole connection with EPROTO."""
    before = api_counters(busy.daemon)
    with ControlClient(busy.path) as client:
        rid = client.send(Op.CONNECTIONS)  # no F_STREAM
        frame = client.read_frame(WAIT)
        assert frame is not None and frame.request_id == rid
        assert frame.type == P.FrameType.ERROR
        err, message = P.decode_error(frame.payload)
        assert err == errno.EMSGSIZE
        assert "CONNECTIONS" in message and "F_STREAM" in message
        assert client.request(Op.STATUS)["connections"] == MANY
        assert len(client.request(Op.CONNECTIONS)) == MANY
    after = api_counters(busy.daemon)
    assert after["replies_too_large"] - before["replies_too_large"] == 1


# ======================================================== small frames, reply limits
@pytest.fixture
def small_frames(tmp_path: Path) -> Iterator[Daemon]:
    """A daemon whose frames carry 512 bytes: every control reply is split."""
    d = Daemon(str(tmp_path / "small.sock"), max_frame=512).start()
    try:
        yield d
        d.check_healthy()
    finally:
        d.stop()


def test_every_control_op_splits_when_needed(
    small_frames: Daemon, capsys: pytest.CaptureFixture[str]
) -> None:
    d = small_frames
    with d.connect() as lib:
        assert lib.max_payload == 512
        qds = [established(d, lib, port)[0] for port in (7101, 7102, 7103)]
        conns = lib.control(Op.CONNECTIONS)
        assert sorted(c["connection_management"]["qd"] for c in conns) == sorted(qds)
        conn_id = conns[0]["connection_management"]["id"]
        shown = lib.control(Op.SHOW, {"id": conn_id})
        assert len(P.encode_value(shown)) > 512
        assert shown["connection_management"]["id"] == conn_id
        status = lib.control(Op.STATUS)
        assert status["connections"] == 3 and len(P.encode_value(status)) > 512
        assert len(P.encode_value(lib.control(Op.STATS))) > 512
        assert lib.control(Op.STEERING)["source"] == "engine"
        with pytest.raises(FileNotFoundError):  # an error still comes as one ERROR frame
            lib.control(Op.SHOW, {"id": 10**6})
        assert api_counters(d)["replies_split"] >= 4
        rc, out, err = run_ctl(d.path, capsys, "ss", "--json")
        assert rc == 0 and err == ""
        assert sorted(r["qd"] for r in json.loads(out)) == sorted(qds)
        rc, out, err = run_ctl(d.path, capsys, "show", str(conn_id), "--json")
        assert rc == 0 and json.loads(out)["connection_management"]["id"] == conn_id
        for argv in (("status",), ("stats",), ("ss",)):
            rc, out, err = run_ctl(d.path, capsys, *argv)
            assert rc == 0 and err == "" and out, argv
        # data still moves on a client whose frames are this small
        qd = qds[0]
        lib.wait(lib.push(qd, b"x" * 2000), WAIT)


def test_reply_past_the_daemons_limit_is_emsgsize(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = Daemon(str(tmp_path / "limited.sock"), max_frame=512, max_reply=3000).start()
    try:
        with d.connect() as lib:
            for port in (7201, 7202, 7203):
                established(d, lib, port)
            with pytest.raises(OSError) as info:
                lib.control(Op.CONNECTIONS)
            assert info.value.errno == errno.EMSGSIZE
            assert "CONNECTIONS" in str(info.value)
            # not a broken connection: the next request is answered
            assert lib.control(Op.STEERING)["source"] == "engine"
            rc, out, err = run_ctl(d.path, capsys, "ss")
            assert rc == 1 and out == ""
            assert "EMSGSIZE" in err and "CONNECTIONS" in err
            assert api_counters(d)["replies_too_large"] == 2
        d.check_healthy()
    finally:
        d.stop()


# ============================================================ the client side, framed by hand
def _fake_daemon(frames: list[bytes]) -> tuple[xdpstack.Lib, socket.socket]:
    """A Lib on one end of a socket pair whose other end has already written ``frames``
    (the Lib's first request id is 1)."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    lib = xdpstack.Lib(ours, "fake", 1, 512)
    theirs.sendall(b"".join(frames))
    theirs.shutdown(socket.SHUT_WR)  # then EOF: a Lib waiting for more fails, never hangs
    return lib, theirs


def _split(value: Any, rid: int = 1, max_payload: int = 512) -> list[bytes]:
    """``value`` as the REPLY frames of a split reply, one bytes object each."""
    payload = P.encode_value(value)
    bufs = [bytes(b) for b in P.reply_frames(Op.CONNECTIONS, rid, payload, max_payload)]
    return [head + part for head, part in zip(bufs[::2], bufs[1::2], strict=True)]


def test_reply_frames_format() -> None:
    value = [{"n": i, "pad": "x" * 50} for i in range(40)]
    payload = P.encode_value(value)
    frames = []
    wire = b"".join(_split(value, rid=9, max_payload=512))
    offset = 0
    while offset < len(wire):
        decoded = P.decode_frame(wire, offset, 512)
        assert decoded is not None
        frame, offset = decoded
        frames.append((frame.type, frame.op, frame.flags, frame.request_id, bytes(frame.payload)))
    assert len(frames) == -(-len(payload) // 512) > 1
    assert all(f[:2] == (P.FrameType.REPLY, Op.CONNECTIONS) and f[3] == 9 for f in frames)
    assert [f[2] for f in frames] == [P.F_STREAM] * (len(frames) - 1) + [P.F_STREAM | P.F_END]
    assert all(len(f[4]) == 512 for f in frames[:-1])
    assert b"".join(f[4] for f in frames) == payload
    # a value that fits: one ordinary REPLY
    (single,) = P.reply_frames(Op.STATUS, 3, P.encode_value({"a": 1}), 512)
    assert bytes(single) == P.reply(Op.STATUS, 3, {"a": 1})
    # exactly two frames' worth: the END flag is on the second
    exact = P.reply_frames(Op.STATUS, 3, b"\x05" + b"y" * 1023, 512)
    assert [P.HEADER.unpack(bytes(b))[3] for b in exact[::2]] == [
        P.F_STREAM,
        P.F_STREAM | P.F_END,
    ]
    # the request flag
    assert P.decode_frame(P.request_control(Op.CONNECTIONS, 1, stream=True))[0].flags == 1
    assert P.decode_frame(P.request_control(Op.CONNECTIONS, 1))[0].flags == 0


def test_lib_reassembles_around_completions() -> None:
    value = [{"i": i, "data": "z" * 30} for i in range(100)]
    parts = _split(value)
    completion = b"".join(P.completion_frame(77, 3, P.OpCode.PUSH))
    frames = [parts[0], completion, *parts[1:-1], completion, parts[-1]]
    lib, theirs = _fake_daemon(frames)
    try:
        assert lib.control(Op.CONNECTIONS) == value
        assert lib._parts is None and lib._reply is None
    finally:
        lib.disconnect()
        theirs.close()


def test_lib_rejects_interleaved_replies() -> None:
    parts = _split([{"i": i, "pad": "p" * 40} for i in range(50)])
    other = _split([{"j": j, "pad": "q" * 40} for j in range(50)], rid=2)
    lib, theirs = _fake_daemon([parts[0], other[0]])
    try:
        with pytest.raises(OSError) as info:
            lib.control(Op.CONNECTIONS)
        assert info.value.errno == errno.EPROTO
    finally:
        lib.disconnect()
        theirs.close()
    lib, theirs = _fake_daemon([parts[0], P.reply(Op.STATUS, 1, {})])
    try:
        with pytest.raises(OSError) as info:
            lib.control(Op.CONNECTIONS)
        assert info.value.errno == errno.EPROTO
    finally:
        lib.disconnect()
        theirs.close()


def test_ctl_client_reassembles_and_times_out_per_frame(tmp_path: Path) -> None:
    """ControlClient.request puts a split reply together, skipping frames of other
    requests, and waits ``timeout`` for each frame, not for the whole reply."""
    path = str(tmp_path / "fake.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    value = [{"i": i, "pad": "r" * 40} for i in range(60)]
    errors: list[BaseException] = []

    def serve(conn_ready: Callable[[socket.socket], None]) -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.recv(P.HELLO.size)
                conn.sendall(P.encode_server_hello(5, 512))
                conn.recv(4096)  # the request (id 1)
                conn_ready(conn)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def slowly(conn: socket.socket) -> None:
        stray = P.encode_frame(P.FrameType.REPLY, Op.CAPTURE, 99, b"\x00", P.F_STREAM)
        parts = _split(value)
        for i, part in enumerate(parts):
            conn.sendall(part)
            if i == 0:
                conn.sendall(stray)
            threading.Event().wait(0.15)  # the whole reply takes longer than the timeout
        conn.recv(1)  # until the client closes

    thread = threading.Thread(target=serve, args=(slowly,), daemon=True)
    thread.start()
    try:
        with ControlClient(path, timeout=0.5) as client:
            assert client.request(Op.CONNECTIONS) == value
        thread.join(WAIT)
        assert not errors, errors
    finally:
        listener.close()


def test_daemon_error_is_still_one_frame(busy: Busy) -> None:
    with ControlClient(busy.path) as client, pytest.raises(DaemonError) as info:
        client.request(Op.SHOW, {"id": 10**9})
    assert info.value.errno == errno.ENOENT
