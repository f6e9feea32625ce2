"""The control connection of ``xdpstackctl``: hello, control requests, streams.

Control requests could go through :class:`xdpstack.Lib` (``lib.control``), but the CLI
also needs what the application library does not do: bounded waits (a wedged daemon must
not hang the operator's shell) and reading the CAPTURE stream, whose several REPLY frames
per request ``Lib`` would reject. This is that small blocking reader, built on
:mod:`xdpstack.protocol`. :meth:`ControlClient.request` asks for replies in several frames
(CONNECTIONS with thousands of connections outgrows one) and puts them together.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import socket
from time import monotonic
from typing import Any

from xdpstack import protocol as P

DEFAULT_TIMEOUT_S = 10.0
RECV_CHUNK = 1 << 20


class Unreachable(Exception):
    """No daemon at ``path`` (or it refused us during the hello)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot reach xdpstackd at {path}: {reason}")
        self.path = path
        self.reason = reason


class DaemonError(Exception):
    """The daemon answered a request with an ERROR frame."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message or os.strerror(err))
        self.errno = err
        self.message = message or os.strerror(err)


class ControlClient:
    """One connection to the daemon. ``with ControlClient(path) as c: c.request(op)``."""

    def __init__(self, path: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout
        self.client_id: int | None = None
        self.max_payload = P.DEFAULT_MAX_PAYLOAD
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._rids = itertools.count(1)

    # -- connecting -------------------------------------------------------------------------
    def connect(self) -> ControlClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise Unreachable(self.path, _reason(exc)) from None
        self._sock = sock
        try:
            sock.sendall(P.encode_hello())
            frame = self.read_frame(self.timeout)
        except (OSError, ConnectionError) as exc:
            self.close()
            raise Unreachable(self.path, _reason(exc)) from None
        except P.ProtocolError as exc:
            self.close()
            raise Unreachable(self.path, f"not an xdpstackd socket ({exc})") from None
        if frame is None:
            self.close()
            raise Unreachable(self.path, "no answer to the hello")
        if frame.type == P.FrameType.ERROR:
            err, message = P.decode_error(frame.payload)
            self.close()
            raise Unreachable(self.path, f"refused: {message or os.strerror(err)}")
        if frame.type != P.FrameType.HELLO:
            self.close()
            raise Unreachable(self.path, f"not an xdpstackd socket (frame type {frame.type})")
        try:
            _version, self.client_id, self.max_payload = P.decode_server_hello(frame.payload)
        except P.ProtocolError as exc:
            self.close()
            raise Unreachable(self.path, f"bad hello ({exc})") from None
        return self

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> ControlClient:
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    # -- requests ---------------------------------------------------------------------------
    def send(self, op: int, args: dict[str, Any] | None = None, *, stream: bool = False) -> int:
        """Send a control request; return its request id. ``stream``: the reply may come
        in several frames (only :meth:`request` reads those)."""
        assert self._sock is not None, "not connected"
        rid = next(self._rids)
        self._sock.settimeout(self.timeout)
        self._sock.sendall(P.request_control(op, rid, args, stream=stream))
        return rid

    def request(self, op: int, args: dict[str, Any] | None = None) -> Any:
        """A control request's reply value, whole even when it came in several frames;
        DaemonError for an ERROR reply, TimeoutError when the daemon stays silent for the
        timeout (a long reply may take longer in all, as long as its frames keep coming)."""
        rid = self.send(op, args, stream=True)
        deadline = monotonic() + self.timeout
        parts: bytearray | None = None
        while True:
            frame = self.read_frame(max(0.0, deadline - monotonic()))
            if frame is None:
                raise TimeoutError(errno.ETIMEDOUT, f"xdpstackd did not answer {P.Op(op).name}")
            if frame.request_id != rid:
                continue  # a late stream frame of an earlier request
            if frame.type == P.FrameType.REPLY and frame.flags & P.F_STREAM:
                parts = bytearray() if parts is None else parts
                parts += frame.payload
                if not frame.flags & P.F_END:
                    deadline = monotonic() + self.timeout
                    continue
                return P.decode_value(parts)
            if parts is not None:
                raise P.ProtocolError(f"{P.Op(op).name}: the reply's last frame is missing")
            return decode_reply(frame)

    # -- frames -----------------------------------------------------------------------------
    def read_frame(self, timeout: float | None) -> P.Frame | None:
        """The next frame (payload copied), or None if none is complete within ``timeout``
        seconds (None: wait forever). ConnectionError when the daemon closes."""
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            decoded = P.decode_frame(self._buf, 0, self.max_payload)
            if decoded is not None:
                frame, end = decoded
                out = P.Frame(
                    frame.type, frame.op, frame.flags, frame.request_id, bytes(frame.payload)
                )
                frame.payload.release()
                del frame, decoded
                del self._buf[:end]
                return out
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0:
                return None
            if not self._wait_readable(remaining):
                return None
            assert self._sock is not None
            self._sock.settimeout(None)
            chunk = self._sock.recv(RECV_CHUNK)
            if not chunk:
                raise ConnectionResetError(errno.ECONNRESET, "xdpstackd closed the connection")
            self._buf += chunk

    def _wait_readable(self, timeout: float | None) -> bool:
        assert self._sock is not None
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        ms = -1 if timeout is None else max(1, int(timeout * 1000))
        return bool(poller.poll(ms))


def decode_reply(frame: P.Frame) -> Any:
    if frame.type == P.FrameType.ERROR:
        err, message = P.decode_error(frame.payload)
        raise DaemonError(err, message)
    if frame.type != P.FrameType.REPLY:
        raise P.ProtocolError(f"unexpected frame type {frame.type}")
    return P.decode_value(frame.payload)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
