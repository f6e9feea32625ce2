"""xdpstackd against the Linux kernel's TCP on a veth pair: handshakes both ways, names,
close from either side, RST cases, many connections at once.

These tests share one daemon per module (each uses its own ports and connections); the
kernel peers are ``tests/peers/tcp_peer.py`` in the peer namespace.
"""

from __future__ import annotations

import errno
import random
import time

import pytest
from netfixtures import kernel_tcp_client, kernel_tcp_server, pattern_bytes, pattern_sha256
from xdpd_harness import (
    EPHEMERAL_PORTS,
    DaemonProcess,
    echo_exchange,
    pop_until_eof,
    sha256,
)

pytestmark = pytest.mark.integration

IO_TIMEOUT = 20.0


def in_ephemeral_range(port: int) -> bool:
    return EPHEMERAL_PORTS[0] <= port <= EPHEMERAL_PORTS[1]


# --------------------------------------------------------------------------- handshakes
def test_xdpstack_connects_to_kernel_echo_server_and_exchanges_data(
    module_daemon: DaemonProcess,
) -> None:
    d = module_daemon
    with kernel_tcp_server(d.peer_ns, 0, "echo") as server:
        lib = d.client()
        qd = lib.socket()
        result = lib.wait(lib.connect(qd, (d.peer_ip, server.port)), timeout=IO_TIMEOUT)
        assert result.qd == qd

        local = lib.getsockname(qd)
        assert local[0] == d.stack_ip  # shared mode: the interface's kernel address
        assert in_ephemeral_range(local[1]), local
        assert lib.getpeername(qd) == (d.peer_ip, server.port)

        data = pattern_bytes(300_000, seed=1)
        assert echo_exchange(lib, qd, data, IO_TIMEOUT) == data
        lib.close(qd)

        (conn,) = server.results(1, timeout=IO_TIMEOUT)
        assert conn["error"] is None, conn
        assert conn["eof"] is True
        assert conn["peer"] == f"{local[0]}:{local[1]}"  # the kernel sees the same 4-tuple
        assert conn["local"] == f"{d.peer_ip}:{server.port}"
        assert conn["rx_bytes"] == len(data)
        assert conn["rx_sha256"] == conn["tx_sha256"] == sha256(data)


def test_kernel_client_connects_to_xdpstack_listener_and_exchanges_data(
    module_daemon: DaemonProcess,
) -> None:
    d = module_daemon
    port = 7101
    nbytes = 300_000
    lib = d.client()
    listener = lib.socket()
    lib.bind(listener, (d.stack_ip, port))
    lib.listen(listener, 16)
    assert lib.getsockname(listener) == (d.stack_ip, port)
    accept_qt = lib.accept(listener)

    client = kernel_tcp_client(d.peer_ns, d.stack_ip, port, "echo", nbytes=nbytes, seed=2)
    accepted = lib.wait(accept_qt, timeout=IO_TIMEOUT)
    qd = accepted.new_qd
    assert qd is not None and qd != listener
    assert accepted.addr is not None and accepted.addr[0] == d.peer_ip
    assert lib.getsockname(qd) == (d.stack_ip, port)
    assert lib.getpeername(qd) == accepted.addr

    # echo back everything until the kernel client has had all of it back and closes
    echoed = 0
    while True:
        data = lib.wait(lib.pop(qd), timeout=IO_TIMEOUT).data
        if not data:
            break
        lib.wait(lib.push(qd, data), timeout=IO_TIMEOUT)
        echoed += len(data)
    lib.close(qd)
    lib.close(listener)

    conn = client.result(timeout=IO_TIMEOUT)
    assert conn["error"] is None, conn
    assert conn["local"] == f"{accepted.addr[0]}:{accepted.addr[1]}"
    assert conn["peer"] == f"{d.stack_ip}:{port}"
    assert echoed == nbytes
    assert conn["tx_sha256"] == conn["rx_sha256"] == pattern_sha256(nbytes, seed=2)


def test_getsockname_and_getpeername_on_unconnected_and_bound_sockets(
    module_daemon: DaemonProcess,
) -> None:
    d = module_daemon
    lib = d.client()
    qd = lib.socket()
    with pytest.raises(OSError) as info:
        lib.getpeername(qd)
    assert info.value.errno == errno.ENOTCONN
    lib.bind(qd, (d.stack_ip, 7102))
    assert lib.getsockname(qd) == (d.stack_ip, 7102)
    with pytest.raises(OSError) as info:
        lib.getpeername(qd)
    assert info.value.errno == errno.ENOTCONN
    lib.close(qd)


# --------------------------------------------------------------------------- close
def test_xdpstack_close_gives_the_kernel_peer_eof(module_daemon: DaemonProcess) -> None:
    d = module_daemon
    with kernel_tcp_server(d.peer_ns, 0, "sink") as server:
        lib = d.client()
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, server.port)), timeout=IO_TIMEOUT)
        data = pattern_bytes(200_000, seed=3)
        lib.wait(lib.push(qd, data), timeout=IO_TIMEOUT)
        lib.close(qd)  # graceful: the queued data, then FIN

        (conn,) = server.results(1, timeout=IO_TIMEOUT)
        assert conn["error"] is None, conn
        assert conn["eof"] is True
        assert conn["rx_bytes"] == len(data)
        assert conn["rx_sha256"] == sha256(data)


def test_kernel_close_gives_xdpstack_pop_empty_bytes(module_daemon: DaemonProcess) -> None:
    d = module_daemon
    nbytes = 200_000
    # "source": the kernel sends, then shuts down its side (FIN), then reads until EOF
    with kernel_tcp_server(d.peer_ns, 0, "source", nbytes=nbytes, seed=4) as server:
        lib = d.client()
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, server.port)), timeout=IO_TIMEOUT)
        total, digest = pop_until_eof(lib, qd, IO_TIMEOUT)
        assert (total, digest) == (nbytes, pattern_sha256(nbytes, seed=4))
        # EOF stays EOF
        assert lib.wait(lib.pop(qd), timeout=IO_TIMEOUT).data == b""
        # half-closed by the peer: this side can still send
        lib.wait(lib.push(qd, b"after your FIN"), timeout=IO_TIMEOUT)
        lib.close(qd)

        (conn,) = server.results(1, timeout=IO_TIMEOUT)
        assert conn["error"] is None, conn
        assert conn["eof"] is True
        assert conn["rx_bytes"] == len(b"after your FIN")


def test_kernel_client_close_gives_xdpstack_acceptor_empty_bytes(
    module_daemon: DaemonProcess,
) -> None:
    d = module_daemon
    port = 7103
    nbytes = 100_000
    lib = d.client()
    listener = lib.socket()
    lib.bind(listener, (d.stack_ip, port))
    lib.listen(listener, 4)
    accept_qt = lib.accept(listener)
    client = kernel_tcp_client(d.peer_ns, d.stack_ip, port, "source", nbytes=nbytes, seed=5)
    qd = lib.wait(accept_qt, timeout=IO_TIMEOUT).new_qd
    total, digest = pop_until_eof(lib, qd, IO_TIMEOUT)
    assert (total, digest) == (nbytes, pattern_sha256(nbytes, seed=5))
    lib.close(qd)
    lib.close(listener)
    conn = client.result(timeout=IO_TIMEOUT)
    assert conn["error"] is None and conn["eof"] is True, conn


# --------------------------------------------------------------------------- resets
def test_rst_from_kernel_peer_on_established_connection_raises_connection_reset(
    module_daemon: DaemonProcess,
) -> None:
    d = module_daemon
    # The kernel sink gives up after 1 s without data and closes with SO_LINGER 0: RST.
    with kernel_tcp_server(d.peer_ns, 0, "sink", linger_rst=True, io_timeout=1.0) as server:
        lib = d.client()
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, server.port)), timeout=IO_TIMEOUT)
        lib.wait(lib.push(qd, b"some data before the reset"), timeout=IO_TIMEOUT)
        pop_qt = lib.pop(qd)  # pending when the RST comes
        with pytest.raises(ConnectionResetError) as info:
            lib.wait(pop_qt, timeout=IO_TIMEOUT)
        assert info.value.errno == errno.ECONNRESET
        assert info.value.qt == pop_qt and info.value.qd == qd
        (conn,) = server.results(1, timeout=IO_TIMEOUT)
        assert conn["error"] == "ETIMEDOUT"  # how the peer came to reset: its io timeout
        assert conn["rx_bytes"] == len(b"some data before the reset")
        lib.close(qd)


def test_rst_from_kernel_peer_after_our_fin_raises_connection_reset(
    module_daemon: DaemonProcess,
) -> None:
    d = module_daemon
    # The sink reads until our FIN, then closes with SO_LINGER 0: RST while we still read.
    with kernel_tcp_server(d.peer_ns, 0, "sink", linger_rst=True) as server:
        lib = d.client()
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, server.port)), timeout=IO_TIMEOUT)
        lib.wait(lib.push(qd, b"x" * 10_000), timeout=IO_TIMEOUT)
        pop_qt = lib.pop(qd)
        lib.shutdown(qd)  # FIN; the receive side stays open
        with pytest.raises(ConnectionResetError):
            lib.wait(pop_qt, timeout=IO_TIMEOUT)
        (conn,) = server.results(1, timeout=IO_TIMEOUT)
        assert conn["eof"] is True and conn["rx_bytes"] == 10_000, conn
        lib.close(qd)


def test_abort_resets_the_kernel_peer(module_daemon: DaemonProcess) -> None:
    d = module_daemon
    with kernel_tcp_server(d.peer_ns, 0, "sink") as server:
        lib = d.client()
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, server.port)), timeout=IO_TIMEOUT)
        lib.wait(lib.push(qd, b"then abort"), timeout=IO_TIMEOUT)
        lib.abort(qd)
        (conn,) = server.results(1, timeout=IO_TIMEOUT)
        assert conn["error"] == "ECONNRESET", conn
        assert conn["eof"] is False


def test_close_with_unread_data_resets_the_kernel_peer(module_daemon: DaemonProcess) -> None:
    d = module_daemon
    nbytes = 100_000
    # "source" sends, then FIN, then waits for our EOF: it sees the RST instead
    with kernel_tcp_server(d.peer_ns, 0, "source", nbytes=nbytes) as server:
        lib = d.client()
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, server.port)), timeout=IO_TIMEOUT)
        first = lib.wait(lib.pop(qd, 1000), timeout=IO_TIMEOUT).data  # some data, not all
        assert 0 < len(first) <= 1000
        lib.close(qd)  # unread data left: RST, as Linux does
        (conn,) = server.results(1, timeout=IO_TIMEOUT)
        assert conn["error"] == "ECONNRESET", conn


def test_kernel_keeps_the_ports_the_daemon_does_not_use(module_daemon: DaemonProcess) -> None:
    """Shared address: a kernel server in the stack namespace, on the address the daemon
    also uses, is reachable while the daemon runs (its frames are XDP_PASSed)."""
    d = module_daemon
    with kernel_tcp_server(d.stack_ns, 7105, "echo", host=d.stack_ip) as server:
        client = kernel_tcp_client(d.peer_ns, d.stack_ip, server.port, "echo", nbytes=100_000)
        conn = client.result(timeout=IO_TIMEOUT)
        assert conn["error"] is None, conn
        assert conn["rx_sha256"] == conn["tx_sha256"] == pattern_sha256(100_000)
    # ... and a port nobody listens on is refused by the kernel there
    refused = kernel_tcp_client(d.peer_ns, d.stack_ip, 7106, "sink", connect_timeout=5)
    assert refused.result(timeout=IO_TIMEOUT)["error"] == "ECONNREFUSED"


def test_connect_to_closed_kernel_port_raises_connection_refused(
    module_daemon: DaemonProcess,
) -> None:
    d = module_daemon
    # a port nothing listens on in the peer namespace: its kernel answers the SYN with RST
    with kernel_tcp_server(d.peer_ns, 0, "echo") as server:
        closed_port = server.port
    lib = d.client()
    qd = lib.socket()
    t0 = time.monotonic()
    connect_qt = lib.connect(qd, (d.peer_ip, closed_port))
    with pytest.raises(ConnectionRefusedError) as info:
        lib.wait(connect_qt, timeout=IO_TIMEOUT)
    assert info.value.errno == errno.ECONNREFUSED
    assert info.value.qt == connect_qt and info.value.qd == qd
    assert time.monotonic() - t0 < 5.0  # answered by the RST, not by a timeout
    lib.close(qd)


# --------------------------------------------------------------------------- many at once
def test_200_concurrent_connections_each_echo_their_own_data(
    module_daemon: DaemonProcess,
) -> None:
    d = module_daemon
    count = 200
    size = 8192
    deadline = time.monotonic() + 90.0
    with kernel_tcp_server(d.peer_ns, 0, "echo", backlog=1024) as server:
        lib = d.client()
        payload = {}
        received: dict[int, bytearray] = {}
        pending: dict[int, tuple[str, int]] = {}  # qt -> (kind, qd)
        for i in range(count):
            qd = lib.socket()
            payload[qd] = f"[connection {i:03d}]".encode() + random.Random(i).randbytes(size)
            received[qd] = bytearray()
            pending[lib.connect(qd, (d.peer_ip, server.port))] = ("connect", qd)
        names: dict[int, tuple[str, int]] = {}
        done = 0
        t0 = time.monotonic()
        while done < count:
            left = deadline - time.monotonic()
            assert left > 0, f"only {done} of {count} connections echoed their data in time"
            tokens = list(pending)
            index, result = lib.wait_any(tokens, timeout=left)
            kind, qd = pending.pop(tokens[index])
            if kind == "connect":
                names[qd] = lib.getsockname(qd)
                pending[lib.push(qd, payload[qd])] = ("push", qd)
                pending[lib.pop(qd)] = ("pop", qd)
            elif kind == "pop":
                assert result.data, f"qd {qd}: EOF after {len(received[qd])} bytes"
                received[qd] += result.data
                if len(received[qd]) < len(payload[qd]):
                    pending[lib.pop(qd)] = ("pop", qd)
                else:
                    assert received[qd] == payload[qd], f"qd {qd} got other data back"
                    done += 1
        elapsed = time.monotonic() - t0
        assert len({port for _, port in names.values()}) == count  # distinct local ports
        for qd in payload:
            lib.close(qd)

        results = server.results(count, timeout=max(deadline - time.monotonic(), 10.0))
        by_peer = {r["peer"]: r for r in results}
        for qd, (ip, port) in names.items():
            conn = by_peer[f"{ip}:{port}"]
            assert conn["error"] is None and conn["eof"] is True, conn
            assert conn["rx_sha256"] == sha256(payload[qd])
        print(f"{count} connections echoed {count * size} bytes in {elapsed:.2f}s")


def test_100_kernel_clients_at_once_are_accepted_and_echoed_by_an_xdpstack_listener(
    module_daemon: DaemonProcess,
) -> None:
    d = module_daemon
    count = 100
    nbytes = 20_000
    port = 7104
    deadline = time.monotonic() + 90.0
    lib = d.client()
    listener = lib.socket()
    lib.bind(listener, (d.stack_ip, port))
    lib.listen(listener, count)
    pending: dict[int, tuple[str, int]] = {lib.accept(listener): ("accept", listener)}
    clients = kernel_tcp_client(d.peer_ns, d.stack_ip, port, "echo", nbytes=nbytes, count=count)
    accepted = 0
    finished = 0
    while finished < count:
        left = deadline - time.monotonic()
        assert left > 0, f"{accepted} accepted, {finished} of {count} echoed in time"
        tokens = list(pending)
        index, result = lib.wait_any(tokens, timeout=left)
        kind, qd = pending.pop(tokens[index])
        if kind == "accept":
            accepted += 1
            assert result.new_qd is not None and result.addr[0] == d.peer_ip
            pending[lib.pop(result.new_qd)] = ("pop", result.new_qd)
            if accepted < count:
                pending[lib.accept(listener)] = ("accept", listener)
        elif kind == "pop":
            if result.data:
                pending[lib.push(qd, result.data)] = ("push", qd)
                pending[lib.pop(qd)] = ("pop", qd)
            else:  # the kernel client had its bytes back and closed
                lib.close(qd)
                finished += 1
    lib.close(listener)
    results = clients.results(count, timeout=max(deadline - time.monotonic(), 10.0))
    for conn in results:
        assert conn["error"] is None, conn
        assert conn["rx_bytes"] == nbytes
        assert conn["rx_sha256"] == conn["tx_sha256"] == pattern_sha256(nbytes)
