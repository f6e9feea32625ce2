"""``xdpstack.socket`` against the simulated-datapath daemon (no root, no kernel).

Our stack is 10.0.0.1; the peers are applications on the far stack (10.0.0.2): the
event-driven ones of ``farapps.py`` and the harness's step-by-step ``Far``.
"""

from __future__ import annotations

import errno
import hashlib
import socket as std_socket
import threading
import time

import pytest
from farapps import FarApps
from harness import FAR_IP, OUR_IP, Daemon, pattern

import xdpstack
from xdpstack import socket as xsocket

ECHO_PORT = 7000
SINK_PORT = 7001
SOURCE_PORT = 7002


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def recv_exactly(sock: xsocket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def recv_until_eof(sock: xsocket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(1 << 16):
        out += chunk
    return bytes(out)


# =====================================================================================
# connecting, names, context managers
# =====================================================================================
def test_create_connection_echo_names_and_context_manager(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    with xsocket.create_connection((FAR_IP, ECHO_PORT), timeout=10) as sock:
        assert isinstance(sock, xsocket.socket)
        assert sock.family == std_socket.AF_INET
        assert sock.type == std_socket.SOCK_STREAM
        assert sock.proto == std_socket.IPPROTO_TCP
        assert sock.gettimeout() == 10
        assert sock.getpeername() == (FAR_IP, ECHO_PORT)
        ip, port = sock.getsockname()
        assert ip == OUR_IP and port > 0
        assert sock.fileno() == xsocket.default_lib().fileno() >= 0
        assert sock.qd is not None
        sock.sendall(b"hello, far end")
        assert recv_exactly(sock, 14) == b"hello, far end"
        assert "raddr=('10.0.0.2', 7000)" in repr(sock)
    assert sock.fileno() == -1 and sock.qd is None
    with pytest.raises(OSError) as info:
        sock.recv(10)
    assert info.value.errno == errno.EBADF
    sock.close()  # idempotent


def test_sockets_share_the_process_lib(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    a = xsocket.create_connection((FAR_IP, ECHO_PORT))
    b = xsocket.create_connection((FAR_IP, ECHO_PORT))
    with a, b:
        assert a.lib is b.lib is xsocket.default_lib()
        assert a.lib.path == daemon.path
        a.sendall(b"A")
        b.sendall(b"B")
        assert b.recv(1) == b"B"
        assert a.recv(1) == b"A"


def test_explicit_lib(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    with (
        xdpstack.connect(daemon.path) as lib,
        xsocket.create_connection((FAR_IP, ECHO_PORT), lib=lib) as sock,
    ):
        assert sock.lib is lib and lib is not xsocket.default_lib()
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"


def test_create_server_accept(daemon: Daemon, far: FarApps) -> None:
    with xsocket.create_server(("", 8000)) as server:
        assert server.getsockname() == ("0.0.0.0", 8000)
        assert server.getsockopt(xsocket.SOL_SOCKET, xsocket.SO_REUSEADDR) == 1
        assert server.getsockopt(xsocket.SOL_SOCKET, std_socket.SO_ACCEPTCONN) == 1
        result = far.client((OUR_IP, 8000), b"request bytes")
        conn, addr = server.accept()
        with conn:
            assert addr[0] == FAR_IP and addr == conn.getpeername()
            assert conn.getsockname() == (OUR_IP, 8000)
            assert conn.gettimeout() is None
            data = recv_until_eof(conn)
            assert data == b"request bytes"
            conn.sendall(data.upper())
        got = result.result(10)
        assert bytes(got.data) == b"REQUEST BYTES" and got.errno == 0


def test_accept_gets_default_timeout(daemon: Daemon, far: FarApps) -> None:
    with xsocket.create_server(("", 8000)) as server:
        server.settimeout(5)
        far.client((OUR_IP, 8000), b"x")
        conn, _ = server.accept()
        with conn:
            assert conn.gettimeout() is None  # getdefaulttimeout() is None
            assert conn.getblocking()


def test_socket_bind_listen_connect_by_hand(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    with xsocket.socket(xsocket.AF_INET, xsocket.SOCK_STREAM) as sock:
        sock.bind((OUR_IP, 0))
        sock.connect((FAR_IP, ECHO_PORT))
        assert sock.getsockname()[0] == OUR_IP
        assert sock.send(b"abc") == 3
        assert recv_exactly(sock, 3) == b"abc"


def test_code_for_the_standard_library_runs_with_the_import_changed(
    daemon: Daemon, far: FarApps
) -> None:
    """One client function, two socket modules: the kernel's (loopback) and xdpstack's."""

    def client(socket_module, address):  # written against the standard library's API
        with socket_module.create_connection(address, timeout=10) as sock:
            sock.setsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_NODELAY, 1)
            with sock.makefile("rwb") as stream:
                stream.write(b"line one\nline two\n")
                stream.flush()
                first = stream.readline()
                second = stream.readline()
            sock.shutdown(socket_module.SHUT_WR)
            return first, second, sock.recv(100)

    # the kernel's TCP on loopback, with a kernel echo server
    kernel_server = std_socket.create_server(("127.0.0.1", 0))

    def kernel_echo() -> None:
        conn, _ = kernel_server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=kernel_echo, daemon=True)
    thread.start()
    with kernel_server:
        expected = client(std_socket, kernel_server.getsockname())
    thread.join(10)
    assert expected == (b"line one\n", b"line two\n", b"")

    far.echo_server(ECHO_PORT)
    assert client(xsocket, (FAR_IP, ECHO_PORT)) == expected


# =====================================================================================
# data
# =====================================================================================
def test_sendall_large_and_recv_into(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    payload = pattern(3_000_000, seed=1)
    with xsocket.create_connection((FAR_IP, ECHO_PORT)) as sock:
        done = threading.Event()

        def send() -> None:
            sock.sendall(payload)
            done.set()

        # Another thread sends while this one receives: both on the shared Lib.
        thread = threading.Thread(target=send)
        thread.start()
        buf = bytearray(len(payload))
        view = memoryview(buf)
        got = 0
        while got < len(payload):
            n = sock.recv_into(view[got:], min(100_000, len(payload) - got))
            assert n > 0
            got += n
        thread.join(30)
        assert done.is_set()
        assert sha(buf) == sha(payload)


def test_recv_buffers_the_surplus(daemon: Daemon, far: FarApps) -> None:
    data = pattern(50_000, seed=2)
    far.source_server(SOURCE_PORT, data)
    with xsocket.create_connection((FAR_IP, SOURCE_PORT)) as sock:
        pieces = []
        buf = bytearray(7)
        while True:
            n = sock.recv_into(buf, 5)
            if n == 0:
                break
            assert n <= 5
            pieces.append(bytes(buf[:n]))
        assert b"".join(pieces) == data
        assert sock.recv(10) == b""  # EOF stays EOF


def test_recv_flags_peek_and_waitall(daemon: Daemon, far: FarApps) -> None:
    data = pattern(20_000, seed=3)
    far.source_server(SOURCE_PORT, data)
    with xsocket.create_connection((FAR_IP, SOURCE_PORT)) as sock:
        peeked = sock.recv(10, xsocket.MSG_PEEK)
        assert peeked == data[: len(peeked)] and peeked
        assert sock.recv(15_000, xsocket.MSG_WAITALL) == data[:15_000]
        assert recv_until_eof(sock) == data[15_000:]


def test_makefile_binary(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    with xsocket.create_connection((FAR_IP, ECHO_PORT)) as sock:
        wfile = sock.makefile("wb")
        rfile = sock.makefile("rb")
        lines = [f"line {i} {'x' * (i * 37 % 3000)}\n".encode() for i in range(200)]
        for line in lines:
            wfile.write(line)
        wfile.flush()
        for line in lines:
            assert rfile.readline() == line
        wfile.close()
        sock.shutdown(xsocket.SHUT_WR)
        assert rfile.read() == b""
        rfile.close()


def test_makefile_text(daemon: Daemon, far: FarApps) -> None:
    text = "".join(f"Grüße {i} — ünïcödé\n" for i in range(500))
    far.source_server(SOURCE_PORT, text.encode("utf-8"))
    with (
        xsocket.create_connection((FAR_IP, SOURCE_PORT)) as sock,
        sock.makefile("r", encoding="utf-8", newline="") as f,
    ):
        assert f.readline() == "Grüße 0 — ünïcödé\n"
        assert f.read() == text.split("\n", 1)[1]
    far.echo_server(ECHO_PORT)
    with xsocket.create_connection((FAR_IP, ECHO_PORT)) as sock:
        w = sock.makefile("w", encoding="utf-8")
        r = sock.makefile("r", encoding="utf-8")
        w.write("héllo\nwörld\n")
        w.flush()
        assert r.readline() == "héllo\n"
        assert r.readline() == "wörld\n"
        w.close()
        r.close()


def test_makefile_keeps_the_socket_open_until_closed(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    sock = xsocket.create_connection((FAR_IP, ECHO_PORT))
    f = sock.makefile("rwb", buffering=0)
    sock.close()  # the file object still uses it
    f.write(b"still here\n")
    assert f.read(11) == b"still here\n"
    f.close()
    assert sock.fileno() == -1
    assert daemon.sessions()  # our Lib is still connected; the qd is gone from it
    assert xsocket.default_lib().descriptors() == set()


def test_shutdown_write_peer_sees_eof(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    sunk = far.sink_server(SINK_PORT)
    with xsocket.create_connection((FAR_IP, SINK_PORT)) as sock:
        sock.sendall(b"all of it")
        sock.shutdown(xsocket.SHUT_WR)
        assert sock.recv(10) == b""  # the sink closes after our EOF
        with pytest.raises(BrokenPipeError):
            sock.send(b"more")
    deadline = time.monotonic() + 10
    while not sunk and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bytes(sunk[0].data) == b"all of it" and sunk[0].errno == 0
    # half-closed, the echo still comes back
    with xsocket.create_connection((FAR_IP, ECHO_PORT)) as sock:
        sock.sendall(b"echo me")
        sock.shutdown(xsocket.SHUT_WR)
        assert recv_until_eof(sock) == b"echo me"


def test_shutdown_read_is_local(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    with xsocket.create_connection((FAR_IP, ECHO_PORT)) as sock:
        sock.shutdown(xsocket.SHUT_RD)
        assert sock.recv(10) == b""
        sock.sendall(b"can still send")
    with pytest.raises(OSError):
        sock.shutdown(xsocket.SHUT_RDWR)  # closed


# =====================================================================================
# timeouts and non-blocking
# =====================================================================================
def test_recv_timeout_then_the_data_arrives(daemon: Daemon) -> None:
    far = daemon.far
    assert far is not None
    with xsocket.create_server(("", 8000)) as server:
        fqd, fqt = far.connect((OUR_IP, 8000))
        conn, _ = server.accept()
        far.wait_ok(fqt)
        with conn:
            conn.settimeout(0.2)
            started = time.monotonic()
            with pytest.raises(TimeoutError) as info:
                conn.recv(100)
            assert isinstance(info.value, std_socket.timeout)
            assert 0.15 < time.monotonic() - started < 2.0
            with pytest.raises(TimeoutError):  # again: the same pending request
                conn.recv(100)
            far.push(fqd, b"late data")
            assert conn.recv(100) == b"late data"
            far.push(fqd, b"x" * 10)
            conn.settimeout(5)
            assert recv_exactly(conn, 10) == b"x" * 10
            far.close(fqd)
            assert conn.recv(10) == b""


def test_timed_out_makefile_read_raises_timeout(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    with (
        xsocket.create_connection((FAR_IP, ECHO_PORT), timeout=0.1) as sock,
        sock.makefile("rb") as f,
        pytest.raises(TimeoutError),
    ):
        f.readline()


def test_non_blocking_connect_in_progress(daemon: Daemon) -> None:
    far = daemon.far
    assert far is not None
    far.listen(ECHO_PORT)  # never accepts: the handshake still completes (backlog)
    with xsocket.socket() as sock:
        sock.setblocking(False)
        far_dp = daemon.datapath
        assert far_dp is not None
        old_delay = far_dp.delay_s
        far_dp.delay_s = 0.3  # a slow link: the SYN-ACK takes 0.6 s
        try:
            with pytest.raises(BlockingIOError) as info:
                sock.connect((FAR_IP, ECHO_PORT))
            assert info.value.errno == errno.EINPROGRESS
            with pytest.raises(BlockingIOError) as info:
                sock.connect((FAR_IP, ECHO_PORT))
            assert info.value.errno == errno.EALREADY
        finally:
            far_dp.delay_s = old_delay
        sock.settimeout(10)
        sock.connect((FAR_IP, ECHO_PORT))  # waits for the attempt under way
        assert sock.getpeername() == (FAR_IP, ECHO_PORT)


def test_non_blocking(daemon: Daemon) -> None:
    far = daemon.far
    assert far is not None
    with xsocket.create_server(("", 8000)) as server:
        server.setblocking(False)
        assert server.gettimeout() == 0.0 and not server.getblocking()
        with pytest.raises(BlockingIOError) as info:
            server.accept()
        assert info.value.errno == errno.EAGAIN
        fqd, fqt = far.connect((OUR_IP, 8000))
        deadline = time.monotonic() + 10
        while True:
            try:
                conn, _ = server.accept()
                break
            except BlockingIOError:
                assert time.monotonic() < deadline
                time.sleep(0.005)
        far.wait_ok(fqt)
        with conn:
            conn.setblocking(False)
            with pytest.raises(BlockingIOError):
                conn.recv(10)
            with pytest.raises(BlockingIOError):
                conn.recv(10, xsocket.MSG_DONTWAIT)
            far.push(fqd, b"now")
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert conn.recv(10) == b"now"
                    break
                except BlockingIOError:
                    assert time.monotonic() < deadline
                    time.sleep(0.005)
            assert conn.send(b"reply") == 5
            assert far.recv_exactly(fqd, 5) == b"reply"
            conn.setblocking(True)
            assert conn.gettimeout() is None


def test_non_blocking_connect(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    with xsocket.socket() as sock:
        sock.setblocking(False)
        # EINPROGRESS, unless the handshake was already done when connect looked
        assert sock.connect_ex((FAR_IP, ECHO_PORT)) in (0, errno.EINPROGRESS)
        deadline = time.monotonic() + 10
        while sock.connect_ex((FAR_IP, ECHO_PORT)) in (errno.EALREADY, errno.EAGAIN):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert sock.getsockopt(xsocket.SOL_SOCKET, std_socket.SO_ERROR) == 0
        assert sock.getpeername() == (FAR_IP, ECHO_PORT)


def test_settimeout_validation(daemon: Daemon) -> None:
    with xsocket.socket() as sock:
        with pytest.raises(ValueError):
            sock.settimeout(-1)
        with pytest.raises(TypeError):
            sock.settimeout("soon")  # type: ignore[arg-type]
        sock.settimeout(1)
        assert sock.gettimeout() == 1.0


# =====================================================================================
# options
# =====================================================================================
def test_setsockopt_mapping(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    with xsocket.socket() as sock:
        sock.setsockopt(xsocket.SOL_SOCKET, xsocket.SO_RCVBUF, 128 * 1024)
        sock.connect((FAR_IP, ECHO_PORT))
        get, sol, tcp = sock.getsockopt, xsocket.SOL_SOCKET, xsocket.IPPROTO_TCP
        assert get(sol, xsocket.SO_RCVBUF) == 128 * 1024
        assert get(tcp, xsocket.TCP_NODELAY) == 0
        sock.setsockopt(tcp, xsocket.TCP_NODELAY, 1)
        assert get(tcp, xsocket.TCP_NODELAY) == 1
        sock.setsockopt(tcp, xsocket.TCP_NODELAY, True)
        sock.setsockopt(sol, xsocket.SO_KEEPALIVE, 1)
        assert get(sol, xsocket.SO_KEEPALIVE) == 1
        sock.setsockopt(tcp, std_socket.TCP_KEEPIDLE, 30)
        assert get(tcp, std_socket.TCP_KEEPIDLE) == 30
        sock.setsockopt(sol, xsocket.SO_SNDBUF, (256 * 1024).to_bytes(4, "little"))
        assert get(sol, xsocket.SO_SNDBUF) == 256 * 1024
        assert get(sol, xsocket.SO_SNDBUF, 4) == (256 * 1024).to_bytes(4, "little")
        assert get(sol, std_socket.SO_TYPE) == std_socket.SOCK_STREAM
        # the daemon's own names for the same options
        assert sock.lib.getsockopt(sock.qd, "TCP_NODELAY") == 1
        with pytest.raises(OSError) as info:
            sock.setsockopt(std_socket.IPPROTO_IP, std_socket.IP_TOS, 0x10)
        assert info.value.errno == errno.ENOPROTOOPT
        with pytest.raises(OSError) as info:
            sock.setsockopt(sol, xsocket.SO_RCVBUF, 1 << 20)  # connected: too late
        assert info.value.errno == errno.EISCONN
        sock.sendall(b"ok")
        assert recv_exactly(sock, 2) == b"ok"


# =====================================================================================
# errors
# =====================================================================================
def test_connection_refused(daemon: Daemon) -> None:
    with pytest.raises(ConnectionRefusedError):
        xsocket.create_connection((FAR_IP, 9), timeout=10)
    with xsocket.socket() as sock:
        assert sock.connect_ex((FAR_IP, 9)) == errno.ECONNREFUSED


def test_address_in_use_and_not_connected(daemon: Daemon) -> None:
    with xsocket.create_server(("", 8000)):
        with pytest.raises(OSError) as info:
            xsocket.create_server(("", 8000))
        assert info.value.errno == errno.EADDRINUSE
        assert "while attempting to bind" in str(info.value)
    with xsocket.socket() as sock:
        with pytest.raises(OSError) as info:
            sock.getpeername()
        assert info.value.errno == errno.ENOTCONN
        with pytest.raises(OSError) as info:
            sock.recv(1)
        assert info.value.errno == errno.ENOTCONN


def test_reset_by_peer(daemon: Daemon) -> None:
    far = daemon.far
    assert far is not None
    with xsocket.create_server(("", 8000)) as server:
        fqd, fqt = far.connect((OUR_IP, 8000))
        conn, _ = server.accept()
        far.wait_ok(fqt)
        with conn:
            far.abort(fqd)
            with pytest.raises(ConnectionResetError):
                conn.settimeout(10)
                conn.recv(10)


def test_unsupported(daemon: Daemon) -> None:
    with pytest.raises(ValueError):
        xsocket.create_server(("", 8000), reuse_port=True)
    with pytest.raises(OSError):
        xsocket.socket(std_socket.AF_INET6)
    with pytest.raises(OSError):
        xsocket.socket(std_socket.AF_INET, std_socket.SOCK_DGRAM)
    assert not xsocket.has_dualstack_ipv6()
    assert xsocket.SHUT_WR == std_socket.SHUT_WR
    assert xsocket.gethostname == std_socket.gethostname  # the rest is the stdlib's


def test_unclosed_socket_warns_and_is_closed(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    sock = xsocket.create_connection((FAR_IP, ECHO_PORT))
    qd = sock.qd
    lib = sock.lib
    with pytest.warns(ResourceWarning):
        del sock
        import gc

        gc.collect()
    # closed at the next call through the shared Lib
    with xsocket.create_connection((FAR_IP, ECHO_PORT)):
        assert qd not in lib.descriptors()


# =====================================================================================
# threads
# =====================================================================================
def test_many_threads_share_one_lib(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(ECHO_PORT)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            payload = pattern(200_000 + i * 1000, seed=100 + i)
            with xsocket.create_connection((FAR_IP, ECHO_PORT), timeout=30) as sock:
                for start in range(0, len(payload), 50_000):
                    part = payload[start : start + 50_000]
                    sock.sendall(part)
                    assert recv_exactly(sock, len(part)) == part
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert xsocket.default_lib().descriptors() == set()


def test_blocked_recv_in_one_thread_does_not_block_another(daemon: Daemon) -> None:
    far = daemon.far
    assert far is not None
    with xsocket.create_server(("", 8000)) as server:
        fqd, fqt = far.connect((OUR_IP, 8000))
        conn, _ = server.accept()
        far.wait_ok(fqt)
        received: list[bytes] = []
        reader = threading.Thread(target=lambda: received.append(conn.recv(100)))
        reader.start()
        time.sleep(0.1)
        # meanwhile this thread sends on the same socket and makes another connection
        conn.sendall(b"from the main thread")
        assert far.recv_exactly(fqd, 20) == b"from the main thread"
        _fqd2, fqt2 = far.connect((OUR_IP, 8000))
        conn2, _ = server.accept()
        far.wait_ok(fqt2)
        conn2.close()
        assert reader.is_alive()
        far.push(fqd, b"wake up")
        reader.join(10)
        assert received == [b"wake up"]
        conn.close()


# =====================================================================================
# the lean data path: standing pop, armed accepts, sends that do not wait
# =====================================================================================
def wait_for(predicate: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def handed_over(engine: object, qd: int | None, start: int, size: int) -> bool:
    """``size`` bytes arrived since ``rcv_nxt`` was ``start`` and none waits in the stack."""
    rod = engine.snapshot(qd)["ordered_delivery"]  # type: ignore[attr-defined]
    return (rod["rcv_nxt"] - start) % (1 << 32) == size and rod["recv_queue_bytes"] == 0


def test_data_reaches_the_socket_before_recv_asks_for_it(daemon: Daemon) -> None:
    """The standing pop: after a first recv, the stack hands arriving data over at once
    (its receive queue is empty again) and recv takes it from what has arrived."""
    far, engine = daemon.far, daemon.engine
    assert far is not None and engine is not None
    with xsocket.create_server(("", 8000)) as server:
        fqd, fqt = far.connect((OUR_IP, 8000))
        conn, _ = server.accept()
        far.wait_ok(fqt)
        with conn:
            conn.settimeout(10)
            far.push(fqd, b"first")
            assert conn.recv(100) == b"first"  # then the pop is re-armed...
            conn.getsockname()  # ...and sent with this request
            qd = conn.qd
            start = engine.snapshot(qd)["ordered_delivery"]["rcv_nxt"]
            far.wait_ok(far.push(fqd, b"arrived early"))
            wait_for(lambda: handed_over(engine, qd, start, 13), "the data to be handed over")
            conn.settimeout(10)
            assert conn.recv(100) == b"arrived early"


def test_close_with_received_data_unread_resets_the_connection(daemon: Daemon) -> None:
    far, engine = daemon.far, daemon.engine
    assert far is not None and engine is not None
    with xsocket.create_server(("", 8000)) as server:
        fqd, fqt = far.connect((OUR_IP, 8000))
        conn, _ = server.accept()
        far.wait_ok(fqt)
        conn.settimeout(10)
        far.push(fqd, b"read")
        assert conn.recv(100) == b"read"
        conn.getsockname()  # the re-armed pop goes with this request
        qd = conn.qd
        start = engine.snapshot(qd)["ordered_delivery"]["rcv_nxt"]
        far.wait_ok(far.push(fqd, b"never read"))
        wait_for(lambda: handed_over(engine, qd, start, 10), "the data to be handed over")
        wait_for(lambda: conn.lib.poll(), "the pop's completion to reach this process")
        conn.close()  # the bytes are in this process, unread: RST, as Linux
        with pytest.raises(OSError) as info:
            far.recv_until_eof(fqd)
        assert info.value.errno == errno.ECONNRESET


def test_a_burst_of_connections_does_not_overflow_a_backlog_of_one(daemon: Daemon) -> None:
    """Accepts are armed ahead: ten connections at once with listen(1) all come through
    the accept queue without a drop."""
    far, engine = daemon.far, daemon.engine
    assert far is not None and engine is not None
    before = engine.stats()["stack"].get("tcp_drop_accept_queue_full", 0)
    with xsocket.socket() as server:
        server.bind(("", 8000))
        server.listen(1)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # arms the accepts
        server.setblocking(True)
        server.getsockname()  # a request: the armed accepts went out before its answer
        burst = [far.connect((OUR_IP, 8000)) for _ in range(10)]
        for _fqd, fqt in burst:
            far.wait_ok(fqt)
        conns = [server.accept()[0] for _ in burst]
        assert len({c.qd for c in conns}) == 10
        for conn in conns:
            conn.close()
    assert engine.stats()["stack"].get("tcp_drop_accept_queue_full", 0) == before


def test_sendall_does_not_wait_for_the_send_buffer_below_the_bound(daemon: Daemon) -> None:
    """The far end reads nothing and its window and our send buffer are small: sendall
    still returns while up to SEND_BUFFER bytes wait for room, and they all arrive once the
    far end reads."""
    far = daemon.far
    assert far is not None
    data = pattern(xsocket.SEND_BUFFER // 2, seed=5)
    with xsocket.create_server(("", 8000)) as server:
        fqd, fqt = far.connect((OUR_IP, 8000))
        conn, _ = server.accept()
        far.wait_ok(fqt)
        with conn:
            conn.setsockopt(xsocket.SOL_SOCKET, xsocket.SO_SNDBUF, 64 * 1024)
            conn.sendall(data)  # more than the send buffer and the window take
            assert conn.lib.pending(), "every push already completed: nothing was bounded"
            assert sha(far.recv_exactly(fqd, len(data))) == sha(data)
