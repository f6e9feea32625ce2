"""The API under abuse against a real ``xdpstackd`` (its memory measured as RSS): a
client that pushes to a peer that never reads, one that opens sockets until its limit,
one killed with SIGKILL in the middle of a transfer, and another user at the socket.

The daemon runs with small per-client limits (``[daemon] client_max_sockets`` and
``client_max_push_bytes``, the keys an operator sets) and its socket in a directory
anyone may traverse, so that only the socket's own mode keeps other users out.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hostile_wire import EchoTransfer, LazySink, rss_kib
from netfixtures import kernel_tcp_server
from xdpd_harness import REPO, DaemonLab, DaemonProcess, Worker, client_python, wait_until

import xdpstack

pytestmark = pytest.mark.integration

MAX_SOCKETS = 512
MAX_PUSH = 16 << 20
CHUNK = 1 << 20
SNDBUF = 1 << 20  # tcp.send_buffer_bytes (the default)
CONFIG = (
    '[daemon]\nlog_level = "info"\n'
    f"client_max_sockets = {MAX_SOCKETS}\nclient_max_push_bytes = {MAX_PUSH}\n"
    "[tcp]\nmsl_s = 1.0\n"
)
HOG_SCRIPT = Path(__file__).resolve().parent / "hostile_client.py"
NOBODY = 65534


class Hog(Worker):
    """``hostile_client.py hog`` in a process of its own (killed by PID)."""

    def __init__(self, *args: str) -> None:
        self.argv = [client_python(), "-u", str(HOG_SCRIPT), "hog", *args]
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: list[str] = []
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for thread in self._threads:
            thread.start()


@pytest.fixture(scope="module")
def d(module_lab: DaemonLab) -> Any:
    open_dir = Path(tempfile.mkdtemp(prefix="xdpstack-hostile-"))
    open_dir.chmod(0o755)  # pytest's tmp dirs are 0700: they would keep others out anyway
    try:
        yield module_lab.daemon(
            name="xdpstackd-api", config_text=CONFIG, socket_path=open_dir / "xdpstackd.sock"
        )
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)


def session(d: DaemonProcess, lib: xdpstack.Lib) -> dict[str, Any]:
    with xdpstack.connect(d.socket_path) as ctl:
        status = ctl.control(xdpstack.protocol.Op.STATUS)
    (info,) = [c for c in status["clients"] if c["id"] == lib.client_id]
    return info


def hog(d: DaemonProcess, sink: LazySink, sockets: int = 0) -> tuple[Hog, dict[str, Any]]:
    worker = Hog(
        "--socket",
        str(d.socket_path),
        "--host",
        d.peer_ip,
        "--port",
        str(sink.port),
        "--sockets",
        str(sockets),
    )
    try:
        return worker, worker.expect("holding", timeout=30)
    except BaseException:
        worker.stop()
        raise


# ============================================================================ pushes
def test_pushes_to_a_peer_that_never_reads_are_bounded_then_resume(d: DaemonProcess) -> None:
    """1 MiB pushes, never waiting, to a kernel peer that reads nothing: the send buffer
    fills, then the daemon holds pushes up to the client's limit, then every further push
    fails at once with ENOBUFS. The daemon's RSS grows by about the limit, not by what the
    client tried to push, and the pushes it holds wait. Once the peer reads, they complete
    in order and the peer gets exactly their bytes."""
    sink = LazySink(d.peer_ns)
    lib = d.client()
    try:
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, sink.port)), timeout=20)
        sink.wait_conns(1)
        rss_before = rss_kib(d.pid)
        accepted: list[int] = []
        digest = hashlib.sha256()
        refused = 0
        attempts = 0
        block = os.urandom(CHUNK)
        while refused < 48:
            attempts += 1
            try:
                accepted.append(lib.push(qd, block))
                digest.update(block)
            except OSError as exc:
                assert exc.errno == errno.ENOBUFS, exc
                refused += 1
        rss_after = rss_kib(d.pid)
        held = session(d, lib)["pending_push_bytes"]
        tried = attempts * CHUNK
        print(
            f"\npush to a peer that never reads: {attempts} x 1 MiB tried, {len(accepted)} "
            f"accepted, {refused} refused (ENOBUFS); held in pending pushes {held >> 10} KiB "
            f"(limit {MAX_PUSH >> 10}); RSS {rss_before} -> {rss_after} KiB "
            f"(+{rss_after - rss_before}) for {tried >> 10} KiB tried"
        )
        assert 0 < held <= MAX_PUSH
        assert rss_after - rss_before < (MAX_PUSH + SNDBUF + (16 << 20)) >> 10
        with pytest.raises(TimeoutError):  # its push waits
            lib.wait(accepted[-1], timeout=0.5)
        # the peer reads now; everything accepted arrives, then our close gives it EOF
        results: list[tuple[int, str, str]] = []
        reader = threading.Thread(target=lambda: results.append(sink.drain(0, timeout=60)))
        reader.start()
        for qt in accepted:
            lib.wait(qt, timeout=60)
        assert session(d, lib)["pending_push_bytes"] == 0
        lib.close(qd)
        reader.join(70)
        ((total, sha, end),) = results
        assert (total, sha, end) == (len(accepted) * CHUNK, digest.hexdigest(), "eof")
    finally:
        sink.close()
    assert d.stats()["api"]["pushes_refused_enobufs"] >= 48


# ============================================================================ sockets
def test_sockets_until_the_clients_limit_then_emfile(d: DaemonProcess) -> None:
    before = d.stats()
    rss_before = rss_kib(d.pid)
    lib = d.client()
    qds = []
    with pytest.raises(OSError) as info:
        for _ in range(MAX_SOCKETS + 1):
            qds.append(lib.socket())
    assert info.value.errno == errno.EMFILE
    assert len(qds) == MAX_SOCKETS
    other = d.client()
    other_qd = other.socket()  # another client is not affected
    other.close(other_qd)
    rss_after = rss_kib(d.pid)
    print(f"\n{MAX_SOCKETS} sockets, then EMFILE; RSS +{rss_after - rss_before} KiB")
    for qd in qds:
        lib.close(qd)
    after = d.stats()
    assert after["sockets"] == before["sockets"]
    assert after["api"]["sockets_refused_emfile"] - before["api"]["sockets_refused_emfile"] == 1


# ============================================================================ SIGKILL
def test_client_killed_mid_transfer_frees_everything_and_others_carry_on(
    d: DaemonProcess,
) -> None:
    """A client with a listener, 100 sockets and 17 MiB on its way to a peer that does not
    read is SIGKILLed while another client's sha256-checked transfer runs. Its session and
    descriptors go at once, its listener's port too; the transfer never stops; once the
    peer reads, it gets the dead client's bytes and an end; then no connection is left
    over. (tests/integration/test_daemon_clients.py covers the end of the dead client's
    connections; this adds the resource counts and the concurrent transfer.)"""
    echo = kernel_tcp_server(d.peer_ns, 0, "echo", io_timeout=120)
    transfer = EchoTransfer(str(d.socket_path), (d.peer_ip, echo.port)).start()
    sink = LazySink(d.peer_ns)
    try:
        transfer.wait_progress(256 << 10)
        before = d.stats()
        worker, holding = hog(d, sink, sockets=100)
        try:
            during = d.stats()
            assert during["sockets"] - before["sockets"] == 102
            echoed = transfer.echoed
            assert worker.kill() == -9
        finally:
            worker.stop()

        def gone() -> bool:
            with xdpstack.connect(d.socket_path) as ctl:
                status = ctl.control(xdpstack.protocol.Op.STATUS)
            return all(c["pid"] != holding["pid"] for c in status["clients"]) and (
                status["sockets"] == before["sockets"]
            )

        wait_until(gone, 10, "the dead client's session and descriptors to go", 0.05)
        transfer.wait_progress(256 << 10)
        assert transfer.echoed > echoed
        # the dead client's connection: the peer reads, gets its bytes and the end
        sink.wait_conns(1)
        total, _sha, end = sink.drain(0, timeout=30)
        assert end in ("eof", "reset") and total <= holding["pushed"], (total, end, holding)
        sink.conns[0].close()
        wait_until(
            lambda: d.stats()["connections"] == before["connections"],
            15,
            "the dead client's connection to close (FIN, TIME_WAIT)",
            0.1,
        )
        after = d.stats()
        assert after["api"]["internal_errors"] == 0
        assert after["stack"].get("stack_internal_errors", 0) == 0
        print(
            f"\nSIGKILLed client ({holding['descriptors']} descriptors, {holding['pushed'] >> 20}"
            f" MiB pushed): session and descriptors gone at once; its peer then read {total} "
            f"bytes and {end}; connections back to {after['connections']}"
        )
        n, digest = transfer.finish()
        (conn,) = echo.results(1, timeout=20)
        assert conn["rx_sha256"] == conn["tx_sha256"] == digest and conn["rx_bytes"] == n
    finally:
        sink.close()
        echo.stop()


# ============================================================================ other users
def test_another_user_gets_eacces_at_the_daemons_socket(d: DaemonProcess) -> None:
    """The daemon's socket with its default mode (0660, root's group): a client run as
    nobody gets PermissionError (EACCES) naming the path."""
    st = os.stat(d.socket_path)
    assert st.st_mode & 0o777 == 0o660 and st.st_gid == 0
    code = (
        "import json, sys, xdpstack\n"
        "try:\n    xdpstack.connect(sys.argv[1]); print(json.dumps({'result': 'connected'}))\n"
        "except OSError as e:\n"
        "    print(json.dumps({'result': type(e).__name__, 'errno': e.errno, 'msg': str(e)}))\n"
    )
    proc = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            client_python(),
            "-c",
            code,
            str(d.socket_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(REPO / "client"), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["result"] == "PermissionError" and out["errno"] == errno.EACCES, out
    assert str(d.socket_path) in out["msg"]


# ============================================================================ orphans
def test_memory_held_for_departed_clients_does_not_add_up(d: DaemonProcess) -> None:
    """Four clients in turn push all they may (16 MiB each) to a peer that never reads,
    and are killed. What the daemon keeps for them must not grow with each one (Linux:
    data a dead process had not got into the socket buffer is gone; orphans are bounded
    by tcp_max_orphans and memory pressure): at most two clients' worth."""
    sink = LazySink(d.peer_ns)
    try:
        rss_before = rss_kib(d.pid)
        growth = []
        for _ in range(4):
            worker, _holding = hog(d, sink)
            try:
                worker.kill()
            finally:
                worker.stop()
            time.sleep(0.5)
            growth.append(rss_kib(d.pid) - rss_before)
        orphans = [c for c in d.connections() if c["connection_management"].get("orphaned")]
        print(
            f"\n4 dead pushing clients: RSS growth after each {growth} KiB; "
            f"{len(orphans)} orphaned connections left"
        )
        assert growth[-1] < (2 * (MAX_PUSH + SNDBUF)) >> 10, growth
    finally:
        sink.close()  # the peer goes: the orphans end
