"""Standard-library-style TCP sockets on the xdpstack daemon.

Code written for Python's :mod:`socket` module runs on the userspace stack with its import
changed::

    from xdpstack import socket as xsocket

    with xsocket.create_connection(("10.0.0.2", 6379), timeout=5) as sock:
        sock.sendall(b"PING\\r\\n")
        reply = sock.recv(1024)

    with xsocket.create_server(("", 8080)) as server:
        conn, addr = server.accept()
        with conn, conn.makefile("rwb") as stream:
            line = stream.readline()

What there is: :func:`create_connection`, :func:`create_server` and the :class:`socket`
class (TCP over IPv4 only: ``socket(AF_INET, SOCK_STREAM)``) with ``bind``, ``listen``,
``accept``, ``connect``/``connect_ex``, ``send``, ``sendall``, ``recv``, ``recv_into``,
``recvfrom``, ``makefile``, ``shutdown``, ``close``, ``settimeout``/``gettimeout``/
``setblocking``/``getblocking``, ``getpeername``/``getsockname``, ``setsockopt``/
``getsockopt``, ``fileno``, ``family``/``type``/``proto`` and the context manager. The
module's other names (constants such as ``AF_INET``, ``SHUT_WR``, ``TCP_NODELAY``, and
functions such as ``getaddrinfo`` or ``getdefaulttimeout``) are the standard library's.

Semantics, where they differ from a kernel socket:

* Timeouts raise ``TimeoutError`` (``socket.timeout``); a non-blocking socket raises
  ``BlockingIOError`` (``EAGAIN``) when nothing is ready, ``EINPROGRESS`` for ``connect``.
  A ``recv`` that times out leaves its request with the daemon, and the next ``recv``
  picks up what it brings: no data is lost.
* ``send``/``sendall`` hand the data to the daemon and return without waiting for it,
  as long as at most :data:`SEND_BUFFER` bytes of the socket's earlier sends are still
  waiting for the stack's send buffer (the bound plays SO_SNDBUF's part); beyond it they
  wait. ``send`` with a timeout or non-blocking takes what fits below the bound (at most
  :data:`NONBLOCKING_SEND_MAX`; none left: ``BlockingIOError``/``TimeoutError``, nothing
  taken). Bytes taken are always sent, in order; an error the stack reports for them
  (``ECONNRESET``, ``EPIPE``...) is raised by the next ``send``.
* From its first ``recv`` on, a socket keeps one receive request armed with the daemon (a
  standing pop, re-armed with the next request the process sends): data that arrives is
  delivered to this process without being asked for, and ``recv`` takes from what has
  arrived (up to :data:`RECV_BUFFER` bytes are held here; beyond that
  the stack's receive window closes as for a kernel socket nobody reads). ``close`` with
  received data unread resets the connection, as Linux does.
* A listening socket keeps :data:`ACCEPTS_ARMED` accepts armed, so a burst of connections
  is taken from the stack's accept queue as it comes.
* ``shutdown(SHUT_WR)`` sends FIN after the queued data (the daemon's ``shutdown``);
  ``SHUT_RD`` is local (later receives return ``b""``).
* ``fileno()`` returns the descriptor of this process's Unix-socket connection to
  ``xdpstackd``, which every xdpstack socket on that connection shares (-1 once the socket
  is closed). It is *not* a per-socket kernel descriptor: do not ``select()`` on it, read it
  or hand it to another library. The daemon's own descriptor number is :attr:`socket.qd`.
* Options: ``IPPROTO_TCP``/``TCP_NODELAY``, ``TCP_KEEPIDLE``, ``TCP_KEEPINTVL``,
  ``TCP_KEEPCNT`` and ``SOL_SOCKET``/``SO_KEEPALIVE``, ``SO_SNDBUF``, ``SO_RCVBUF`` go to the
  stack; ``SO_REUSEADDR`` is accepted and remembered (the stack needs none);
  ``getsockopt`` also answers ``SO_TYPE``, ``SO_ERROR``, ``SO_DOMAIN``, ``SO_PROTOCOL`` and
  ``SO_ACCEPTCONN``. Others raise ``OSError(ENOPROTOOPT)``. ``SO_REUSEPORT`` is not
  supported (``create_server(reuse_port=True)`` raises ``ValueError``).
* Errors are the ``OSError`` subclasses a kernel socket raises (``ConnectionRefusedError``,
  ``ConnectionResetError``, ``BrokenPipeError``, ...), with the daemon's errno.

The connection to the daemon: sockets share one :class:`xdpstack.Lib` per process, made on
first use from ``$XDPSTACK_SOCKET`` (default ``/run/xdpstack/xdpstackd.sock``); pass
``lib=`` to use another. Sockets may be used from several threads (the shared Lib is
guarded; one thread at a time reads the daemon connection, and wakes the others). A socket
is tied to the daemon connection that made it: after ``fork()`` the child makes its own
connection, and sockets inherited from the parent raise ``OSError(EBADF)`` there.
"""

from __future__ import annotations

import errno as _errno
import io
import os
import select
import socket as _std
import struct
import threading
import warnings
import weakref
from collections.abc import Callable
from time import monotonic as _now
from typing import Any

from xdpstack.lib import Lib, QResult
from xdpstack.lib import connect as _lib_connect

__all__ = [
    "ACCEPTS_ARMED",
    "NONBLOCKING_SEND_MAX",
    "RECV_BUFFER",
    "SEND_BUFFER",
    "create_connection",
    "create_server",
    "default_lib",
    "has_dualstack_ipv6",
    "reset_default_lib",
    "socket",
]

# The standard library's names used here (and re-exported below for callers).
AF_INET = _std.AF_INET
SOCK_STREAM = _std.SOCK_STREAM
IPPROTO_TCP = _std.IPPROTO_TCP
SOL_SOCKET = _std.SOL_SOCKET
SHUT_RD = _std.SHUT_RD
SHUT_WR = _std.SHUT_WR
SHUT_RDWR = _std.SHUT_RDWR
TCP_NODELAY = _std.TCP_NODELAY
SO_KEEPALIVE = _std.SO_KEEPALIVE
SO_SNDBUF = _std.SO_SNDBUF
SO_RCVBUF = _std.SO_RCVBUF
SO_REUSEADDR = _std.SO_REUSEADDR
MSG_PEEK = _std.MSG_PEEK
MSG_DONTWAIT = _std.MSG_DONTWAIT
MSG_WAITALL = _std.MSG_WAITALL
SOMAXCONN = _std.SOMAXCONN
error = OSError
timeout = TimeoutError
herror = _std.herror
gaierror = _std.gaierror
getaddrinfo = _std.getaddrinfo
getdefaulttimeout = _std.getdefaulttimeout
setdefaulttimeout = _std.setdefaulttimeout
_GLOBAL_DEFAULT_TIMEOUT: Any = _std._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]

#: Most bytes one ``send`` takes on a socket with a timeout or non-blocking.
NONBLOCKING_SEND_MAX = 256 << 10
#: Bytes of a socket's sends that may wait for the stack's send buffer before a send waits.
SEND_BUFFER = 1 << 20
#: Largest piece ``sendall`` hands over at a time (each waits for room below the bound).
SEND_CHUNK = 256 << 10
#: Received bytes held in the socket before its standing pop is no longer re-armed.
RECV_BUFFER = 1 << 20
#: Accepts a listening socket keeps armed.
ACCEPTS_ARMED = 16

Address = tuple[str, int]

# (level, option) -> the stack's option name
_STACK_OPTIONS: dict[tuple[int, int], str] = {
    (IPPROTO_TCP, TCP_NODELAY): "TCP_NODELAY",
    (SOL_SOCKET, SO_KEEPALIVE): "SO_KEEPALIVE",
    (SOL_SOCKET, SO_SNDBUF): "SO_SNDBUF",
    (SOL_SOCKET, SO_RCVBUF): "SO_RCVBUF",
}
for _name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"):
    if hasattr(_std, _name):
        _STACK_OPTIONS[(IPPROTO_TCP, getattr(_std, _name))] = _name
del _name


#: Options that are flags: set without waiting for the daemon.
_FLAG_OPTIONS = frozenset({"TCP_NODELAY", "SO_KEEPALIVE"})


def stack_option(level: int, optname: int) -> str:
    """The stack's name for ``(level, optname)``; ``OSError(ENOPROTOOPT)`` if it has none."""
    name = _STACK_OPTIONS.get((level, optname))
    if name is None:
        raise OSError(_errno.ENOPROTOOPT, os.strerror(_errno.ENOPROTOOPT))
    return name


def option_value(value: Any, optlen: int | None = None) -> int:
    """A ``setsockopt`` value (int, bool, or a packed C int as bytes) as an int."""
    if optlen is not None or value is None:
        raise OSError(_errno.EINVAL, "xdpstack socket options take an int value")
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        if len(raw) != 4:
            raise OSError(_errno.EINVAL, os.strerror(_errno.EINVAL))
        return struct.unpack("i", raw)[0]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    raise TypeError(f"a bytes-like object or an int is required, not {type(value).__name__}")


def resolve(address: Any, *, for_bind: bool = False) -> Address:
    """``(host, port)`` -> ``(dotted IPv4, port)``; names resolved by the system resolver."""
    if not isinstance(address, tuple) or len(address) != 2:
        raise TypeError(f"AF_INET address must be a pair (host, port), not {address!r}")
    host, port = address
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"'{type(port).__name__}' object cannot be interpreted as an integer")
    if not 0 <= port <= 0xFFFF:
        raise OverflowError("port must be 0-65535.")
    if isinstance(host, bytes | bytearray):
        host = bytes(host).decode("idna")
    if not isinstance(host, str):
        raise TypeError(f"str, bytes or bytearray expected, not {type(host).__name__}")
    if host in ("", "0.0.0.0") and for_bind:
        return ("0.0.0.0", port)
    if host == "<broadcast>":
        host = "255.255.255.255"
    try:
        _std.inet_aton(host)
        if host.count(".") == 3:
            return (host, port)
    except OSError:
        pass
    return (_std.gethostbyname(host), port)


# =====================================================================================
# the shared daemon connection
# =====================================================================================
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation, _default, _default_lock
    _fork_generation += 1
    _default = None
    _default_lock = threading.Lock()
    _shared_by_lib.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Shared:
    """One :class:`Lib` shared by sockets and threads.

    A lock guards every call into the Lib. A thread that must wait for a completion first
    takes what the daemon has sent (non-blocking); if its token is not done, one thread at a
    time ("the poller") waits for the daemon connection to become readable *without* the
    lock, and the others wait on a condition. Whoever reads from the daemon connection wakes
    the others: the condition for the waiters, a pipe for the poller.
    """

    def __init__(self, lib: Lib, owned: bool) -> None:
        self.lib = lib
        self.owned = owned  # made here (the default): closed by reset_default_lib
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.generation = _fork_generation
        self.poller: int | None = None  # thread id of the thread polling the fd
        self.waiters = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # (qd, tokens) of sockets dropped without close(): closed at the next call. A
        # finalizer must not call into the Lib: it may run in the middle of a Lib call.
        self.graveyard: list[tuple[int, list[int]]] = []
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)

    def check(self) -> None:
        if self.generation != _fork_generation:
            raise OSError(_errno.EBADF, "xdpstack socket inherited across fork()")

    def _bury(self) -> None:
        while self.graveyard:
            qd, tokens = self.graveyard.pop()
            for qt in tokens:
                self.lib.discard(qt)
            try:
                self.lib.close(qd)
            except OSError:
                pass

    def _wake_others(self) -> None:
        if self.waiters:
            self.cond.notify_all()
        if self.poller is not None and self.poller != threading.get_ident():
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass

    def done(self, qt: int) -> bool:
        """Whether ``qt`` has completed (an unknown token counts as done: its wait says
        EBADF)."""
        with self.lock:
            try:
                return self.lib.done(qt)
            except ValueError:
                return True

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` (a Lib method) under the lock."""
        self.check()
        with self.lock:
            try:
                if self.graveyard:
                    self._bury()
                return fn(*args)
            finally:
                self._wake_others()

    def wait(self, qt: int, timeout: float | None) -> QResult:
        """The result of ``qt`` within ``timeout`` (None: no limit, 0: only if done).
        ``TimeoutError`` leaves the token pending; an unknown token (its socket was closed
        meanwhile) raises ``OSError(EBADF)``."""
        self.check()
        deadline = None if timeout is None else _now() + timeout
        lib = self.lib
        with self.lock:
            while True:
                try:
                    if self.graveyard:
                        self._bury()
                    return lib.wait(qt, 0)
                except TimeoutError:
                    pass
                except ValueError:
                    raise OSError(_errno.EBADF, os.strerror(_errno.EBADF)) from None
                finally:
                    self._wake_others()
                remaining = None if deadline is None else deadline - _now()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("timed out")
                if self.poller is not None:
                    self.waiters += 1
                    try:
                        self.cond.wait(remaining)
                    finally:
                        self.waiters -= 1
                    continue
                self.poller = threading.get_ident()
                fd = lib.fileno()
                self.lock.release()
                try:
                    self._poll(fd, remaining)
                finally:
                    self.lock.acquire()
                    self.poller = None

    def _poll(self, fd: int, remaining: float | None) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        ms = -1 if remaining is None else max(1, int(remaining * 1000 + 0.999))
        for ready_fd, _events in poller.poll(ms):
            if ready_fd == self._wake_r:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass

    def close(self) -> None:
        with self.lock:
            self.lib.close_all()


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


_default: _Shared | None = None
_default_lock = threading.Lock()
_shared_by_lib: weakref.WeakKeyDictionary[Lib, _Shared] = weakref.WeakKeyDictionary()
_shared_by_lib_lock = threading.Lock()


def _shared(lib: Lib | None) -> _Shared:
    global _default
    if lib is None:
        shared = _default
        if shared is not None and not shared.lib.closed:
            return shared
        with _default_lock:
            if _default is None or _default.lib.closed:
                _default = _Shared(_lib_connect(), owned=True)
                with _shared_by_lib_lock:
                    _shared_by_lib[_default.lib] = _default
            return _default
    with _shared_by_lib_lock:
        shared = _shared_by_lib.get(lib)
        if shared is None:
            shared = _shared_by_lib[lib] = _Shared(lib, owned=False)
        return shared


def default_lib() -> Lib:
    """The process's daemon connection that sockets use unless given ``lib=`` (made on
    first use, from ``$XDPSTACK_SOCKET``)."""
    return _shared(None).lib


def reset_default_lib() -> None:
    """Close the process's default daemon connection (and with it every socket made on
    it); the next socket makes a new one (reading ``$XDPSTACK_SOCKET`` again)."""
    global _default
    with _default_lock:
        shared, _default = _default, None
    if shared is not None:
        shared.close()


# =====================================================================================
# the socket
# =====================================================================================
def _eagain() -> BlockingIOError:
    return BlockingIOError(_errno.EAGAIN, os.strerror(_errno.EAGAIN))


def _ebadf() -> OSError:
    return OSError(_errno.EBADF, os.strerror(_errno.EBADF))


class socket:  # the standard library's name
    """A TCP/IPv4 socket on xdpstack, with the standard library's ``socket`` interface.

    ``socket(AF_INET, SOCK_STREAM, proto=0, fileno=None, *, lib=None)``: only TCP over
    IPv4; ``fileno`` must be None. See the module docstring for what differs from a kernel
    socket.
    """

    __slots__ = (
        "__weakref__",
        "_accept_qts",
        "_closed",
        "_connect_error",
        "_connect_qt",
        "_eof",
        "_io_refs",
        "_listening",
        "_pop_qt",
        "_push_qts",
        "_qd",
        "_rbuf",
        "_reuseaddr",
        "_shared",
        "_shut_rd",
        "_shut_wr",
        "_timeout",
        "_unsent",
        "proto",
    )

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
        *,
        lib: Lib | None = None,
        _qd: int | None = None,
        _via: _Shared | None = None,
    ) -> None:
        self._qd: int | None = None
        self._closed = True
        if fileno is not None:
            raise OSError(_errno.EINVAL, "xdpstack sockets cannot wrap a file descriptor")
        if family not in (-1, AF_INET):
            raise OSError(_errno.EAFNOSUPPORT, "xdpstack sockets are AF_INET only")
        if type not in (-1, SOCK_STREAM):
            raise OSError(_errno.ESOCKTNOSUPPORT, "xdpstack sockets are SOCK_STREAM only")
        if proto not in (-1, 0, IPPROTO_TCP):
            raise OSError(_errno.EPROTONOSUPPORT, os.strerror(_errno.EPROTONOSUPPORT))
        self.proto = 0 if proto == -1 else proto
        self._shared = _via if _via is not None else _shared(lib)
        self._timeout: float | None = getdefaulttimeout()
        self._pop_qt: int | None = None  # the standing pop
        # lists, not deques: an empty deque costs ~600 bytes, per idle connection
        self._accept_qts: list[int] = []  # armed accepts, in the order they complete
        self._connect_qt: int | None = None
        self._connect_error = 0
        self._push_qts: list[tuple[int, int]] = []  # (token, bytes), oldest first
        self._unsent = 0  # bytes in _push_qts
        self._rbuf = bytearray()
        self._eof = False
        self._shut_rd = False
        self._shut_wr = False
        self._listening = False
        self._reuseaddr = 0
        self._io_refs = 0
        self._qd = _qd if _qd is not None else self._shared.call(self._shared.lib.socket)
        self._closed = False

    # -- identity -------------------------------------------------------------------------
    @property
    def family(self) -> _std.AddressFamily:
        return _std.AddressFamily.AF_INET

    @property
    def type(self) -> _std.SocketKind:
        return _std.SocketKind.SOCK_STREAM

    @property
    def qd(self) -> int | None:
        """The daemon's descriptor for this socket (None once closed)."""
        return None if self._closed else self._qd

    @property
    def lib(self) -> Lib:
        """The daemon connection this socket lives on."""
        return self._shared.lib

    def fileno(self) -> int:
        """The descriptor of the daemon connection this socket lives on (shared by all the
        sockets on it; -1 once this socket is closed). Not this socket's own descriptor:
        see the module docstring."""
        if self._qd is None:
            return -1
        try:
            return self._shared.lib.fileno()
        except (OSError, ValueError):
            return -1

    def __repr__(self) -> str:
        closed = self._closed
        text = f"<xdpstack.socket.socket{' [closed]' if closed else ''} qd={self._qd}"
        text += f", family={self.family!s}, type={self.type!s}, proto={self.proto}"
        if not closed:
            for label, getter in (("laddr", self.getsockname), ("raddr", self.getpeername)):
                try:
                    text += f", {label}={getter()}"
                except Exception:
                    pass
        return text + ">"

    def __getstate__(self) -> Any:
        raise TypeError(f"cannot pickle {self.__class__.__name__!r} object")

    # -- lifetime -------------------------------------------------------------------------
    def __enter__(self) -> socket:
        return self

    def __exit__(self, *args: object) -> None:
        if not self._closed:
            self.close()

    def close(self) -> None:
        """Close the socket (graceful: FIN after the queued data; RST when received data is
        left unread, as Linux does). Idempotent. With ``makefile`` objects still open, the
        daemon descriptor is closed when the last of them is."""
        if self._closed:
            return
        self._closed = True
        if self._io_refs <= 0:
            self._real_close()

    def _decref_socketios(self) -> None:
        if self._io_refs > 0:
            self._io_refs -= 1
        if self._closed:
            self._real_close()

    def _real_close(self) -> None:
        qd, self._qd = self._qd, None
        if qd is None:
            return
        pop_qt = self._pop_qt
        tokens = self._tokens()
        self._pop_qt = self._connect_qt = None
        self._accept_qts = []
        self._push_qts = []
        self._unsent = 0
        unread = bool(self._rbuf) and not self._shut_rd
        self._rbuf = bytearray()
        shared = self._shared
        if shared.generation != _fork_generation or shared.lib.closed:
            return
        lib = shared.lib

        def close() -> None:
            reset = unread
            if pop_qt is not None and not reset and not self._shut_rd:
                try:
                    lib.poll()  # what the daemon has sent: the pop may have brought data
                    reset = lib.done(pop_qt) and bool(lib.wait(pop_qt, 0).data)
                except (OSError, ValueError):
                    pass
            for qt in tokens:
                lib.discard(qt)
            # Received data left unread: RST, as Linux (the stack would, had it kept it).
            # No wait for the daemon: close's only error, EBADF, cannot happen here.
            (lib.abort if reset else lib.close)(qd, wait=False)

        try:
            shared.call(close)
        except OSError:
            pass

    def _tokens(self) -> list[int]:
        tokens = [t for t in (self._pop_qt, self._connect_qt) if t is not None]
        return tokens + list(self._accept_qts) + [qt for qt, _ in self._push_qts]

    def __del__(self) -> None:
        if getattr(self, "_closed", True) or getattr(self, "_qd", None) is None:
            return
        self._closed = True
        try:
            warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=1)
            shared = self._shared
            if shared.generation == _fork_generation:
                shared.graveyard.append((self._qd, self._tokens()))
        except Exception:  # interpreter shutdown: the daemon closes it with the connection
            pass
        self._qd = None

    def detach(self) -> int:
        raise OSError(_errno.EOPNOTSUPP, "xdpstack sockets cannot be detached")

    def dup(self) -> socket:
        raise OSError(_errno.EOPNOTSUPP, "xdpstack sockets cannot be duplicated")

    # -- timeouts -------------------------------------------------------------------------
    def settimeout(self, value: float | None) -> None:
        if value is not None:
            if isinstance(value, str | bytes | bytearray) or not hasattr(value, "__float__"):
                raise TypeError(f"must be real number, not {type(value).__name__}")
            value = float(value)
            if value < 0.0:
                raise ValueError("Timeout value out of range")
        self._timeout = value

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self._timeout = None if flag else 0.0

    def getblocking(self) -> bool:
        return self._timeout != 0.0

    # -- internals --------------------------------------------------------------------------
    def _check(self) -> int:
        # As a kernel socket: usable after close() while makefile() objects hold it.
        if self._qd is None:
            raise _ebadf()
        return self._qd

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        qd = self._check()
        return self._shared.call(method, qd, *args)

    def _wait(self, qt: int, deadline: float | None, nonblocking: bool) -> QResult:
        """Wait for ``qt`` until ``deadline`` (monotonic; None: no limit). Past it:
        ``BlockingIOError`` when ``nonblocking``, else ``TimeoutError``."""
        timeout = None if deadline is None else max(0.0, deadline - _now())
        try:
            return self._shared.wait(qt, timeout)
        except TimeoutError:
            if nonblocking:
                raise _eagain() from None
            raise

    def _deadline(self, flags: int = 0) -> tuple[float | None, bool]:
        """(deadline, non-blocking) for an operation starting now."""
        timeout = 0.0 if flags & MSG_DONTWAIT else self._timeout
        if timeout is None:
            return None, False
        return _now() + timeout, timeout == 0

    # -- connecting -------------------------------------------------------------------------
    def bind(self, address: Any) -> None:
        self._call(self._shared.lib.bind, resolve(address, for_bind=True))

    def listen(self, backlog: int | None = None) -> None:
        if backlog is None:
            backlog = min(SOMAXCONN, 128)
        self._call(self._shared.lib.listen, max(0, int(backlog)))
        self._listening = True

    def accept(self) -> tuple[socket, Address]:
        """``(conn, (ip, port))``; the new socket gets the default timeout
        (``getdefaulttimeout()``), as in the standard library."""
        self._check()
        accepts = self._accept_qts
        if len(accepts) < ACCEPTS_ARMED:
            self._arm_accepts()
        qt = accepts[0]
        deadline, nonblocking = self._deadline()
        try:
            result = self._wait(qt, deadline, nonblocking)
        except (TimeoutError, BlockingIOError):
            raise
        except OSError:
            if accepts and accepts[0] == qt:
                accepts.pop(0)
            raise
        if accepts and accepts[0] == qt:
            accepts.pop(0)
        assert result.new_qd is not None
        conn = socket(AF_INET, SOCK_STREAM, self.proto, _qd=result.new_qd, _via=self._shared)
        if getdefaulttimeout() is None and self._timeout is not None:
            conn.setblocking(True)
        self._arm_accepts()  # goes out with the next request or wait
        addr = result.addr
        if addr is None:
            addr = conn.getpeername()
        return conn, addr

    def _arm_accepts(self) -> None:
        """Keep ACCEPTS_ARMED accepts with the daemon (sent with the next request)."""
        want = ACCEPTS_ARMED - len(self._accept_qts)
        if want <= 0:
            return
        qd = self._check()
        lib = self._shared.lib
        accepts = self._accept_qts

        def arm() -> None:
            for _ in range(want):
                accepts.append(lib.accept(qd, defer=True))

        self._shared.call(arm)

    def connect(self, address: Any) -> None:
        """Connect to ``(host, port)``. With a timeout, ``TimeoutError`` (the attempt goes
        on; a later ``connect`` waits for it again); non-blocking, ``BlockingIOError``
        (``EINPROGRESS``, then ``EALREADY``) until it completes."""
        self._check()
        lib = self._shared.lib
        first = self._connect_qt is None
        if first:
            self._connect_error = 0
            self._connect_qt = self._call(lib.connect, resolve(address))
        qt = self._connect_qt
        assert qt is not None
        try:
            self._shared.wait(qt, self._timeout)
        except TimeoutError:
            if self._timeout == 0:
                err = _errno.EINPROGRESS if first else _errno.EALREADY
                raise BlockingIOError(err, os.strerror(err)) from None
            raise
        except OSError as exc:
            if exc.errno != _errno.EBADF:
                self._connect_qt = None
            raise
        self._connect_qt = None

    def connect_ex(self, address: Any) -> int:
        """``connect``, returning 0 or the errno instead of raising it."""
        try:
            self.connect(address)
        except TimeoutError:
            return _errno.EAGAIN if self._timeout == 0 else _errno.ETIMEDOUT
        except OSError as exc:
            return exc.errno or _errno.EIO
        return 0

    def _connect_status(self) -> int:
        """SO_ERROR: the connect attempt's errno (taken once), 0 while it goes on."""
        qt = self._connect_qt
        if qt is not None:
            try:
                self._shared.wait(qt, 0)
            except TimeoutError:
                return 0
            except OSError as exc:
                self._connect_qt = None
                self._connect_error = exc.errno or _errno.EIO
            else:
                self._connect_qt = None
        err, self._connect_error = self._connect_error, 0
        return err

    # -- sending ----------------------------------------------------------------------------
    def _reap_pushes(self) -> None:
        """Forget the pushes that have completed (oldest first); raise the error of one
        that failed (the stack's report for bytes taken earlier, as a kernel's next send
        does)."""
        pushes = self._push_qts
        shared = self._shared
        while pushes and shared.done(pushes[0][0]):
            qt, size = pushes.pop(0)
            self._unsent -= size
            shared.wait(qt, 0)  # raises its error

    def _drain_pushes(self, bound: int, deadline: float | None, nonblocking: bool) -> None:
        """Wait until at most ``bound`` bytes of earlier sends wait for the send buffer."""
        pushes = self._push_qts
        while self._unsent > bound and pushes:
            qt, size = pushes[0]
            self._wait(qt, deadline, nonblocking)  # TimeoutError/BlockingIOError: stays
            if pushes and pushes[0][0] == qt:
                pushes.pop(0)
                self._unsent -= size

    def _push(self, view: memoryview) -> None:
        # Lib.push has written the bytes to the daemon connection when it returns: the
        # caller's buffer is free again at once, whatever happens to the token.
        if self._shut_wr:
            raise BrokenPipeError(_errno.EPIPE, os.strerror(_errno.EPIPE))
        size = len(view)
        # Its completion may come late (with the next pop's data) while this socket will
        # not wait for it: it keeps the send below half the bound.
        lazy = self._unsent + size <= SEND_BUFFER // 2
        qd, lib = self._check(), self._shared.lib
        qt = self._shared.call(lambda: lib.push(qd, view, lazy=lazy))
        self._push_qts.append((qt, size))
        self._unsent += size

    def _fail_push(self, exc: OSError) -> None:
        """A failed push's error: the pushes behind it are moot."""
        self._push_qts.clear()
        self._unsent = 0
        raise exc

    def send(self, data: Any, flags: int = 0) -> int:
        """Queue ``data``; the number of bytes taken (see the module docstring)."""
        self._check()
        view = memoryview(data).cast("B")
        deadline, nonblocking = self._deadline(flags)
        try:
            if self._push_qts:
                self._reap_pushes()
            if deadline is None:  # blocking: take it all, then wait down to the bound
                if view:
                    for start in range(0, len(view), SEND_CHUNK):
                        self._drain_pushes(SEND_BUFFER, None, False)
                        self._push(view[start : start + SEND_CHUNK])
                return len(view)
            room = SEND_BUFFER - self._unsent
            if room <= 0:
                self._drain_pushes(SEND_BUFFER - 1, deadline, nonblocking)
                room = SEND_BUFFER - self._unsent
        except OSError as exc:
            if isinstance(exc, TimeoutError | BlockingIOError):
                raise
            self._fail_push(exc)
        view = view[: min(room, NONBLOCKING_SEND_MAX)]
        if view:
            self._push(view)
        return len(view)

    def sendall(self, data: Any, flags: int = 0) -> None:
        """Queue all of ``data``; return once at most :data:`SEND_BUFFER` bytes of this
        socket's sends wait for the send buffer (with a timeout: at most that long in all,
        then ``TimeoutError``; what was taken still goes out)."""
        self._check()
        view = memoryview(data).cast("B")
        deadline, nonblocking = self._deadline(flags)
        try:
            if self._push_qts:
                self._reap_pushes()
            for start in range(0, len(view), SEND_CHUNK):
                if not nonblocking:
                    self._drain_pushes(SEND_BUFFER, deadline, False)
                self._push(view[start : start + SEND_CHUNK])
        except OSError as exc:
            if isinstance(exc, TimeoutError | BlockingIOError):
                raise
            self._fail_push(exc)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Send a file's contents (read in blocks; ``file`` opened in binary mode)."""
        if offset:
            file.seek(offset)
        total = 0
        block = 1 << 20
        while count is None or total < count:
            want = block if count is None else min(block, count - total)
            chunk = file.read(want)
            if not chunk:
                break
            self.sendall(chunk)
            total += len(chunk)
        if hasattr(file, "seek"):
            try:
                file.seek(offset + total)
            except OSError:
                pass
        return total

    # -- receiving --------------------------------------------------------------------------
    def _receive(self, bufsize: int, flags: int) -> bytes:
        """Up to ``bufsize`` bytes (> 0): buffered ones first, else one pop."""
        self._check()
        peek = bool(flags & MSG_PEEK)
        waitall = bool(flags & MSG_WAITALL) and not peek
        deadline, nonblocking = self._deadline(flags)
        out = bytearray()
        while True:
            buf = self._rbuf
            if buf:
                n = min(bufsize - len(out), len(buf))
                out += buf[:n]
                if not peek:
                    del buf[:n]
                    if self._pop_qt is None and len(buf) < RECV_BUFFER:
                        self._arm_pop()
                if not waitall or len(out) >= bufsize:
                    return bytes(out)
            if self._eof or self._shut_rd:
                return bytes(out)
            if self._pop_qt is None:
                self._arm_pop()
            try:
                result = self._wait(self._pop_qt, deadline, nonblocking)  # type: ignore[arg-type]
            except (TimeoutError, BlockingIOError):
                if out:  # MSG_WAITALL: what came so far
                    return bytes(out)
                raise
            except OSError:
                self._pop_qt = None
                if out:
                    return bytes(out)
                raise
            self._pop_qt = None
            data = result.data
            if not data:
                self._eof = True
            else:
                if not out and not self._rbuf and len(data) <= bufsize and not (peek or waitall):
                    self._arm_pop()
                    return data
                self._rbuf += data
                if len(self._rbuf) < RECV_BUFFER:
                    self._arm_pop()
            if peek and self._rbuf:
                return bytes(self._rbuf[:bufsize])

    def _arm_pop(self) -> None:
        """Arm the standing pop (it goes out with this Lib's next request or wait)."""
        if self._pop_qt is not None or self._eof or self._shut_rd or self._qd is None:
            return
        qd = self._qd
        lib = self._shared.lib
        self._pop_qt = self._shared.call(lambda: lib.pop(qd, None, defer=True))

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if bufsize < 0:
            raise ValueError("negative buffersize in recv")
        if bufsize == 0:
            self._check()
            return b""
        return self._receive(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        view = memoryview(buffer).cast("B")
        if nbytes == 0 or nbytes > len(view):
            if nbytes > len(view):
                raise ValueError("buffer too small for requested bytes")
            nbytes = len(view)
        if nbytes == 0:
            self._check()
            return 0
        data = self._receive(nbytes, flags)
        view[: len(data)] = data
        return len(data)

    def recvfrom(self, bufsize: int, flags: int = 0) -> tuple[bytes, None]:
        return self.recv(bufsize, flags), None

    def recvfrom_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> tuple[int, None]:
        return self.recv_into(buffer, nbytes, flags), None

    def makefile(
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> Any:
        """A file object on the socket, as the standard library's ``makefile``: modes
        ``r``, ``w``, ``b`` (``rb``, ``wb``, ``rwb``, text with ``encoding``...)."""
        if not set(mode) <= {"r", "w", "b"}:
            raise ValueError(f"invalid mode {mode!r} (only r, w, b allowed)")
        writing = "w" in mode
        reading = "r" in mode or not writing
        binary = "b" in mode
        rawmode = ("r" if reading else "") + ("w" if writing else "")
        raw = _std.SocketIO(self, rawmode)  # type: ignore[arg-type]
        self._io_refs += 1
        if buffering is None:
            buffering = -1
        if buffering < 0:
            buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            if not binary:
                raise ValueError("unbuffered streams must be binary")
            return raw
        buffer: Any
        if reading and writing:
            buffer = io.BufferedRWPair(raw, raw, buffering)
        elif reading:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if binary:
            return buffer
        text = io.TextIOWrapper(buffer, io.text_encoding(encoding), errors, newline)
        text.mode = mode  # type: ignore[misc]
        return text

    # -- shutting down ------------------------------------------------------------------------
    def shutdown(self, how: int) -> None:
        """``SHUT_WR``: FIN after the queued data; ``SHUT_RD``: later receives return
        ``b""`` (local); ``SHUT_RDWR``: both."""
        self._check()
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise OSError(_errno.EINVAL, os.strerror(_errno.EINVAL))
        if how in (SHUT_WR, SHUT_RDWR) and not self._shut_wr:
            self._call(self._shared.lib.shutdown)
            self._shut_wr = True
        if how in (SHUT_RD, SHUT_RDWR):
            if not self._listening:
                self.getpeername()  # ENOTCONN as the kernel
            self._shut_rd = True
            self._rbuf.clear()

    # -- names and options --------------------------------------------------------------------
    def getsockname(self) -> Address:
        return self._call(self._shared.lib.getsockname)

    def getpeername(self) -> Address:
        return self._call(self._shared.lib.getpeername)

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        self._check()
        number = option_value(value, optlen)
        if (level, optname) == (SOL_SOCKET, SO_REUSEADDR):
            self._reuseaddr = int(bool(number))
            return
        name = stack_option(level, optname)
        if name in _FLAG_OPTIONS:
            # A flag cannot fail on a descriptor we hold: no wait for the daemon. Nagle
            # only matters to later sends, so TCP_NODELAY even goes with the next request.
            qd, lib, flag = self._check(), self._shared.lib, int(bool(number))
            defer = name == "TCP_NODELAY"
            self._shared.call(lambda: lib.setsockopt(qd, name, flag, wait=False, defer=defer))
            return
        self._call(self._shared.lib.setsockopt, name, number)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        self._check()
        value: Any
        local = {
            (SOL_SOCKET, SO_REUSEADDR): lambda: self._reuseaddr,
            (SOL_SOCKET, _std.SO_TYPE): lambda: int(SOCK_STREAM),
            (SOL_SOCKET, _std.SO_ERROR): self._connect_status,
            (SOL_SOCKET, getattr(_std, "SO_DOMAIN", 39)): lambda: int(AF_INET),
            (SOL_SOCKET, getattr(_std, "SO_PROTOCOL", 38)): lambda: IPPROTO_TCP,
            (SOL_SOCKET, getattr(_std, "SO_ACCEPTCONN", 30)): lambda: int(self._listening),
        }
        getter = local.get((level, optname))
        if getter is not None:
            value = getter()
        else:
            value = self._call(self._shared.lib.getsockopt, stack_option(level, optname))
            if isinstance(value, float) and value.is_integer():
                value = int(value)
        if buflen is None:
            return value
        if not 0 < buflen <= 1024:
            raise OSError(_errno.EINVAL, "getsockopt buflen out of range")
        return struct.pack("i", int(value)).ljust(buflen, b"\0")[:buflen]


SocketType = socket


# =====================================================================================
# convenience functions
# =====================================================================================
def create_connection(
    address: tuple[Any, int],
    timeout: Any = _GLOBAL_DEFAULT_TIMEOUT,
    source_address: tuple[Any, int] | None = None,
    *,
    all_errors: bool = False,
    lib: Lib | None = None,
) -> socket:
    """Connect to ``(host, port)`` and return the socket, as the standard library's
    ``create_connection`` (IPv4 addresses of ``host`` are tried in turn; the last error, or
    an ``ExceptionGroup`` of all with ``all_errors``, is raised)."""
    host, port = address
    exceptions: list[OSError] = []
    infos = _std.getaddrinfo(host, port, AF_INET, SOCK_STREAM)
    for _af, _kind, _proto, _canon, sockaddr in infos:
        sock = None
        try:
            sock = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP, lib=lib)
            if timeout is not _GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr[:2])
            exceptions.clear()
            return sock
        except OSError as exc:
            if not all_errors:
                exceptions.clear()
            exceptions.append(exc)
            if sock is not None:
                sock.close()
    if exceptions:
        try:
            if not all_errors:
                raise exceptions[0]
            raise ExceptionGroup("create_connection failed", exceptions)
        finally:
            exceptions.clear()
    raise OSError("getaddrinfo returns an empty list")


def create_server(
    address: tuple[Any, int],
    *,
    family: int = AF_INET,
    backlog: int | None = 128,
    reuse_port: bool = False,
    dualstack_ipv6: bool = False,
    lib: Lib | None = None,
) -> socket:
    """A listening socket bound to ``(host, port)`` (``""`` is every address of the
    stack), as the standard library's ``create_server``. ``reuse_port`` and
    ``dualstack_ipv6`` are not supported (``ValueError``)."""
    if reuse_port:
        raise ValueError("SO_REUSEPORT not supported by xdpstack")
    if dualstack_ipv6:
        raise ValueError("dualstack_ipv6 not supported by xdpstack")
    if family != AF_INET:
        raise ValueError("xdpstack sockets are AF_INET only")
    sock = socket(AF_INET, SOCK_STREAM, lib=lib)
    try:
        sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as err:
            msg = f"{err.strerror} (while attempting to bind on address {address!r})"
            raise OSError(err.errno, msg) from None
        sock.listen(backlog)
        return sock
    except BaseException:
        sock.close()
        raise


def has_dualstack_ipv6() -> bool:
    return False


def __getattr__(name: str) -> Any:
    """Everything else is the standard library's (constants, resolver functions...)."""
    try:
        return getattr(_std, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
