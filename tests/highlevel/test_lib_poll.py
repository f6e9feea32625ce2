"""The two calls ``xdpstack.Lib`` gained for event loops and high-level sockets:
``poll()`` (process what arrived, without blocking; the completed tokens) and
``discard(qt)`` (forget a token whose result is not wanted)."""

from __future__ import annotations

import select
import time

from farapps import FarApps
from harness import FAR_IP, Daemon

import xdpstack


def wait_readable(lib: xdpstack.Lib, timeout: float = 10.0) -> None:
    assert select.select([lib.fileno()], [], [], timeout)[0], "nothing from the daemon"


def test_poll_lists_completed_tokens_without_blocking(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(7000)
    with daemon.connect() as lib:
        qd = lib.socket()
        connect_qt = lib.connect(qd, (FAR_IP, 7000))
        started = time.monotonic()
        ready: list[int] = []
        while connect_qt not in ready:
            ready = lib.poll()
            if connect_qt not in ready:
                wait_readable(lib)
        assert time.monotonic() - started < 5
        assert lib.poll() == [connect_qt]  # listed until taken
        lib.wait(connect_qt, 0)
        assert lib.poll() == []

        pop_qt = lib.pop(qd)
        push_qt = lib.push(qd, b"ping")
        deadline = time.monotonic() + 10
        while set(lib.poll()) != {pop_qt, push_qt}:
            assert time.monotonic() < deadline
            wait_readable(lib, 1)
        assert lib.wait(pop_qt, 0).data == b"ping"
        assert lib.poll() == [push_qt]
        lib.wait(push_qt, 0)
        lib.close(qd)


def test_discard_drops_the_token_and_its_late_completion(daemon: Daemon, far: FarApps) -> None:
    far.echo_server(7000)
    with daemon.connect() as lib:
        qd = lib.socket()
        lib.wait(lib.connect(qd, (FAR_IP, 7000)), 10)
        pop_qt = lib.pop(qd)
        lib.discard(pop_qt)
        lib.discard(pop_qt)  # twice: ignored
        lib.discard(12345)  # never issued: ignored
        assert pop_qt not in lib.pending()
        lib.close(qd)  # the pop is cancelled: its completion comes and is dropped
        qd2 = lib.socket()
        lib.wait(lib.connect(qd2, (FAR_IP, 7000)), 10)
        lib.wait(lib.push(qd2, b"x"), 10)
        assert lib.wait(lib.pop(qd2), 10).data == b"x"
        assert lib.poll() == [] and lib.pending() == []
        lib.close(qd2)
