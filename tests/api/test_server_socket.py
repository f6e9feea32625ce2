"""The API socket file: mode and group, stale files, a live daemon on the same path,
removal on stop; and how the library reports a daemon it cannot reach."""

from __future__ import annotations

import asyncio
import errno
import grp
import os
import socket
import stat

import pytest
from harness import Daemon

import xdpstack
from xdpstackd.api.server import ApiServer


class NullEngine:
    """Enough of an Engine for the server's socket handling."""

    def __init__(self) -> None:
        self.completion_sink = lambda completion: None


def run(coro):
    return asyncio.run(coro)


def test_default_mode_is_0660_and_stop_removes_the_file(tmp_path) -> None:
    path = str(tmp_path / "run" / "xdpstackd.sock")  # the directory is created
    daemon = Daemon(path).start()
    try:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
    finally:
        daemon.stop()
    assert not os.path.exists(path)


@pytest.mark.parametrize("by_name", [False, True])
def test_mode_and_group(tmp_path, by_name: bool) -> None:
    gid = os.getgid()
    group = grp.getgrgid(gid).gr_name if by_name else gid
    path = str(tmp_path / "s.sock")

    async def main() -> None:
        server = ApiServer(NullEngine(), path, group=group, mode=0o600)
        await server.start()
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_gid == gid
        await server.stop()

    run(main())
    assert not os.path.exists(path)


def test_unknown_group(tmp_path) -> None:
    path = str(tmp_path / "s.sock")

    async def main() -> None:
        server = ApiServer(NullEngine(), path, group="no-such-group-xdpstack")
        with pytest.raises(ValueError, match="no-such-group"):
            await server.start()

    run(main())
    assert not os.path.exists(path)


def test_stale_socket_file_is_replaced(tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays, nobody listens: a crashed daemon's leftover
    daemon = Daemon(path).start()
    try:
        with daemon.connect() as lib:
            lib.socket()
    finally:
        daemon.stop()


def test_refuses_a_path_where_a_live_daemon_listens(tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    daemon = Daemon(path).start()
    try:

        async def second() -> None:
            await ApiServer(NullEngine(), path).start()

        with pytest.raises(OSError) as info:
            run(second())
        assert info.value.errno == errno.EADDRINUSE
        assert info.value.filename == path
        with daemon.connect() as lib:  # the first one is untouched
            lib.socket()
    finally:
        daemon.stop()


def test_refuses_to_remove_a_regular_file(tmp_path) -> None:
    path = tmp_path / "s.sock"
    path.write_text("not a socket")

    async def main() -> None:
        await ApiServer(NullEngine(), str(path)).start()

    with pytest.raises(FileExistsError):
        run(main())
    assert path.read_text() == "not a socket"


def test_stop_leaves_a_replaced_file_alone(tmp_path) -> None:
    path = str(tmp_path / "s.sock")

    async def main() -> None:
        server = ApiServer(NullEngine(), path)
        await server.start()
        os.unlink(path)
        with open(path, "w") as f:
            f.write("someone else's")
        await server.stop()

    run(main())
    with open(path) as f:
        assert f.read() == "someone else's"


# ============================================================ unreachable daemon (client)
def test_missing_socket_names_the_path(tmp_path) -> None:
    path = str(tmp_path / "nothing.sock")
    with pytest.raises(FileNotFoundError) as info:
        xdpstack.connect(path)
    assert info.value.filename == path
    assert path in str(info.value)


def test_dead_socket_names_the_path(tmp_path) -> None:
    path = str(tmp_path / "dead.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    with pytest.raises(ConnectionRefusedError) as info:
        xdpstack.connect(path)
    assert path in str(info.value)


def test_environment_names_the_socket(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "env.sock")
    monkeypatch.setenv("XDPSTACK_SOCKET", path)
    with pytest.raises(FileNotFoundError) as info:
        xdpstack.connect()
    assert info.value.filename == path
    monkeypatch.delenv("XDPSTACK_SOCKET")
    assert xdpstack.default_socket_path() == xdpstack.DEFAULT_SOCKET_PATH


def test_daemon_going_away_mid_wait(tmp_path) -> None:
    daemon = Daemon(str(tmp_path / "s.sock")).start()
    lib = daemon.connect()
    try:
        lqd = lib.socket()
        lib.bind(lqd, ("10.0.0.1", 8080))
        lib.listen(lqd)
        qt = lib.accept(lqd)
        daemon.stop()
        with pytest.raises(ConnectionError) as info:
            lib.wait(qt, 10)
        assert info.value.filename == daemon.path
        with pytest.raises(ConnectionError):
            lib.socket()
    finally:
        daemon.stop()
        lib.close_all()
