"""The low-level client library: Demikernel-style queue tokens over the daemon's socket.

::

    lib = xdpstack.connect()  # $XDPSTACK_SOCKET or /run/xdpstack/xdpstackd.sock
    qd = lib.socket()
    qt = lib.connect(qd, ("10.0.0.2", 80))
    lib.wait(qt)  # raises ConnectionRefusedError etc. on failure
    lib.wait(lib.push(qd, b"hello"))
    r = lib.wait(lib.pop(qd))  # r.data: 1..size bytes, b"" at end of stream
    lib.close(qd)

Calls that the stack answers at once (``socket``, ``bind``, ``listen``, ``close``,
``getsockname``, ...) return their value or raise ``OSError``. ``accept``, ``connect``,
``push`` and ``pop`` return a queue token (``qt``), an ``int`` that ``wait`` /
``wait_any`` turn into a :class:`QResult`. Completions arrive asynchronously and are kept
by token until waited for; a token is consumed by the wait that returns (or raises) its
result.

Errors: ``OSError`` subclasses built from the errno (``ECONNREFUSED`` ->
``ConnectionRefusedError``, ``ECONNRESET`` -> ``ConnectionResetError``, ...). An error
raised by ``wait``/``wait_any`` carries ``.qt`` and ``.qd``. A wait that times out raises
``TimeoutError`` and leaves its tokens pending.

A push larger than one frame is sent as several daemon pushes, in order, behind one token
that completes when the last part does (the first error wins). A pop asks for at most one
frame's worth of data (1 MiB); it completes with fewer bytes when fewer are there.

No waiting for the daemon: ``accept``, ``connect``, ``push`` and ``pop`` send their request
and return (the Lib chooses the token; the protocol's no-reply form), so an error the stack
reports at once (EBADF, ENOTCONN, EISCONN...) is raised by the ``wait`` for the token. The
per-client limits are the exception: where one could refuse the call (this client's
descriptors with accepts not yet completed at ``client_max_sockets``, bytes in pushes not
yet completed past ``client_max_push_bytes``, pending tokens at the daemon's maximum), the
call asks the daemon and waits for its answer, so ``EMFILE`` / ``ENOBUFS`` is raised by
the call itself and nothing is queued. ``pop(..., defer=True)`` keeps the request until
this Lib next sends or waits (a standing pop re-armed for free with the next request).

Threads: a :class:`Lib` is **not thread-safe**. Use one per thread (each has its own
connection to the daemon), or guard one with a lock.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import socket
from collections.abc import Callable
from time import monotonic as _now
from typing import Any, NamedTuple

from xdpstack import protocol as P
from xdpstack.protocol import OpCode, ProtocolError

__all__ = ["Lib", "OpCode", "QResult", "connect"]

HELLO_TIMEOUT_S = 10.0
#: The first of the queue tokens a Lib chooses (the daemon's own are far below).
OUR_TOKENS = 1 << 63
RECV_CHUNK = 1 << 20
#: Most socket reads one ``poll()`` makes (an event loop calls it again while readable).
POLL_READS = 16

Address = tuple[str, int]

#: The ``socket`` module's integer option names the stack knows (Linux values).
_OPTION_NAMES = {
    getattr(socket, name): name
    for name in (
        "TCP_NODELAY",
        "SO_KEEPALIVE",
        "SO_SNDBUF",
        "SO_RCVBUF",
        "TCP_KEEPIDLE",
        "TCP_KEEPINTVL",
        "TCP_KEEPCNT",
    )
    if hasattr(socket, name)
}


class QResult(NamedTuple):
    """What a queue token completed with.

    ``data``: the popped bytes (``b""`` at end of stream; ``b""`` for other ops).
    ``addr``: the peer's ``(ip, port)`` for accept, else None.
    ``new_qd``: the accepted connection's descriptor, else None.
    """

    opcode: OpCode
    qd: int
    qt: int
    data: bytes = b""
    addr: Address | None = None
    new_qd: int | None = None


class _Token:
    __slots__ = (
        "addr", "data", "discarded", "done", "errno", "issuing", "message", "new_qd", "opcode",
        "parts", "qd", "qt",
    )  # fmt: skip

    def __init__(self, opcode: OpCode, qd: int, qt: int = 0) -> None:
        self.opcode = opcode
        self.qd = qd
        self.qt = qt
        self.parts = 0  # tokens on the wire not yet completed
        self.issuing = True  # parts still being sent: parts == 0 does not mean done yet
        self.discarded = False
        self.done = False
        self.errno = 0
        self.message = ""
        self.data = b""
        self.addr: Address | None = None
        self.new_qd: int | None = None


def connect(path: str | os.PathLike[str] | None = None) -> Lib:
    """Connect to the daemon at ``path`` (default ``$XDPSTACK_SOCKET`` or
    ``/run/xdpstack/xdpstackd.sock``). A daemon that is not there raises
    ``FileNotFoundError`` / ``ConnectionRefusedError`` / ``PermissionError`` naming the
    path; a daemon that refuses the client (wrong protocol version, too many clients)
    raises ``OSError`` with its errno and message."""
    from xdpstack import default_socket_path

    path = os.fspath(path) if path is not None else default_socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise _with_path(exc, path) from None
    try:
        return Lib._handshake(sock, path)
    except BaseException:
        sock.close()
        raise


def _with_path(exc: OSError, path: str) -> OSError:
    reason = exc.strerror or str(exc)
    return type(exc)(exc.errno, f"cannot reach xdpstackd ({reason})", path)


def _error(err: int, message: str, path: str | None = None) -> OSError:
    text = message or os.strerror(err)
    if path is not None:
        return OSError(err, text, path)
    return OSError(err, text)


class Lib:
    """One connection to ``xdpstackd``. Not thread-safe. See the module docstring."""

    def __init__(
        self,
        sock: socket.socket,
        path: str,
        client_id: int,
        max_payload: int,
        limits: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        self._sock = sock
        self.path = path
        self.client_id = client_id
        self.max_payload = max_payload
        self.max_push = max_payload - 12  # a PUSH payload: the token, qd, then data
        self._rbuf = bytearray()
        self._rids = itertools.count(1)
        self._reply: tuple[int, int, bytes | bytearray] | None = None  # type, request id, payload
        self._parts: tuple[int, bytearray] | None = None  # a reply in several frames, so far
        # Our tokens (the user's and the no-reply requests' ones) are from 2**63 up, apart
        # from the daemon's (small numbers, in replies).
        self._qts = itertools.count(OUR_TOKENS)
        self._tokens: dict[int, _Token] = {}
        self._ready: dict[int, None] = {}  # completed, not yet taken (in completion order)
        self._wire: dict[int, _Token] = {}  # token on the wire (ours or the daemon's) -> token
        self._early: dict[int, P.WireCompletion] = {}  # completions before their reply
        self._push_sizes: dict[int, int] = {}  # wire token of a push -> its bytes
        self._push_held = 0  # bytes in pushes not yet completed (the daemon holds them)
        self._accepts = 0  # accepts not yet completed (each brings a descriptor)
        self._out: list[bytes] = []  # deferred requests: sent with the next send or wait
        self._orphans: list[int] = []  # descriptors of discarded accepts: to close
        self._qds: set[int] = set()
        self._closed = False
        self._broken: OSError | None = None
        # The daemon's per-client limits (0: none known): where one could refuse a call,
        # it goes in the replied form (see the module docstring).
        self.max_descriptors, self.max_pending, self.max_push_bytes = limits

    @classmethod
    def _handshake(cls, sock: socket.socket, path: str) -> Lib:
        sock.settimeout(HELLO_TIMEOUT_S)
        try:
            sock.sendall(P.encode_hello())
        except (BrokenPipeError, ConnectionResetError):
            pass  # a daemon refusing us may close first: its ERROR frame is still to read
        buf = bytearray()
        while True:
            try:
                decoded = P.decode_frame(buf, 0, P.DEFAULT_MAX_PAYLOAD)
            except ProtocolError as exc:
                raise OSError(errno.EPROTO, f"bad hello from the daemon: {exc}", path) from None
            if decoded is not None:
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(
                    errno.ETIMEDOUT, "xdpstackd did not answer the hello", path
                ) from None
            if not chunk:
                raise ConnectionResetError(
                    errno.ECONNRESET, "xdpstackd closed the connection during the hello", path
                )
            buf += chunk
        frame, end = decoded
        ftype, payload = frame.type, bytes(frame.payload)
        frame.payload.release()
        if ftype == P.FrameType.ERROR:
            err, message = P.decode_error(payload)
            raise _error(err, f"xdpstackd refused the connection: {message}", path)
        if ftype != P.FrameType.HELLO:
            raise OSError(errno.EPROTO, f"unexpected frame type {ftype} for the hello", path)
        try:
            version, client_id, max_payload = P.decode_server_hello(payload)
        except ProtocolError as exc:
            raise OSError(errno.EPROTO, str(exc), path) from None
        if version != P.PROTOCOL_VERSION:
            raise OSError(errno.EPROTONOSUPPORT, f"daemon speaks protocol {version}", path)
        sock.setblocking(False)
        lib = cls(sock, path, client_id, max_payload, P.decode_server_limits(payload))
        lib._rbuf = bytearray(buf[end:])
        del frame
        if lib._rbuf:
            lib._parse()
        return lib

    # =================================================================================
    # the calls
    # =================================================================================
    def socket(self) -> int:
        """A new TCP/IPv4 descriptor."""
        qd = self._call(lambda rid: P.request(P.Op.SOCKET, rid))
        self._qds.add(qd)
        return qd

    def bind(self, qd: int, addr: Address) -> None:
        self._call(lambda rid: P.request_addr(P.Op.BIND, rid, qd, addr))

    def listen(self, qd: int, backlog: int = 128) -> None:
        backlog = max(0, min(int(backlog), P.U32_MAX))
        self._call(lambda rid: P.request_listen(rid, qd, backlog))

    def accept(self, qd: int, *, defer: bool = False) -> int:
        """A connection from ``qd``'s accept queue (the token's ``new_qd`` and ``addr``).
        ``defer`` as for :meth:`pop`."""
        _check_qd(qd)
        limit = self.max_descriptors
        # at the descriptor limit EMFILE is likely: ask, so that it is raised here
        ask = bool(limit) and len(self._qds) + self._accepts >= limit
        return self._no_reply(
            OpCode.ACCEPT, qd, lambda rid, qt: P.request_accept(rid, qd, qt), ask=ask, defer=defer
        )

    def connect(self, qd: int, addr: Address) -> int:
        _check_qd(qd)
        P.encode_addr(addr)  # TypeError/ValueError here, as before
        return self._no_reply(
            OpCode.CONNECT, qd, lambda rid, qt: P.request_connect(rid, qd, addr, qt)
        )

    def push(self, qd: int, data: bytes | bytearray | memoryview, *, lazy: bool = False) -> int:
        """Queue ``data`` for sending; the token completes when all of it is in the send
        buffer. Pushes on one descriptor keep their order. Returns once the bytes are
        written to the daemon connection (``data`` is free again). ``lazy``: the caller
        does not mean to wait for the token soon; its completion may come with the
        daemon's next message (a millisecond later at most) instead of on its own."""
        _check_qd(qd)
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        step = self.max_push
        token = self._new_token(OpCode.PUSH, qd)
        if len(view) <= step:
            self._push_part(token, qd, view, True, lazy)
            return self._issued(token)
        for start in range(0, len(view), step):
            try:
                self._push_part(token, qd, view[start : start + step], start == 0, lazy)
            except OSError as exc:
                if start == 0:
                    raise
                # Parts already queued still complete; this error is the token's (unless
                # one of them failed first).
                if not token.errno:
                    token.errno = exc.errno or errno.EIO
                    token.message = exc.strerror or str(exc)
                break
        return self._issued(token)

    def pop(self, qd: int, size: int | None = None, *, defer: bool = False) -> int:
        """Ask for up to ``size`` bytes (None: whatever is there, at most one frame).
        ``defer``: the request goes out with this Lib's next send or wait (or
        :meth:`flush`), not now."""
        _check_qd(qd)
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int):
                raise TypeError(f"size must be an int or None, got {size!r}")
            if size <= 0:
                raise OSError(errno.EINVAL, "pop size must be positive")
            size = min(size, P.U32_MAX)
        return self._no_reply(
            OpCode.POP, qd, lambda rid, qt: P.request_pop(rid, qd, size, qt), defer=defer
        )

    def flush(self) -> None:
        """Send the deferred requests now (waits and other calls do it themselves)."""
        if self._out:
            self._check_usable()
            self._send([])

    def done(self, qt: int) -> bool:
        """Whether ``qt`` has completed (its result waits for ``wait``). Unknown token:
        ``ValueError``."""
        token = self._tokens.get(qt)
        if token is None:
            raise ValueError(f"unknown queue token {qt!r} (never issued, or already waited)")
        return token.done

    def close(self, qd: int, *, wait: bool = True) -> None:
        """Graceful close (FIN after queued data; RST if unread data is left, as Linux).
        ``wait=False``: do not wait for the daemon's answer (an error, EBADF for a
        descriptor that is not ours, is not reported)."""
        self._qds.discard(qd)
        self._close_op(P.Op.CLOSE, qd, wait)

    def abort(self, qd: int, *, wait: bool = True) -> None:
        """Hard close: RST now. ``wait`` as for :meth:`close`."""
        self._qds.discard(qd)
        self._close_op(P.Op.ABORT, qd, wait)

    def _close_op(self, op: P.Op, qd: int, wait: bool) -> None:
        if wait:
            self._call(lambda rid: P.request_qd(op, rid, qd))
        else:
            self._check_usable()
            self._send([P.request_qd(op, 0, qd, P.F_NOREPLY)])

    def shutdown(self, qd: int) -> None:
        """Stop sending (SHUT_WR): FIN after queued data; receiving goes on."""
        self._call(lambda rid: P.request_qd(P.Op.SHUTDOWN, rid, qd))

    def getsockname(self, qd: int) -> Address:
        return self._call(lambda rid: P.request_qd(P.Op.GETSOCKNAME, rid, qd))

    def getpeername(self, qd: int) -> Address:
        return self._call(lambda rid: P.request_qd(P.Op.GETPEERNAME, rid, qd))

    def setsockopt(
        self,
        qd: int,
        name: str | int,
        value: int | float | bool,
        *,
        wait: bool = True,
        defer: bool = False,
    ) -> None:
        """``wait=False``: do not wait for the daemon's answer (an error is not
        reported: for a value that cannot fail, such as TCP_NODELAY 0 or 1); with
        ``defer`` too, the request goes out with this Lib's next send or wait (before
        any later push, so in time for an option that only matters to them)."""
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int | float):
            raise TypeError(f"option value must be an int or a float, got {value!r}")
        opt = _option_name(name)
        if wait:
            self._call(lambda rid: P.request_setsockopt(rid, qd, opt, value))
            return
        self._check_usable()
        frame = P.request_setsockopt(0, qd, opt, value, P.F_NOREPLY)
        if defer:
            self._out.append(frame)
        else:
            self._send([frame])

    def getsockopt(self, qd: int, name: str | int) -> int | float:
        opt = _option_name(name)
        return self._call(lambda rid: P.request_getsockopt(rid, qd, opt))

    def control(self, op: P.Op | int, args: dict[str, Any] | None = None) -> Any:
        """A control request (STATUS, CONNECTIONS, STATS, ...) -> its JSON reply, whole
        (a reply larger than a frame comes in several, put together here). A reply the
        daemon will not send at all raises ``OSError`` EMSGSIZE. Not for CAPTURE, whose
        stream of frames ``xdpstackctl`` reads itself."""
        return self._call(lambda rid: P.request_control(op, rid, args, stream=True))

    # =================================================================================
    # waiting
    # =================================================================================
    def wait(self, qt: int, timeout: float | None = None) -> QResult:
        """The result of ``qt``. Raises its ``OSError`` (with ``.qt``, ``.qd``) if the
        operation failed, ``TimeoutError`` if it has not completed within ``timeout``
        seconds (the token stays pending)."""
        token = self._tokens.get(qt)
        if token is None:
            raise ValueError(f"unknown queue token {qt!r} (never issued, or already waited)")
        if not token.done:  # (_pump sends the deferred requests before it looks or blocks)
            deadline = None if timeout is None else _now() + max(0.0, timeout)
            while not token.done:
                self._pump(deadline)
        return self._take(qt, token)

    def wait_any(self, qts: list[int], timeout: float | None = None) -> tuple[int, QResult]:
        """``(i, result)`` for the first of ``qts`` (in list order among those done) that
        has completed; the others stay pending. Errors and timeouts as for ``wait``."""
        qts = list(qts)
        if not qts:
            raise ValueError("wait_any needs at least one queue token")
        tokens = []
        for qt in qts:
            token = self._tokens.get(qt)
            if token is None:
                raise ValueError(f"unknown queue token {qt!r} (never issued, or already waited)")
            tokens.append(token)
        deadline = None if timeout is None else _now() + max(0.0, timeout)
        while True:
            for i, token in enumerate(tokens):
                if token.done:
                    return i, self._take(qts[i], token)
            self._pump(deadline)

    def poll(self) -> list[int]:
        """Process what the daemon has sent so far, without blocking; return the tokens
        that have completed and are not yet consumed, in the order they completed (take
        each one's result with ``wait(qt, 0)``). For event loops: ``fileno()`` becomes
        readable when there may be something to process."""
        self._check_usable()
        if self._out:
            self._send([])
        for _ in range(POLL_READS):
            if not self._read_once(block=False):
                break
        return list(self._ready)

    def discard(self, qt: int) -> None:
        """Forget ``qt``: its result is not wanted (its descriptor was closed, say). Its
        completion, when it comes, is dropped. An unknown token is ignored."""
        token = self._tokens.pop(qt, None)
        if token is not None:
            token.discarded = True
            self._ready.pop(qt, None)
            if token.done and token.new_qd is not None and not token.errno:
                self._orphans.append(token.new_qd)  # closed with the next call

    def pending(self) -> list[int]:
        """Tokens issued and not yet consumed by a wait."""
        return list(self._tokens)

    def descriptors(self) -> set[int]:
        """The descriptors this Lib holds (created or accepted, not closed)."""
        return set(self._qds)

    def fileno(self) -> int:
        """The daemon connection's descriptor: readable when completions may be there."""
        return self._sock.fileno()

    # =================================================================================
    # closing
    # =================================================================================
    def close_all(self) -> None:
        """Close every descriptor this Lib holds, then the connection to the daemon.
        Idempotent. (Disconnecting alone has the daemon close them too.)"""
        if self._closed:
            return
        if self._broken is None:
            try:
                for qd in sorted(self._qds):
                    self.close(qd, wait=False)
                self.flush()
            except OSError:
                pass
        self._qds.clear()
        self.disconnect()

    def disconnect(self) -> None:
        """Drop the connection; the daemon closes our descriptors as at a process exit."""
        if not self._closed:
            self._closed = True
            self._sock.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Lib:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_all()

    def __del__(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None and not getattr(self, "_closed", True):
            sock.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"client {self.client_id}"
        return f"<xdpstack.Lib {self.path} {state}, {len(self._tokens)} pending>"

    # =================================================================================
    # internals
    # =================================================================================
    def _call(self, build: Callable[[int], bytes]) -> Any:
        """Send the request ``build(request_id)``; return its reply's value or raise
        its error."""
        self._check_usable()
        if self._orphans:
            self._close_orphans()
        rid = next(self._rids) & P.U32_MAX
        self._send([build(rid)])
        return self._await_reply(rid)

    def _close_orphans(self) -> None:
        """Close the descriptors that discarded accepts brought (nobody will)."""
        orphans, self._orphans = self._orphans, []
        for qd in orphans:
            if qd in self._qds:
                self.close(qd, wait=False)

    def _new_token(self, opcode: OpCode, qd: int) -> _Token:
        self._check_usable()
        qt = next(self._qts)
        return _Token(opcode, qd, qt)

    def _issued(self, token: _Token) -> int:
        """Every part of ``token`` has been sent: hand it out."""
        self._tokens[token.qt] = token
        token.issuing = False
        if token.parts == 0:
            token.done = True
            self._ready[token.qt] = None
        return token.qt

    def _no_reply(
        self,
        opcode: OpCode,
        qd: int,
        build: Callable[[int, int | None], bytes],
        *,
        defer: bool = False,
        ask: bool = False,
    ) -> int:
        """An accept, connect or pop in the no-reply form; in the replied one when
        ``ask`` or when the daemon's pending-token limit could refuse it (its error is
        raised here then)."""
        token = self._new_token(opcode, qd)
        if ask or (self.max_pending and len(self._wire) >= self.max_pending):
            dqt = self._call(lambda rid: build(rid, None))
            if opcode is OpCode.ACCEPT:
                self._accepts += 1
            self._attach(token, dqt)  # (its completion may be in _early already)
        else:
            frame = build(0, token.qt)
            if opcode is OpCode.ACCEPT:
                self._accepts += 1
            self._attach(token, token.qt)  # before it is sent: the answer may come meanwhile
            if defer:
                self._out.append(frame)
            else:
                self._send([frame])
        return self._issued(token)

    def _push_part(self, token: _Token, qd: int, part: memoryview, first: bool, lazy: bool) -> None:
        size = len(part)
        limit = self.max_push_bytes
        held = self._push_held
        if (limit and held and held + size > limit) or (
            self.max_pending and len(self._wire) >= self.max_pending
        ):
            # The daemon may refuse it (ENOBUFS): ask, so that the refusal is raised here.
            self._check_usable()
            rid = next(self._rids) & P.U32_MAX
            self._send([P.request_push_head(rid, qd, size), part])
            dqt = self._await_reply(rid)
            if size:
                self._push_sizes[dqt] = size
                self._push_held += size
            self._attach(token, dqt)
        else:
            dqt = next(self._qts) if not first else token.qt
            self._check_usable()
            head = P.request_push_head(0, qd, size, dqt, lazy)
            if size:
                self._push_sizes[dqt] = size
                self._push_held += size
            self._attach(token, dqt)  # before it is sent: the answer may come meanwhile
            self._send([head, part])

    def _await_reply(self, rid: int) -> Any:
        while self._reply is None:
            self._pump(None)
        ftype, reply_rid, payload = self._reply
        self._reply = None
        if reply_rid != rid:
            raise self._fail(f"reply for request {reply_rid}, expected {rid}")
        if ftype == P.FrameType.ERROR:
            err, message = P.decode_error(payload)
            raise _error(err, message)
        try:
            return P.decode_value(payload)
        except ProtocolError as exc:
            raise self._fail(f"bad reply: {exc}") from None

    def _attach(self, token: _Token, wire_qt: int) -> None:
        token.parts += 1
        self._wire[wire_qt] = token
        if self._early:
            early = self._early.pop(wire_qt, None)
            if early is not None:
                self._complete(early)

    def _complete(self, wc: P.WireCompletion) -> None:
        token = self._wire.pop(wc.qt, None)
        if token is None:
            if wc.qt < OUR_TOKENS:  # the daemon's token, its reply not yet read
                self._early[wc.qt] = wc
            return
        if self._push_sizes:
            size = self._push_sizes.pop(wc.qt, 0)
            self._push_held -= size
        if token.opcode is OpCode.ACCEPT:
            self._accepts -= 1
        token.parts -= 1
        if token.discarded:
            # nobody will take it: a descriptor it brought is ours to close
            if wc.new_qd is not None and not wc.errno:
                self._qds.add(wc.new_qd)
                self._orphans.append(wc.new_qd)
            return
        if wc.errno and not token.errno:
            token.errno = wc.errno
        if wc.new_qd is not None:
            token.new_qd = wc.new_qd
            self._qds.add(wc.new_qd)
        if wc.addr is not None:
            token.addr = wc.addr
        if wc.data:
            token.data = wc.data
        if token.parts == 0 and not token.issuing:
            token.done = True
            self._ready[token.qt] = None

    def _take(self, qt: int, token: _Token) -> QResult:
        del self._tokens[qt]
        self._ready.pop(qt, None)
        if token.errno:
            if token.new_qd is not None:
                self._qds.discard(token.new_qd)
            exc = _error(token.errno, token.message)
            exc.qt = qt  # type: ignore[attr-defined]
            exc.qd = token.qd  # type: ignore[attr-defined]
            raise exc
        return QResult(token.opcode, token.qd, qt, token.data, token.addr, token.new_qd)

    def _check_usable(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "this xdpstack connection is closed")
        if self._broken is not None:
            raise self._broken

    def _fail(self, message: str, err: int = errno.EPROTO) -> OSError:
        exc = _error(err, message, self.path)
        self._broken = exc
        return exc

    # -- socket I/O ---------------------------------------------------------------------
    def _send(self, buffers: list[Any]) -> None:
        """Write the deferred requests, then ``buffers``, all of them (one ``sendmsg``
        when the socket takes it)."""
        sock = self._sock
        if self._out:
            buffers = self._out + buffers
            self._out = []
        views = [v for v in (memoryview(b).cast("B") for b in buffers) if len(v)]
        while views:
            try:
                sent = sock.sendmsg(views)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                raise self._fail(f"lost the daemon: {exc.strerror or exc}", exc.errno) from None
            while sent and views:
                n = len(views[0])
                if sent >= n:
                    sent -= n
                    views.pop(0)
                else:
                    views[0] = views[0][sent:]
                    sent = 0
            if views:
                # Wait until we can write; meanwhile read what the daemon sends, so a
                # daemon that has stopped reading us until we read its completions
                # never deadlocks with us.
                poller = select.poll()
                poller.register(sock, select.POLLOUT | select.POLLIN)
                for _fd, events in poller.poll():
                    if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        self._read_once()

    def _pump(self, deadline: float | None) -> None:
        """Wait for data from the daemon until ``deadline`` (monotonic; None: forever);
        process what arrives. Raises TimeoutError at the deadline."""
        self._check_usable()
        if self._out:
            self._send([])
        if deadline is None:
            timeout_ms = -1
        else:
            remaining = deadline - _now()
            if remaining <= 0:
                # one last non-blocking look before giving up
                if self._read_once(block=False):
                    return
                raise TimeoutError(errno.ETIMEDOUT, "wait timed out")
            timeout_ms = max(1, int(remaining * 1000 + 0.999))
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        if poller.poll(timeout_ms):
            self._read_once()

    def _read_once(self, block: bool = True) -> bool:
        """Read what is there and process whole frames. False if nothing was there."""
        try:
            data = self._sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            raise self._fail(f"lost the daemon: {exc.strerror or exc}", exc.errno) from None
        if not data:
            raise self._fail("xdpstackd closed the connection", errno.ECONNRESET)
        self._rbuf += data
        self._parse()
        return True

    def _parse(self) -> None:
        buf = self._rbuf
        offset = 0
        max_payload = self.max_payload
        try:
            while True:
                decoded = P.decode_frame(buf, offset, max_payload)
                if decoded is None:
                    break
                frame, offset = decoded
                payload = frame.payload
                try:
                    ftype = frame.type
                    if ftype == P.FrameType.COMPLETION:
                        self._complete(P.decode_completion(payload))
                    elif ftype == P.FrameType.REPLY or ftype == P.FrameType.ERROR:
                        if self._reply is not None:
                            raise ProtocolError("a reply nobody asked for")
                        if ftype == P.FrameType.REPLY and frame.flags & P.F_STREAM:
                            self._reply_part(frame.request_id, frame.flags, payload)
                        elif self._parts is not None:
                            raise ProtocolError("a reply inside another one")
                        else:
                            self._reply = (ftype, frame.request_id, bytes(payload))
                    else:
                        raise ProtocolError(f"unexpected frame type {ftype}")
                finally:
                    payload.release()
                del frame, decoded, payload
        except ProtocolError as exc:
            raise self._fail(f"bad data from the daemon: {exc}") from None
        if offset:
            del buf[:offset]

    def _reply_part(self, rid: int, flags: int, payload: memoryview) -> None:
        """One frame of a reply in several (protocol: "Replies in several frames")."""
        parts = self._parts
        if parts is None:
            parts = self._parts = (rid, bytearray())
        elif parts[0] != rid:
            raise ProtocolError(f"a reply to request {rid} inside the one to {parts[0]}")
        parts[1].extend(payload)
        if flags & P.F_END:
            self._parts = None
            self._reply = (P.FrameType.REPLY, rid, parts[1])


def _check_qd(qd: Any) -> None:
    """A descriptor is a u32 (checked before a token is made for it)."""
    if isinstance(qd, bool) or not isinstance(qd, int):
        raise TypeError(f"qd must be an int, got {qd!r}")
    if not 0 <= qd <= P.U32_MAX:
        raise ValueError(f"qd {qd} is outside 0-{P.U32_MAX}")


def _option_name(name: str | int) -> str:
    if isinstance(name, str):
        return name.upper()
    if isinstance(name, int) and not isinstance(name, bool):
        known = _OPTION_NAMES.get(name)
        if known is None:
            raise OSError(errno.ENOPROTOOPT, f"unknown socket option {name}")
        return known
    raise TypeError(f"option name must be a str or an int, got {name!r}")
