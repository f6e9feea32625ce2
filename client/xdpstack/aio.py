"""asyncio streams on the xdpstack daemon.

The same calls as :mod:`asyncio`'s streams, with real :class:`asyncio.StreamReader` and
:class:`asyncio.StreamWriter` objects::

    from xdpstack import aio

    reader, writer = await aio.open_connection("10.0.0.2", 6379)
    writer.write(b"PING\\r\\n")
    await writer.drain()
    line = await reader.readline()
    writer.close()
    await writer.wait_closed()


    async def handle(reader, writer):
        writer.write(await reader.read(1024))
        await writer.drain()
        writer.close()


    server = await aio.start_server(handle, "", 8080)
    async with server:
        await server.serve_forever()

Works under the default event loop and uvloop. Lower level, as the loop's own methods:
:func:`create_connection` and :func:`create_server` take a protocol factory and give an
:class:`XdpTransport` (an :class:`asyncio.Transport`) and a :class:`Server` (an
:class:`asyncio.AbstractServer`).

How it works: each event loop has one connection to the daemon (an :class:`xdpstack.Lib`,
from ``$XDPSTACK_SOCKET`` unless :func:`use_lib` gave another), made when the first
connection or server of the loop needs it and closed when the last one is gone. Its Unix
socket is registered with ``loop.add_reader``; completions are dispatched to callbacks
and futures by queue token. A transport keeps one ``pop`` outstanding while reading is not
paused (data that arrives while paused is held until ``resume_reading``), and writes
with ``push``: bytes written in one loop iteration go out as one push (in parts of
:data:`PUSH_CHUNK` bytes, at most :data:`MAX_PUSH_IN_FLIGHT` bytes waiting for send-buffer
space at a time). ``get_write_buffer_size()`` counts the bytes written and not yet in the
stack's send buffer; above the high-water mark the protocol's ``pause_writing`` is called
(so ``StreamWriter.drain()`` waits), at or below the low-water mark ``resume_writing``.

``push``, ``pop``, ``accept`` and ``connect`` are sent to the daemon without waiting for
it (their results, errors included, come as completions); other requests (``close``,
``getpeername``...) are round trips on the local Unix socket that the loop makes
synchronously: a loop is never blocked waiting for the network, only, briefly, for the
daemon. A server keeps :data:`ACCEPTS_ARMED` accepts armed.
A loop's daemon connection belongs to that loop: do not use it from other threads.

``get_extra_info``: ``peername``, ``sockname`` and ``socket`` (a :class:`TransportSocket`:
``getsockname``, ``getpeername``, ``setsockopt``/``getsockopt`` with the standard
library's constants, ``fileno()`` being the daemon connection's descriptor as in
:mod:`xdpstack.socket`).
"""

from __future__ import annotations

import asyncio
import errno as _errno
import functools
import socket as _std
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from xdpstack import socket as _xsocket
from xdpstack.lib import Lib, QResult
from xdpstack.lib import connect as _lib_connect

__all__ = [
    "ACCEPTS_ARMED",
    "MAX_PUSH_IN_FLIGHT",
    "PUSH_CHUNK",
    "Server",
    "TransportSocket",
    "XdpTransport",
    "create_connection",
    "create_server",
    "open_connection",
    "start_server",
    "use_lib",
]

#: Largest single push a transport makes.
PUSH_CHUNK = 256 << 10
#: Most bytes a transport has in pushes not yet completed (waiting for send-buffer space).
MAX_PUSH_IN_FLIGHT = 1 << 20
#: Accepts a server keeps armed.
ACCEPTS_ARMED = 16
#: asyncio's default write-buffer limits.
DEFAULT_HIGH_WATER = 64 << 10
#: asyncio.StreamReader's default limit.
DEFAULT_LIMIT = 1 << 16

Address = tuple[str, int]
Callback = Callable[[int, "QResult | None", "BaseException | None"], None]

_ECANCELED = _errno.ECANCELED


# =====================================================================================
# the loop's daemon connection
# =====================================================================================
class _LoopLib:
    """One event loop's connection to the daemon, and the dispatch of its completions."""

    def __init__(self, loop: asyncio.AbstractEventLoop, lib: Lib, owned: bool) -> None:
        self.loop = loop
        self.lib = lib
        self.owned = owned
        self.fd = lib.fileno()
        self.callbacks: dict[int, Callback] = {}
        self.users = 0
        self.closed = False
        self.error: OSError | None = None
        self._dispatch_scheduled = False
        loop.add_reader(self.fd, self._dispatch)

    # -- users ---------------------------------------------------------------------------
    def acquire(self) -> None:
        self.users += 1

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0 and self.owned:
            self.loop.call_soon(self._close_if_unused)

    def _close_if_unused(self) -> None:
        if self.users <= 0 and not self.closed:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if _loop_libs.get(self.loop) is self:
            del _loop_libs[self.loop]
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
        if self.owned:
            self.lib.close_all()

    # -- requests -------------------------------------------------------------------------
    def check(self) -> Lib:
        if self.error is not None:
            raise self.error
        if self.closed:
            raise OSError(_errno.EBADF, "this event loop's xdpstack connection is closed")
        return self.lib

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A Lib call; completions it read on the way are dispatched soon."""
        self.check()
        try:
            return fn(*args)
        except OSError as exc:
            if self.lib._broken is not None:  # the daemon connection itself failed
                self._lost(exc)
            raise
        finally:
            self.schedule_dispatch()

    def submit(self, qt: int, callback: Callback) -> None:
        self.callbacks[qt] = callback

    def future(self, qt: int) -> asyncio.Future[QResult]:
        fut: asyncio.Future[QResult] = self.loop.create_future()

        def done(_qt: int, result: QResult | None, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)  # type: ignore[arg-type]

        self.callbacks[qt] = done
        return fut

    def forget(self, qt: int | None) -> None:
        if qt is None:
            return
        self.callbacks.pop(qt, None)
        if not self.closed:
            self.lib.discard(qt)

    # -- dispatch ---------------------------------------------------------------------------
    def schedule_dispatch(self) -> None:
        if not self._dispatch_scheduled and not self.closed:
            self._dispatch_scheduled = True
            self.loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        if self.closed:
            return
        lib = self.lib
        try:
            ready = lib.poll()
        except OSError as exc:
            self._lost(exc)
            return
        for qt in ready:
            callback = self.callbacks.pop(qt, None)
            result: QResult | None = None
            error: BaseException | None = None
            try:
                result = lib.wait(qt, 0)
            except ValueError:  # forgotten meanwhile (a callback closed its transport)
                continue
            except OSError as exc:
                error = exc
            if callback is None:
                continue
            try:
                callback(qt, result, error)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.loop.call_exception_handler(
                    {"message": "xdpstack.aio: error in a completion callback", "exception": exc}
                )

    def _lost(self, exc: OSError) -> None:
        """The daemon connection failed: every waiting operation gets the error."""
        if self.error is not None:
            return
        self.error = exc
        callbacks, self.callbacks = self.callbacks, {}
        self.closed = True
        if _loop_libs.get(self.loop) is self:
            del _loop_libs[self.loop]
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
        self.lib.disconnect()
        for qt, callback in callbacks.items():
            try:
                callback(qt, None, exc)
            except BaseException as cb_exc:  # pragma: no cover (defensive)
                self.loop.call_exception_handler(
                    {"message": "xdpstack.aio: error in a completion callback", "exception": cb_exc}
                )


_loop_libs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopLib] = (
    weakref.WeakKeyDictionary()
)


def _loop_lib(loop: asyncio.AbstractEventLoop) -> _LoopLib:
    ll = _loop_libs.get(loop)
    if ll is None or ll.closed:
        ll = _loop_libs[loop] = _LoopLib(loop, _lib_connect(), owned=True)
    return ll


def use_lib(lib: Lib, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Make ``lib`` the daemon connection of ``loop`` (default: the running loop) instead
    of one made from ``$XDPSTACK_SOCKET``. The caller keeps it open until the loop's
    connections and servers are closed, and closes it; the loop must be its only user."""
    loop = loop or asyncio.get_running_loop()
    old = _loop_libs.get(loop)
    if old is not None and not old.closed:
        if old.lib is lib:
            return
        if old.users > 0:
            raise RuntimeError("this event loop already uses another xdpstack connection")
        old.close()
    _loop_libs[loop] = _LoopLib(loop, lib, owned=False)


# =====================================================================================
# socket-like view for get_extra_info("socket") and Server.sockets
# =====================================================================================
class TransportSocket:
    """What ``get_extra_info("socket")`` and ``Server.sockets`` give: names and options
    of an xdpstack socket (no I/O methods, as asyncio's own ``TransportSocket``)."""

    def __init__(self, ll: _LoopLib, qd: int) -> None:
        self._ll = ll
        self.qd = qd
        self._reuseaddr = 0

    family = _std.AddressFamily.AF_INET
    type = _std.SocketKind.SOCK_STREAM
    proto = _std.IPPROTO_TCP

    def fileno(self) -> int:
        """The loop's daemon connection's descriptor (shared; see xdpstack.socket)."""
        return -1 if self._ll.closed else self._ll.fd

    def getsockname(self) -> Address:
        return self._ll.call(self._ll.lib.getsockname, self.qd)

    def getpeername(self) -> Address:
        return self._ll.call(self._ll.lib.getpeername, self.qd)

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        number = _xsocket.option_value(value, optlen)
        if (level, optname) == (_std.SOL_SOCKET, _std.SO_REUSEADDR):
            self._reuseaddr = int(bool(number))
            return
        name = _xsocket.stack_option(level, optname)
        self._ll.call(self._ll.lib.setsockopt, self.qd, name, number)

    def getsockopt(self, level: int, optname: int) -> int | float:
        if (level, optname) == (_std.SOL_SOCKET, _std.SO_REUSEADDR):
            return self._reuseaddr
        if (level, optname) == (_std.SOL_SOCKET, _std.SO_TYPE):
            return int(_std.SOCK_STREAM)
        name = _xsocket.stack_option(level, optname)
        value = self._ll.call(self._ll.lib.getsockopt, self.qd, name)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    def __repr__(self) -> str:
        return f"<xdpstack.aio.TransportSocket qd={self.qd}>"


# =====================================================================================
# the transport
# =====================================================================================
class XdpTransport(asyncio.Transport):
    """An :class:`asyncio.Transport` over one xdpstack TCP connection."""

    def __init__(
        self,
        ll: _LoopLib,
        qd: int,
        protocol: asyncio.BaseProtocol,
        *,
        peername: Address | None = None,
        server: Server | None = None,
        waiter: asyncio.Future[None] | None = None,
    ) -> None:
        super().__init__({"peername": peername} if peername is not None else None)
        self._ll = ll
        self._loop = ll.loop
        self._qd = qd
        self._protocol: Any = protocol
        self._server = server
        self._closing = False  # close() or abort() called, or the connection failed
        self._lost = False  # connection_lost is called (or scheduled)
        self._paused = False  # reading paused by the protocol
        self._pop_qt: int | None = None
        self._held: bytes | None = None  # popped while reading was paused
        self._eof_received = False
        self._eof_requested = False  # write_eof(): shut down once the buffer is pushed
        self._eof_written = False
        self._wbuf = bytearray()
        self._pushes: dict[int, int] = {}  # push token -> bytes
        self._in_flight = 0
        self._flush_scheduled = False
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        self._protocol_paused = False
        self._writes_after_loss = 0
        self._socket: TransportSocket | None = None
        ll.acquire()
        if server is not None:
            server._attach(self)
        self._loop.call_soon(self._connection_made, waiter)

    def __repr__(self) -> str:
        state = "closed" if self._lost else "closing" if self._closing else "open"
        return (
            f"<XdpTransport qd={self._qd} {state} peer={self._extra.get('peername')} "
            f"write buffer {self.get_write_buffer_size()}>"
        )

    # -- start --------------------------------------------------------------------------
    def _connection_made(self, waiter: asyncio.Future[None] | None) -> None:
        if self._lost:
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionResetError("connection lost before it was made"))
            return
        try:
            self._protocol.connection_made(self)
        except BaseException as exc:
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            self.abort()
            if isinstance(exc, SystemExit | KeyboardInterrupt):
                raise
            return
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._read_more()

    # -- extra info, protocol -------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            if self._socket is None:
                self._socket = TransportSocket(self._ll, self._qd)
            return self._socket
        if name == "sockname" and "sockname" not in self._extra and not self._lost:
            try:
                self._extra["sockname"] = self._ll.call(self._ll.lib.getsockname, self._qd)
            except OSError:
                return default
        if name == "peername" and self._extra.get("peername") is None and not self._lost:
            try:
                self._extra["peername"] = self._ll.call(self._ll.lib.getpeername, self._qd)
            except OSError:
                return default
        return self._extra.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    # -- reading -------------------------------------------------------------------------
    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        if self._closing or self._paused:
            return
        self._paused = True

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._loop.call_soon(self._resume)

    def _resume(self) -> None:
        if self._closing or self._paused:
            return
        held, self._held = self._held, None
        if held is not None:
            self._deliver(held)
        else:
            self._read_more()

    def _read_more(self) -> None:
        if self._closing or self._paused or self._eof_received or self._pop_qt is not None:
            return
        ll = self._ll
        try:
            # deferred: it goes out with this loop's next request (a write's push) or
            # with the dispatch that follows
            qt = ll.call(lambda: ll.lib.pop(self._qd, None, defer=True))
        except OSError as exc:
            self._fatal_error(exc)
            return
        self._pop_qt = qt
        ll.submit(qt, self._on_pop)

    def _on_pop(self, _qt: int, result: QResult | None, exc: BaseException | None) -> None:
        self._pop_qt = None
        if self._closing:
            return
        if exc is not None:
            self._fatal_error(exc)
            return
        assert result is not None
        data = result.data
        if not data:
            self._eof_received = True
            try:
                keep_open = self._protocol.eof_received()
            except BaseException as cb_exc:
                self._fatal_error(cb_exc, "eof_received() failed")
                return
            if not keep_open:
                self.close()
            return
        if self._paused:
            self._held = data
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        try:
            self._protocol.data_received(data)
        except BaseException as exc:
            self._fatal_error(exc, "data_received() failed")
            return
        self._read_more()

    # -- writing -------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self._eof_requested:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._closing:
            self._writes_after_loss += 1
            return
        self._wbuf += data
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._lost:
            return
        ll = self._ll
        wbuf = self._wbuf
        while wbuf and self._in_flight < MAX_PUSH_IN_FLIGHT:
            n = min(len(wbuf), PUSH_CHUNK)
            chunk = bytes(wbuf[:n])
            # nobody waits for its completion while the buffer stays below the high mark
            lazy = self._in_flight + len(wbuf) <= self._high
            try:
                qt = ll.call(functools.partial(ll.lib.push, self._qd, chunk, lazy=lazy))
            except OSError as exc:
                self._fatal_error(exc)
                return
            del wbuf[:n]
            self._pushes[qt] = n
            self._in_flight += n
            ll.submit(qt, self._on_push)
        if not wbuf:
            if self._eof_requested and not self._eof_written:
                self._shutdown_write()
            if self._closing:
                self._finish_close()

    def _on_push(self, qt: int, _result: QResult | None, exc: BaseException | None) -> None:
        self._in_flight -= self._pushes.pop(qt, 0)
        if self._lost:
            return
        if exc is not None:
            self._fatal_error(exc)
            return
        if self._wbuf:
            self._flush()
        self._maybe_resume_protocol()

    def _shutdown_write(self) -> None:
        self._eof_written = True
        try:
            self._ll.call(self._ll.lib.shutdown, self._qd)
        except OSError as exc:
            self._fatal_error(exc)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """FIN after everything written so far (``shutdown(SHUT_WR)``)."""
        if self._closing or self._eof_requested:
            return
        self._eof_requested = True
        if not self._wbuf and not self._flush_scheduled:
            self._shutdown_write()

    def get_write_buffer_size(self) -> int:
        return len(self._wbuf) + self._in_flight

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self._protocol_paused or self.get_write_buffer_size() <= self._high:
            return
        self._protocol_paused = True
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(
                {
                    "message": "protocol.pause_writing() failed",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )

    def _maybe_resume_protocol(self) -> None:
        if not self._protocol_paused or self.get_write_buffer_size() > self._low:
            return
        self._protocol_paused = False
        try:
            self._protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(
                {
                    "message": "protocol.resume_writing() failed",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        """Graceful: what was written goes out, then FIN; no more data is received;
        ``connection_lost(None)`` follows once the write buffer is handed to the stack."""
        if self._closing:
            return
        self._closing = True
        self._ll.forget(self._pop_qt)
        self._pop_qt = None
        self._held = None
        if not self._wbuf and not self._flush_scheduled:
            self._finish_close()

    def _finish_close(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._release_descriptor(self._ll.lib.close)
        self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        """Hard close: RST now, buffered data discarded; ``connection_lost(None)``."""
        self._force_close(None, abort=True)

    def _fatal_error(self, exc: BaseException, message: str | None = None) -> None:
        if message is not None or not isinstance(exc, OSError):
            self._loop.call_exception_handler(
                {
                    "message": message or "fatal error on an xdpstack transport",
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        if isinstance(exc, OSError) and exc.errno == _ECANCELED and self._closing:
            return
        self._force_close(exc, abort=not isinstance(exc, OSError))

    def _force_close(self, exc: BaseException | None, *, abort: bool) -> None:
        if self._lost:
            return
        self._closing = True
        self._lost = True
        self._wbuf.clear()
        self._held = None
        ll = self._ll
        ll.forget(self._pop_qt)
        self._pop_qt = None
        self._release_descriptor(ll.lib.abort if abort else ll.lib.close)
        self._loop.call_soon(self._call_connection_lost, exc)

    def _release_descriptor(self, how: Callable[[int], None]) -> None:
        ll = self._ll
        for qt in list(self._pushes):
            ll.forget(qt)
        self._pushes.clear()
        self._in_flight = 0
        if ll.closed:
            return
        try:
            ll.call(how, self._qd)
        except OSError:
            pass

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._ll.release()
            server, self._server = self._server, None
            if server is not None:
                server._detach(self)


# =====================================================================================
# the server
# =====================================================================================
class Server(asyncio.AbstractServer):
    """A listening xdpstack socket serving a protocol factory (asyncio's ``Server``
    interface: ``serve_forever``, ``start_serving``, ``close``, ``wait_closed``,
    ``is_serving``, ``sockets``, ``get_loop``, ``close_clients``, ``abort_clients`` and
    ``async with``). ``wait_closed`` waits until the server is closed and its connections
    are gone, as in Python 3.12+."""

    def __init__(self, ll: _LoopLib, qd: int, protocol_factory: Callable[[], Any]) -> None:
        self._ll = ll
        self._loop = ll.loop
        self._qd = qd
        self._factory = protocol_factory
        self._serving = False
        self._closed = False
        self._accept_qts: set[int] = set()  # armed accepts (ACCEPTS_ARMED of them)
        self._transports: set[XdpTransport] = set()
        self._waiters: list[asyncio.Future[None]] = []
        self._serving_forever_fut: asyncio.Future[None] | None = None
        self._sockets = (TransportSocket(ll, qd),)
        ll.acquire()

    def __repr__(self) -> str:
        return f"<xdpstack.aio.Server sockets={self.sockets!r}>"

    # -- asyncio.AbstractServer ---------------------------------------------------------
    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    @property
    def sockets(self) -> tuple[TransportSocket, ...]:
        return () if self._closed else self._sockets

    async def start_serving(self) -> None:
        self._start_serving()
        await asyncio.sleep(0)

    def _start_serving(self) -> None:
        if self._serving or self._closed:
            return
        self._serving = True
        self._accept_next()

    async def serve_forever(self) -> None:
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    def close(self) -> None:
        """Stop listening (the port is free again); connections already accepted stay."""
        if self._closed:
            return
        self._closed = True
        self._serving = False
        ll = self._ll
        for qt in self._accept_qts:
            ll.forget(qt)
        self._accept_qts.clear()
        if not ll.closed:
            try:
                ll.call(ll.lib.close, self._qd)
            except OSError:
                pass
        fut = self._serving_forever_fut
        if fut is not None and not fut.done():
            fut.cancel()
        ll.release()
        self._maybe_wake()

    def close_clients(self) -> None:
        for transport in list(self._transports):
            transport.close()

    def abort_clients(self) -> None:
        for transport in list(self._transports):
            transport.abort()

    async def wait_closed(self) -> None:
        if self._closed and not self._transports:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    # -- accepting -----------------------------------------------------------------------
    def _accept_next(self) -> None:
        """Keep ACCEPTS_ARMED accepts with the daemon: a burst of connections is taken
        from the accept queue as it comes."""
        ll = self._ll
        accepts = self._accept_qts
        while self._serving and len(accepts) < ACCEPTS_ARMED:
            try:
                qt = ll.call(lambda: ll.lib.accept(self._qd, defer=True))
            except OSError as exc:
                self._accept_failed(exc)
                return
            accepts.add(qt)
            ll.submit(qt, self._on_accept)

    def _on_accept(self, qt: int, result: QResult | None, exc: BaseException | None) -> None:
        self._accept_qts.discard(qt)
        ll = self._ll
        if exc is not None:
            if not self._closed:
                self._accept_failed(exc)
            return
        assert result is not None and result.new_qd is not None
        if self._closed:
            try:
                ll.call(ll.lib.close, result.new_qd)
            except OSError:
                pass
            return
        try:
            protocol = self._factory()
        except BaseException as cb_exc:
            try:
                ll.call(ll.lib.abort, result.new_qd)
            except OSError:
                pass
            self._loop.call_exception_handler(
                {"message": "protocol factory failed", "exception": cb_exc}
            )
            if isinstance(cb_exc, SystemExit | KeyboardInterrupt):
                raise
        else:
            XdpTransport(ll, result.new_qd, protocol, peername=result.addr, server=self)
        self._accept_next()

    def _accept_failed(self, exc: BaseException) -> None:
        if self._ll.closed:  # the daemon connection is gone: nothing more to serve
            self._loop.call_exception_handler(
                {"message": "xdpstack.aio: lost the daemon; server closed", "exception": exc}
            )
            self.close()
            return
        self._loop.call_exception_handler(
            {"message": "xdpstack.aio: accept failed; retrying", "exception": exc}
        )
        self._loop.call_later(0.1, self._accept_next)

    def _attach(self, transport: XdpTransport) -> None:
        self._transports.add(transport)

    def _detach(self, transport: XdpTransport) -> None:
        self._transports.discard(transport)
        self._maybe_wake()

    def _maybe_wake(self) -> None:
        if self._closed and not self._transports:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


# =====================================================================================
# creating connections and servers
# =====================================================================================
async def _resolve(loop: asyncio.AbstractEventLoop, host: Any, port: int) -> list[Address]:
    if isinstance(host, str) and host.count(".") == 3:
        try:
            _std.inet_aton(host)
            return [(host, int(port))]
        except OSError:
            pass
    infos = await loop.getaddrinfo(host, port, family=_std.AF_INET, type=_std.SOCK_STREAM)
    if not infos:
        raise OSError("getaddrinfo() returned empty list")
    return [info[4][:2] for info in infos]


async def create_connection(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    *,
    local_addr: tuple[str, int] | None = None,
) -> tuple[XdpTransport, asyncio.BaseProtocol]:
    """``loop.create_connection`` on xdpstack: connect to ``(host, port)`` (its IPv4
    addresses in turn) and return ``(transport, protocol)``. Cancelling it closes the
    connection attempt."""
    loop = asyncio.get_running_loop()
    addresses = await _resolve(loop, host, port)
    ll = _loop_lib(loop)
    ll.acquire()
    try:
        exceptions: list[OSError] = []
        for address in addresses:
            lib = ll.check()
            qd = ll.call(lib.socket)
            try:
                if local_addr is not None:
                    ll.call(lib.bind, qd, _xsocket.resolve(local_addr, for_bind=True))
                qt = ll.call(lib.connect, qd, address)
                fut = ll.future(qt)
                try:
                    await fut
                finally:
                    if not fut.done():
                        ll.forget(qt)
            except OSError as exc:
                _close_quietly(ll, qd)
                exceptions.append(exc)
                continue
            except BaseException:
                _close_quietly(ll, qd, abort=True)
                raise
            protocol = protocol_factory()
            waiter: asyncio.Future[None] = loop.create_future()
            transport = XdpTransport(ll, qd, protocol, peername=address, waiter=waiter)
            try:
                await waiter
            except BaseException:
                transport.abort()
                raise
            return transport, protocol
        if len(exceptions) == 1:
            raise exceptions[0]
        model = str(exceptions[0])
        if all(str(exc) == model for exc in exceptions):
            raise exceptions[0]
        raise OSError(f"Multiple exceptions: {', '.join(str(exc) for exc in exceptions)}")
    finally:
        ll.release()


def _close_quietly(ll: _LoopLib, qd: int, abort: bool = False) -> None:
    if ll.closed:
        return
    try:
        ll.call(ll.lib.abort if abort else ll.lib.close, qd)
    except OSError:
        pass


async def create_server(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str | None = None,
    port: int = 0,
    *,
    backlog: int = 128,
    reuse_address: bool | None = None,
    reuse_port: bool | None = None,
    start_serving: bool = True,
) -> Server:
    """``loop.create_server`` on xdpstack: listen on ``(host, port)`` (``host`` None or
    ``""``: every address of the stack; port 0: one the stack picks). ``reuse_port`` is
    not supported (``ValueError``); ``reuse_address`` is accepted (the stack needs none)."""
    if reuse_port:
        raise ValueError("SO_REUSEPORT not supported by xdpstack")
    loop = asyncio.get_running_loop()
    if host in (None, ""):
        address: Address = ("0.0.0.0", int(port))
    else:
        address = (await _resolve(loop, host, port))[0]
    ll = _loop_lib(loop)
    lib = ll.check()
    qd = ll.call(lib.socket)
    try:
        try:
            ll.call(lib.bind, qd, address)
        except OSError as err:
            raise OSError(
                err.errno,
                f"error while attempting to bind on address {address!r}: {err.strerror}",
            ) from None
        ll.call(lib.listen, qd, backlog)
    except BaseException:
        _close_quietly(ll, qd)
        raise
    server = Server(ll, qd, protocol_factory)
    if start_serving:
        server._start_serving()
        await asyncio.sleep(0)
    return server


async def open_connection(
    host: str,
    port: int,
    *,
    limit: int = DEFAULT_LIMIT,
    local_addr: tuple[str, int] | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` on xdpstack: ``(StreamReader, StreamWriter)``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(lambda: protocol, host, port, local_addr=local_addr)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], "Awaitable[None] | None"]


async def start_server(
    client_connected_cb: ClientConnected,
    host: str | None = None,
    port: int = 0,
    *,
    limit: int = DEFAULT_LIMIT,
    backlog: int = 128,
    reuse_address: bool | None = None,
    reuse_port: bool | None = None,
    start_serving: bool = True,
) -> Server:
    """``asyncio.start_server`` on xdpstack: ``client_connected_cb(reader, writer)`` for
    each connection (a coroutine function runs as a task)."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(
        factory,
        host,
        port,
        backlog=backlog,
        reuse_address=reuse_address,
        reuse_port=reuse_port,
        start_serving=start_serving,
    )
