"""The API under abuse, on the simulated-datapath daemon of ``tests/api/harness.py`` (the
real ApiServer and Engine; the far end is a second stack on a simulated link).

Beyond ``tests/api/test_robustness.py`` (malformed frames, versions, unknown ops, clients
that do not read): per-client limits -- descriptors (EMFILE) and bytes held in pending
pushes (ENOBUFS) --, probing for other clients' descriptors, the socket file's permissions
against another user (a client run as ``nobody``), and control operations across clients.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import FAR_IP, OUR_IP, Daemon, pattern

import xdpstack
from xdpstack import protocol as P
from xdpstack.protocol import FrameType, Op

WAIT = 10.0
REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


def connect_to_far(daemon: Daemon, lib: xdpstack.Lib, port: int) -> tuple[int, int]:
    lqd = daemon.far.listen(port)
    aqt = daemon.far.accept(lqd)
    qd = lib.socket()
    lib.wait(lib.connect(qd, (FAR_IP, port)), WAIT)
    return qd, daemon.far.wait_ok(aqt).new_qd


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Any]:
    started: list[Daemon] = []

    def make(path: str | None = None, **server_kwargs: Any) -> Daemon:
        d = Daemon(path or str(tmp_path / f"d{len(started)}.sock"), **server_kwargs).start()
        started.append(d)
        return d

    try:
        yield make
        for d in started:
            d.check_healthy()
    finally:
        for d in started:
            d.stop()


def session_of(daemon: Daemon, lib: xdpstack.Lib) -> dict[str, Any]:
    (info,) = [s for s in daemon.sessions() if s["id"] == lib.client_id]
    return info


# ============================================================================ descriptors
def test_a_client_opening_sockets_stops_at_its_limit_with_emfile(make_daemon: Any) -> None:
    limit = 40
    d = make_daemon(max_descriptors=limit)
    with d.connect() as a, d.connect() as b:
        qds = [a.socket() for _ in range(limit)]
        for _ in range(3):
            with pytest.raises(OSError) as info:
                a.socket()
            assert info.value.errno == errno.EMFILE
        # the other client has a limit of its own
        b_qds = [b.socket() for _ in range(limit)]
        assert not set(qds) & set(b_qds)
        # a closed descriptor makes room again
        a.close(qds.pop())
        qds.append(a.socket())
        # accepts not yet completed count: each will bring a descriptor
        for qd in qds[:3]:
            a.close(qd)
        listener = qds[3]
        a.bind(listener, (OUR_IP, 7000))
        a.listen(listener, 8)
        accepts = [a.accept(listener) for _ in range(3)]  # 37 descriptors + 3 coming
        with pytest.raises(OSError) as info:
            a.accept(listener)
        assert info.value.errno == errno.EMFILE
        with pytest.raises(OSError) as info:
            a.socket()
        assert info.value.errno == errno.EMFILE
        # the far end connects: the accepts complete, still within the limit
        far_qts = [d.far.connect((OUR_IP, 7000))[1] for _ in accepts]
        for qt in far_qts:
            d.far.wait_ok(qt)
        new = [a.wait(qt, WAIT).new_qd for qt in accepts]
        assert len(session_of(d, a)["descriptors"]) == limit
        for qd in new:
            a.close(qd)
        assert d.server is not None
        assert d.server.counters["sockets_refused_emfile"] == 5


def test_probing_descriptor_numbers_tells_nothing_and_delivers_nothing(make_daemon: Any) -> None:
    """Client B tries every descriptor number with every per-descriptor call: the answer is
    EBADF with the same message whether the number is A's, closed or never issued, and no
    completion of A's ever reaches B."""
    d = make_daemon()
    with d.connect() as a:
        qd, far_qd = connect_to_far(d, a, 81)
        pending = a.pop(qd)
        listener = a.socket()
        a.bind(listener, (OUR_IP, 7001))
        a.listen(listener, 4)
        gone = a.socket()
        a.close(gone)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(WAIT)
        probe.connect(d.path)
        probe.sendall(P.encode_hello())
        buf = b""

        def frame() -> P.Frame:
            nonlocal buf
            while True:
                decoded = P.decode_frame(buf, 0, 1 << 24)
                if decoded is not None:
                    f, end = decoded
                    out = P.Frame(f.type, f.op, f.flags, f.request_id, bytes(f.payload))
                    buf = buf[end:]
                    return out
                chunk = probe.recv(65536)
                assert chunk, "daemon closed the probe"
                buf += chunk

        assert frame().type == FrameType.HELLO
        messages = set()
        rid = 0
        for n in range(0, max(qd, listener, gone) + 20):
            for build in (
                lambda r, n=n: P.request_qd(Op.GETSOCKNAME, r, n),
                lambda r, n=n: P.request_qd(Op.GETPEERNAME, r, n),
                lambda r, n=n: P.request_pop(r, n, 100),
                lambda r, n=n: P.request_qd(Op.ACCEPT, r, n),
                lambda r, n=n: P.request_qd(Op.SHUTDOWN, r, n),
            ):
                rid += 1
                probe.sendall(build(rid))
                f = frame()
                assert f.type == FrameType.ERROR, (n, f)
                err, message = P.decode_error(f.payload)
                assert err == errno.EBADF, (n, err, message)
                messages.add(re.sub(r"\d+", "N", message))
        assert messages == {"bad descriptor N"}, messages
        # A's pending pop completes for A, and B gets nothing unasked
        d.far.push(far_qd, b"for A only")
        assert a.wait(pending, WAIT).data == b"for A only"
        probe.settimeout(0.3)
        with pytest.raises(TimeoutError):
            probe.recv(65536)
        probe.close()
        assert a.getpeername(qd) == (FAR_IP, 81)


# ============================================================================ pushes
def test_pushes_past_the_clients_byte_limit_fail_with_enobufs_and_queue_nothing(
    make_daemon: Any,
) -> None:
    """The far end reads nothing. The client pushes 256 KiB at a time without waiting:
    the send buffer and the far end's window fill, then the daemon holds pending pushes up
    to the client's limit, then a push fails at once with ENOBUFS. Once the far end reads,
    the accepted pushes complete in order and the bytes that arrive are exactly theirs: the
    refused push left nothing behind."""
    limit = 2 << 20
    d = make_daemon(max_push_bytes=limit)
    chunk = 256 << 10
    with d.connect() as lib, d.connect() as other:
        qd, far_qd = connect_to_far(d, lib, 82)
        accepted: list[tuple[int, bytes]] = []
        refused = 0
        for i in range(64):
            data = pattern(chunk, seed=i)
            try:
                accepted.append((lib.push(qd, data), data))
            except OSError as exc:
                assert exc.errno == errno.ENOBUFS, exc
                refused += 1
                if refused >= 5:
                    break
        assert refused == 5, "no push was refused"
        held = session_of(d, lib)["pending_push_bytes"]
        assert 0 < held <= limit, held
        # the pushes held wait: the last one does not complete
        with pytest.raises(TimeoutError):
            lib.wait(accepted[-1][0], timeout=0.3)
        # another client is not limited by this one's pushes
        oqd, ofar = connect_to_far(d, other, 83)
        other.wait(other.push(oqd, b"independent"), WAIT)
        assert d.far.recv_exactly(ofar, 11) == b"independent"
        # the far end reads: everything accepted arrives, in order, and nothing else
        want = b"".join(data for _, data in accepted)
        got = d.far.recv_exactly(far_qd, len(want), timeout=30)
        assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest()
        for qt, _ in accepted:
            lib.wait(qt, WAIT)
        assert session_of(d, lib)["pending_push_bytes"] == 0
        lib.wait(lib.push(qd, b"and more"), WAIT)
        assert d.far.recv_exactly(far_qd, 8) == b"and more"
        assert d.server is not None
        assert d.server.counters["pushes_refused_enobufs"] == 5
        print(
            f"\n{len(accepted)} pushes of {chunk >> 10} KiB accepted ({held} bytes held at "
            f"most {limit}), 5 refused with ENOBUFS"
        )


def test_a_client_with_nothing_pending_can_always_push_one_frame(make_daemon: Any) -> None:
    """A limit far below a frame (1000 bytes) still lets one push of a whole frame wait at
    a time: the client can always make progress; the next push is refused."""
    d = make_daemon(max_push_bytes=1000)
    with d.connect() as lib:
        qd, far_qd = connect_to_far(d, lib, 84)
        big = pattern(lib.max_push, seed=3)  # one whole frame
        qts = []
        with pytest.raises(OSError) as info:
            for _ in range(8):  # the far end reads nothing: buffers fill, then one waits
                qts.append(lib.push(qd, big))
        assert info.value.errno == errno.ENOBUFS
        assert session_of(d, lib)["pending_push_bytes"] == len(big)
        got = d.far.recv_exactly(far_qd, len(big) * len(qts), timeout=30)
        assert got == big * len(qts)
        for qt in qts:
            lib.wait(qt, WAIT)


# ============================================================================ the socket file
def _as_nobody(code: str, *args: str, timeout: float = 30.0) -> dict[str, Any]:
    """Run ``code`` with the repository's Python as user nobody (setpriv); its JSON line."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        from integration_support import require_integration

        require_integration("needs root and setpriv to run a client as another user")
    python = REPO / ".venv" / "bin" / "python"
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            str(python if python.exists() else "/usr/bin/python3"),
            "-c",
            code,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PYTHONPATH": str(REPO / "client"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


CONNECT_AS_NOBODY = """
import json, os, sys
import xdpstack
out = {"uid": os.getuid()}
try:
    with xdpstack.connect(sys.argv[1]) as lib:
        out["result"] = "connected"
        out["client_id"] = lib.client_id
except OSError as exc:
    out["result"] = type(exc).__name__
    out["errno"] = exc.errno
    out["message"] = str(exc)
print(json.dumps(out))
"""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may traverse (pytest's tmp_path is 0700: it would keep other users
    out whatever the socket's mode, and prove nothing)."""
    path = Path(tempfile.mkdtemp(prefix="xdpstack-hostile-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_api_socket_keeps_other_users_out(make_daemon: Any, open_dir: Path) -> None:
    """The default mode 0660 (owner root, group root): user nobody gets EACCES, as a
    PermissionError naming the path. Control: with the socket's group set to nobody's
    group, the same client connects."""
    closed = make_daemon(str(open_dir / "closed.sock"))  # mode 0660, group root
    st = os.stat(closed.path)
    assert st.st_mode & 0o777 == 0o660 and st.st_uid == 0 and st.st_gid == 0
    out = _as_nobody(CONNECT_AS_NOBODY, closed.path)
    assert out["uid"] == NOBODY
    assert out["result"] == "PermissionError" and out["errno"] == errno.EACCES, out
    assert closed.path in out["message"], out
    opened = make_daemon(str(open_dir / "group.sock"), group=NOBODY)
    out = _as_nobody(CONNECT_AS_NOBODY, opened.path)
    assert out["result"] == "connected", out
    assert [s["uid"] for s in opened.sessions()] == []  # it has gone again
    print(
        f"\nuser nobody on a 0660 root:root socket: {closed.path} -> PermissionError "
        f"(EACCES); on a 0660 root:nogroup socket -> connected"
    )


# ============================================================================ control ops
CONTROL_AS_NOBODY = """
import json, sys
import xdpstack
from xdpstack.protocol import Op
out = {}
with xdpstack.connect(sys.argv[1]) as lib:
    for name, op, args in (("abort", Op.ABORT_CONN, {"id": int(sys.argv[2])}),
                           ("capture", Op.CAPTURE, {"count": 1})):
        try:
            lib.control(op, args)
            out[name] = "allowed"
        except OSError as exc:
            out[name] = exc.errno
print(json.dumps(out))
"""


def test_another_user_cannot_reset_or_capture_my_connections(
    make_daemon: Any, open_dir: Path
) -> None:
    """Descriptors are per client (EBADF), but the operator's control operations are not
    limited at all: a client of another user (here nobody, let in by the socket's group)
    resets a root client's connection by id and may read everyone's traffic. Like
    ``ss -K`` and tcpdump on Linux (CAP_NET_ADMIN / CAP_NET_RAW), they should be for root
    (or the daemon's user), and a connection's own client."""
    d = make_daemon(str(open_dir / "ops.sock"), group=NOBODY)
    with d.connect() as lib:
        qd, far_qd = connect_to_far(d, lib, 85)
        (conn,) = [c for c in lib.control(Op.CONNECTIONS) if c["connection_management"]["qd"] == qd]
        out = _as_nobody(CONTROL_AS_NOBODY, d.path, str(conn["connection_management"]["id"]))
        print(f"\nuser nobody's ABORT_CONN / CAPTURE on root's connection: {out}")
        assert out == {"abort": errno.EPERM, "capture": errno.EPERM}, out
        d.far.push(far_qd, b"alive")
        assert lib.wait(lib.pop(qd), WAIT).data == b"alive"
