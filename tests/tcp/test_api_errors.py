"""Application-facing errors: each misuse raises ``OSError`` with the errno a Linux
socket gives for it, and the socket-address getters report the right endpoints."""

from __future__ import annotations

import errno

import pytest
from pair import A_IP, B_IP, PeerPair

from xdpstackd.inetstack.config import TcpConfig


def raises_errno(code: int, fn, *args) -> None:
    with pytest.raises(OSError) as exc:
        fn(*args)
    assert exc.value.errno == code, exc.value


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.a.push(999, b"x", p.now),
        lambda p: p.a.pop(999, None, p.now),
        lambda p: p.a.close(999, p.now),
        lambda p: p.a.abort(999, p.now),
        lambda p: p.a.bind(999, (A_IP, 1)),
        lambda p: p.a.listen(999, 1),
        lambda p: p.a.accept(999),
        lambda p: p.a.connect(999, (B_IP, 80), p.now),
        lambda p: p.a.setsockopt(999, "TCP_NODELAY", 1),
        lambda p: p.a.getsockopt(999, "TCP_NODELAY"),
        lambda p: p.a.getsockname(999),
        lambda p: p.a.getpeername(999),
        lambda p: p.a.snapshot(999),
        lambda p: p.a.shutdown(999, p.now),
    ],
)
def test_unknown_descriptor_is_ebadf(call) -> None:
    p = PeerPair()
    raises_errno(errno.EBADF, call, p)


def test_a_closed_descriptor_is_ebadf() -> None:
    p = PeerPair()
    qd = p.a.socket()
    p.a.close(qd, p.now)
    raises_errno(errno.EBADF, p.a.bind, qd, (A_IP, 5000))
    raises_errno(errno.EBADF, p.a.close, qd, p.now)


def test_binding_a_port_in_use_is_eaddrinuse() -> None:
    p = PeerPair()
    q1, q2 = p.a.socket(), p.a.socket()
    p.a.bind(q1, (A_IP, 5000))
    raises_errno(errno.EADDRINUSE, p.a.bind, q2, (A_IP, 5000))
    raises_errno(errno.EADDRINUSE, p.a.bind, q2, ("0.0.0.0", 5000))
    p.a.bind(q2, (A_IP, 5001))


def test_binding_twice_is_einval() -> None:
    p = PeerPair()
    qd = p.a.socket()
    p.a.bind(qd, (A_IP, 5000))
    raises_errno(errno.EINVAL, p.a.bind, qd, (A_IP, 5001))


def test_binding_a_foreign_address_is_eaddrnotavail() -> None:
    p = PeerPair()
    raises_errno(errno.EADDRNOTAVAIL, p.a.bind, p.a.socket(), (B_IP, 5000))


def test_listen_on_a_connected_socket_is_einval() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    raises_errno(errno.EINVAL, p.a.listen, cqd, 4)
    raises_errno(errno.EINVAL, p.b.listen, sqd, 4)


def test_accept_on_a_socket_that_is_not_listening_is_einval() -> None:
    p = PeerPair()
    qd = p.a.socket()
    raises_errno(errno.EINVAL, p.a.accept, qd)
    p.a.bind(qd, (A_IP, 5000))
    raises_errno(errno.EINVAL, p.a.accept, qd)


@pytest.mark.parametrize("setup", ["fresh", "bound", "listening"])
def test_push_and_pop_before_connect_are_enotconn(setup: str) -> None:
    p = PeerPair()
    qd = p.a.socket()
    if setup != "fresh":
        p.a.bind(qd, (A_IP, 5000))
    if setup == "listening":
        p.a.listen(qd, 4)
    raises_errno(errno.ENOTCONN, p.a.push, qd, b"x", p.now)
    raises_errno(errno.ENOTCONN, p.a.pop, qd, None, p.now)
    raises_errno(errno.ENOTCONN, p.a.getpeername, qd)


def test_push_and_pop_while_connecting_are_enotconn() -> None:
    p = PeerPair()
    p.filter = lambda who, h, d: False
    qd = p.a.socket()
    p.a.connect(qd, (B_IP, 8080), p.now)
    raises_errno(errno.ENOTCONN, p.a.push, qd, b"x", p.now)
    raises_errno(errno.ENOTCONN, p.a.pop, qd, None, p.now)


def test_connect_on_a_connected_socket_is_eisconn() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    raises_errno(errno.EISCONN, p.a.connect, cqd, (B_IP, 8080), p.now)
    raises_errno(errno.EISCONN, p.b.connect, sqd, (A_IP, 1234), p.now)


def test_connect_on_a_listening_socket_is_eisconn() -> None:
    p = PeerPair()
    qd = p.a.socket()
    p.a.bind(qd, (A_IP, 5000))
    p.a.listen(qd, 4)
    raises_errno(errno.EISCONN, p.a.connect, qd, (B_IP, 8080), p.now)


def test_connect_while_a_connect_is_in_progress_is_ealready() -> None:
    p = PeerPair()
    p.filter = lambda who, h, d: False
    qd = p.a.socket()
    p.a.connect(qd, (B_IP, 8080), p.now)
    raises_errno(errno.EALREADY, p.a.connect, qd, (B_IP, 8080), p.now)


def test_unknown_socket_option_is_enoprotoopt() -> None:
    p = PeerPair()
    qd = p.a.socket()
    raises_errno(errno.ENOPROTOOPT, p.a.setsockopt, qd, "TCP_CORK", 1)
    raises_errno(errno.ENOPROTOOPT, p.a.getsockopt, qd, "SO_REUSEPORT")
    raises_errno(errno.ENOPROTOOPT, p.a.setsockopt, qd, 12345, 1)


def test_bad_option_values_are_einval() -> None:
    p = PeerPair()
    qd = p.a.socket()
    raises_errno(errno.EINVAL, p.a.setsockopt, qd, "SO_RCVBUF", 10)
    raises_errno(errno.EINVAL, p.a.setsockopt, qd, "TCP_KEEPCNT", 0)


def test_pop_size_must_be_positive() -> None:
    p = PeerPair()
    _, cqd, _ = p.connect()
    raises_errno(errno.EINVAL, p.a.pop, cqd, 0, p.now)


def test_connect_to_port_zero_is_einval() -> None:
    p = PeerPair()
    raises_errno(errno.EINVAL, p.a.connect, p.a.socket(), (B_IP, 0), p.now)


def test_getsockname_and_getpeername_report_both_endpoints() -> None:
    p = PeerPair(TcpConfig(ephemeral_ports=(50000, 50010)))
    qd = p.a.socket()
    assert p.a.getsockname(qd) == ("0.0.0.0", 0)
    lqd, cqd, sqd = p.connect()
    a_port = p.a.getsockname(cqd)[1]
    assert 50000 <= a_port <= 50010  # an ephemeral port from the configured range
    assert p.a.getsockname(cqd) == (A_IP, a_port)
    assert p.a.getpeername(cqd) == (B_IP, 8080)
    assert p.b.getsockname(sqd) == (B_IP, 8080)
    assert p.b.getpeername(sqd) == (A_IP, a_port)
    assert p.b.getsockname(lqd) == (B_IP, 8080)
    raises_errno(errno.ENOTCONN, p.b.getpeername, lqd)


def test_bound_socket_reports_its_address_before_connecting() -> None:
    p = PeerPair()
    qd = p.a.socket()
    p.a.bind(qd, (A_IP, 4321))
    assert p.a.getsockname(qd) == (A_IP, 4321)
    qd0 = p.a.socket()
    p.a.bind(qd0, ("0.0.0.0", 0))  # port 0: the stack picks one
    assert p.a.getsockname(qd0)[1] != 0


def test_option_names_are_accepted_in_any_case_and_read_back() -> None:
    p = PeerPair()
    qd = p.a.socket()
    p.a.setsockopt(qd, "tcp_nodelay", 1)
    assert p.a.getsockopt(qd, "TCP_NODELAY") == 1
    p.a.setsockopt(qd, "SO_SNDBUF", 65536)
    assert p.a.getsockopt(qd, "SO_SNDBUF") == 65536


def test_so_rcvbuf_after_connect_is_rejected() -> None:
    p = PeerPair()
    _, cqd, _ = p.connect()
    with pytest.raises(OSError):
        p.a.setsockopt(cqd, "SO_RCVBUF", 65536)
