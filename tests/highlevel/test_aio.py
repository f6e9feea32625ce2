"""``xdpstack.aio`` against the simulated-datapath daemon, under asyncio's default event
loop and under uvloop. Peers are the far stack's applications (``farapps.py``)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import socket as std_socket
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from farapps import FarApps
from harness import FAR_IP, OUR_IP, Daemon, pattern

from xdpstack import aio

ECHO_PORT = 7000
SOURCE_PORT = 7002

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a coroutine to completion on a new loop of the kind named by the parameter;
    fail on anything that reached the loop's exception handler."""
    errors: list[dict[str, Any]] = []

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        async def main() -> Any:
            loop = asyncio.get_running_loop()
            if request.param == "uvloop":
                assert isinstance(loop, uvloop.Loop)
            loop.set_exception_handler(lambda _loop, context: errors.append(context))
            return await asyncio.wait_for(coro, 60)

        if request.param == "uvloop":
            result = uvloop.run(main())
        else:
            result = asyncio.run(main())
        assert not errors, errors
        return result

    return runner


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def test_open_connection_echo(daemon: Daemon, far: FarApps, run: Runner) -> None:
    far.echo_server(ECHO_PORT)

    async def main() -> None:
        reader, writer = await aio.open_connection(FAR_IP, ECHO_PORT)
        assert type(reader) is asyncio.StreamReader
        assert type(writer) is asyncio.StreamWriter
        assert writer.get_extra_info("peername") == (FAR_IP, ECHO_PORT)
        ip, port = writer.get_extra_info("sockname")
        assert ip == OUR_IP and port > 0
        sock = writer.get_extra_info("socket")
        sock.setsockopt(std_socket.IPPROTO_TCP, std_socket.TCP_NODELAY, 1)
        assert sock.getsockopt(std_socket.IPPROTO_TCP, std_socket.TCP_NODELAY) == 1
        assert sock.getpeername() == (FAR_IP, ECHO_PORT)
        assert writer.can_write_eof()

        writer.write(b"first line\nsecond")
        writer.writelines([b" line\n", b"12345", b"tail:end;"])
        await writer.drain()
        assert await reader.readline() == b"first line\n"
        assert await reader.readline() == b"second line\n"
        assert await reader.readexactly(5) == b"12345"
        assert await reader.readuntil(b";") == b"tail:end;"
        writer.close()
        await writer.wait_closed()
        assert writer.is_closing()

    run(main())


def test_drain_with_large_writes_flow_control(daemon: Daemon, far: FarApps, run: Runner) -> None:
    far.echo_server(ECHO_PORT)
    payload = pattern(8_000_000, seed=5)

    async def main() -> None:
        reader, writer = await aio.open_connection(FAR_IP, ECHO_PORT)
        transport = writer.transport
        high = transport.get_write_buffer_limits()[1]
        paused = 0
        received = hashlib.sha256()
        count = 0

        async def receive() -> None:
            nonlocal count
            while data := await reader.read(1 << 20):
                received.update(data)
                count += len(data)

        task = asyncio.create_task(receive())
        step = 1 << 20
        for start in range(0, len(payload), step):
            writer.write(payload[start : start + step])
            if transport.get_write_buffer_size() > high:
                paused += 1
            await writer.drain()
            # drain returns once the buffer is at or below the low-water mark
            assert transport.get_write_buffer_size() <= high
        writer.write_eof()
        await task
        assert count == len(payload)
        assert received.hexdigest() == sha(payload)
        assert paused > 0  # the writes did go above the high-water mark
        writer.close()
        await writer.wait_closed()

    run(main())


def test_write_buffer_limits(daemon: Daemon, far: FarApps, run: Runner) -> None:
    far.echo_server(ECHO_PORT)

    async def main() -> None:
        reader, writer = await aio.open_connection(FAR_IP, ECHO_PORT)
        transport = writer.transport
        assert transport.get_write_buffer_limits() == (16384, 65536)
        transport.set_write_buffer_limits(high=1000)
        assert transport.get_write_buffer_limits() == (250, 1000)
        with pytest.raises(ValueError):
            transport.set_write_buffer_limits(high=10, low=20)
        writer.write(b"x" * 5000)
        assert transport.get_write_buffer_size() == 5000
        assert writer.transport.get_protocol()._paused  # pause_writing() was called
        await writer.drain()
        assert await reader.readexactly(5000) == b"x" * 5000
        writer.close()
        await writer.wait_closed()

    run(main())


def test_write_eof_then_read_to_eof(daemon: Daemon, far: FarApps, run: Runner) -> None:
    far.echo_server(ECHO_PORT)

    async def main() -> None:
        reader, writer = await aio.open_connection(FAR_IP, ECHO_PORT)
        writer.write(b"everything I have")
        writer.write_eof()
        with pytest.raises(RuntimeError):
            writer.write(b"more")
        assert await reader.read() == b"everything I have"
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()

    run(main())


def test_read_from_source_and_incomplete_read(daemon: Daemon, far: FarApps, run: Runner) -> None:
    data = pattern(300_000, seed=6)
    far.source_server(SOURCE_PORT, data)

    async def main() -> None:
        reader, writer = await aio.open_connection(FAR_IP, SOURCE_PORT, limit=1024)
        assert await reader.readexactly(100) == data[:100]
        # a small limit pauses reading (the transport holds what it popped meanwhile)
        await asyncio.sleep(0.05)
        assert await reader.readexactly(200_000) == data[100:200_100]
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await reader.readexactly(200_000)
        assert info.value.partial == data[200_100:]
        writer.close()
        await writer.wait_closed()

    run(main())


def test_many_concurrent_connections(daemon: Daemon, far: FarApps, run: Runner) -> None:
    far.echo_server(ECHO_PORT)

    async def one(i: int) -> None:
        payload = pattern(20_000 + i * 101, seed=1000 + i)
        reader, writer = await aio.open_connection(FAR_IP, ECHO_PORT)
        writer.write(payload)
        await writer.drain()
        assert await reader.readexactly(len(payload)) == payload
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(60)))

    run(main())


def test_start_server_echo_with_far_clients(daemon: Daemon, far: FarApps, run: Runner) -> None:
    async def main() -> None:
        handled = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal handled
            assert writer.get_extra_info("peername")[0] == FAR_IP
            assert writer.get_extra_info("sockname") == (OUR_IP, 8000)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            handled += 1
            writer.close()
            await writer.wait_closed()

        server = await aio.start_server(handle, "", 8000)
        assert server.is_serving()
        assert server.sockets[0].getsockname() == ("0.0.0.0", 8000)
        payloads = [pattern(50_000 + i * 997, seed=i) for i in range(25)]
        futures = [far.client((OUR_IP, 8000), p) for p in payloads]
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        for payload, got in zip(payloads, results):
            assert got.errno == 0 and sha(got.data) == sha(payload)
        server.close()
        assert not server.is_serving() and server.sockets == ()
        await server.wait_closed()
        assert handled == 25
        # the port is closed: a new connection is refused
        refused = await asyncio.wrap_future(far.client((OUR_IP, 8000), b"x"))
        assert refused.errno == errno.ECONNREFUSED

    run(main())


def test_server_wait_closed_waits_for_connections(
    daemon: Daemon, far: FarApps, run: Runner
) -> None:
    async def main() -> None:
        release = asyncio.Event()
        connected = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connected.set()
            await release.wait()
            writer.write(await reader.read())
            writer.close()

        async with await aio.start_server(handle, None, 8000) as server:
            result = far.client((OUR_IP, 8000), b"bye")
            await connected.wait()
            server.close()
            closing = asyncio.create_task(server.wait_closed())
            await asyncio.sleep(0.1)
            assert not closing.done()  # a connection is still open
            release.set()
            await asyncio.wait_for(closing, 10)
        got = await asyncio.wrap_future(result)
        assert bytes(got.data) == b"bye"

    run(main())


def test_serve_forever_and_cancel(daemon: Daemon, far: FarApps, run: Runner) -> None:
    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await reader.readline()
            writer.write(line.upper())
            await writer.drain()
            writer.close()

        server = await aio.start_server(handle, OUR_IP, 8000, start_serving=False)
        assert not server.is_serving()
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        got = await asyncio.wrap_future(far.client((OUR_IP, 8000), b"hello\n"))
        assert bytes(got.data) == b"HELLO\n"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()

    run(main())


def test_connection_refused(daemon: Daemon, run: Runner) -> None:
    async def main() -> None:
        with pytest.raises(ConnectionRefusedError):
            await aio.open_connection(FAR_IP, 9)

    run(main())


def test_abort_resets_the_peer(daemon: Daemon, run: Runner) -> None:
    far = daemon.far
    assert far is not None
    lqd = far.listen(9100)

    async def main() -> None:
        _reader, writer = await aio.open_connection(FAR_IP, 9100)
        accepted = await asyncio.to_thread(far.wait_ok, far.accept(lqd))
        fqd = accepted.new_qd
        qt = far.pop(fqd)
        writer.transport.abort()
        c = await asyncio.to_thread(far.completion, qt)
        assert c.errno == errno.ECONNRESET
        await writer.wait_closed()

    run(main())


def test_peer_reset_reaches_the_reader(daemon: Daemon, run: Runner) -> None:
    far = daemon.far
    assert far is not None
    lqd = far.listen(9100)

    async def main() -> None:
        reader, writer = await aio.open_connection(FAR_IP, 9100)
        accepted = await asyncio.to_thread(far.wait_ok, far.accept(lqd))
        fqd = accepted.new_qd
        await asyncio.to_thread(far.abort, fqd)
        with pytest.raises(ConnectionResetError):
            await reader.read(10)
        with pytest.raises(ConnectionResetError):
            writer.write(b"x")
            await writer.drain()
        writer.close()

    run(main())


def test_the_loop_connection_is_closed_when_unused(
    daemon: Daemon, far: FarApps, run: Runner
) -> None:
    far.echo_server(ECHO_PORT)

    async def main() -> None:
        _reader, writer = await aio.open_connection(FAR_IP, ECHO_PORT)
        assert len(daemon.sessions()) == 1
        writer.close()
        await writer.wait_closed()
        for _ in range(500):  # the daemon notices the disconnect
            if not daemon.sessions():
                break
            await asyncio.sleep(0.01)
        assert daemon.sessions() == []

    run(main())
