"""One client connection of the API server: framing, hello, credentials, back-pressure.

A :class:`Session` is the asyncio protocol of one accepted Unix-socket connection. It
cuts the byte stream into frames (:mod:`xdpstack.protocol`) and hands each REQUEST to the
server, which owns the routing and the Engine calls. What it keeps about its client:
the peer credentials (SO_PEERCRED: pid, uid, gid), the descriptors it owns and the
queue tokens it waits for.

Output is corked: the frames a session produces (replies, errors, completions) are
collected and go out in one ``writelines`` -- at the end of the read that carried the
requests (every complete request in it is handled first), or, for completions that come
from the network, in a ``call_soon`` once per loop iteration. One ``send`` per iteration
instead of one per frame: the daemon's share in writes and the client's wake-ups both
drop. The completion of a push the client does not wait for (``F_LAZY``) is *lazy*: it
waits for the session's next other frame (a client pushing and popping gets it with the
pop's data) or :data:`LAZY_FLUSH_S`, whichever comes first, so it does not wake a client
that waits for something else.

Back-pressure: the transport's write buffer has a high-water mark; above it the session
stops reading the client's requests (``pause_reading``) until the client has read its
replies and completions. Above a hard limit (a client that issued many pops and never
reads) the client is dropped, its descriptors closed as at a process exit.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from xdpstack import protocol as P

if TYPE_CHECKING:
    from xdpstackd.api.server import ApiServer

log = logging.getLogger(__name__)

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

#: Longest a lazy frame (a push's completion) waits for company before it goes alone.
LAZY_FLUSH_S = 0.001


class Session(asyncio.Protocol):
    def __init__(self, server: ApiServer, client_id: int) -> None:
        self.server = server
        self.id = client_id
        self.pid: int | None = None
        self.uid: int | None = None
        self.gid: int | None = None
        self.connected_at = time.time()
        self.qds: set[int] = set()
        self.qts: set[int] = set()
        self.accept_qts: set[int] = set()  # accepts not completed (each brings a descriptor)
        self.push_sizes: dict[int, int] = {}  # push token -> bytes, until it completes
        self.push_bytes = 0  # sum of push_sizes: held for this client (per-client limit)
        self.lazy_qts: set[int] = set()  # pushes the client does not wait for (F_LAZY)
        self.closed = False
        self.hello_done = False
        self.paused = False
        self.requests = 0
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._out: list[bytes | memoryview] = []  # frames not yet handed to the transport
        self._out_bytes = 0
        self._corked = False  # in data_received: flushed at its end
        self._flush_handle: asyncio.Handle | None = None
        self._eager = False  # _out holds a frame that is not lazy
        self._lazy_handle: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check
        self.transport = transport  # type: ignore[assignment]
        self._read_peercred(transport)
        server = self.server
        transport.set_write_buffer_limits(high=server.write_high, low=server.write_high // 4)
        if not server.admit(self):
            self.send_error(
                P.Op.NONE,
                0,
                errno.ECONNREFUSED,
                f"xdpstackd has too many clients ({server.max_clients})",
            )
            self.drop("too many clients")
            return
        log.debug("client %d connected (pid %s uid %s)", self.id, self.pid, self.uid)

    def connection_lost(self, exc: Exception | None) -> None:
        self.drop("disconnected" if exc is None else f"connection lost: {exc}", abort=True)

    def pause_writing(self) -> None:
        if not self.closed and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.closed and self.transport is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost does the rest

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        buf = self._buf
        buf += data
        offset = 0
        if not self.hello_done:
            if len(buf) < P.HELLO.size:
                return
            try:
                version = P.decode_hello(bytes(buf[: P.HELLO.size]))
            except P.ProtocolError as exc:
                self.send_error(P.Op.NONE, 0, exc.errno, str(exc))
                self.drop("bad hello")
                return
            if not P.MIN_PROTOCOL_VERSION <= version <= P.PROTOCOL_VERSION:
                self.send_error(
                    P.Op.NONE,
                    0,
                    errno.EPROTONOSUPPORT,
                    f"protocol version {version} is not supported; "
                    f"xdpstackd speaks versions {P.MIN_PROTOCOL_VERSION}-{P.PROTOCOL_VERSION}",
                )
                self.drop(f"protocol version {version}")
                return
            self.hello_done = True
            offset = P.HELLO.size
            server = self.server
            self.write(
                P.encode_server_hello(
                    self.id,
                    server.max_frame,
                    (server.max_descriptors, server.max_pending, server.max_push_bytes),
                    version,
                )
            )
        handle = self.server.handle_frame
        max_payload = self.server.max_frame
        self._corked = True
        try:
            while not self.closed:
                try:
                    decoded = P.decode_frame(buf, offset, max_payload)
                except P.ProtocolError as exc:
                    op, rid = _peek_op_rid(buf, offset)
                    self.send_error(op, rid, exc.errno, str(exc))
                    self.drop(f"bad frame: {exc}")
                    return
                if decoded is None:
                    break
                frame, offset = decoded
                try:
                    self.requests += 1
                    handle(self, frame)
                finally:
                    frame.payload.release()
                del frame, decoded
        finally:
            self._corked = False
            if offset and not self.closed:
                try:
                    del buf[:offset]
                except BufferError:  # a view escaped somewhere: start a fresh buffer
                    self._buf = bytearray(buf[offset:])
            if self._out:
                self.flush()

    # -- output -------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue one frame; it goes out with the others of this loop iteration."""
        if self.closed or self.transport is None:
            return
        self._out.append(data)
        self._out_bytes += len(data)
        self._queued_eager()

    def writelines(self, buffers: list[bytes]) -> None:
        """Queue frames given as buffers (a frame may span several)."""
        if self.closed or self.transport is None:
            return
        self._extend(buffers)
        self._queued_eager()

    def write_lazy(self, buffers: list[bytes]) -> None:
        """Queue frames nobody waits for as a rule: they go out with the next other frame,
        or after LAZY_FLUSH_S."""
        if self.closed or self.transport is None:
            return
        self._extend(buffers)
        if self._lazy_handle is None and not self._eager:
            self._lazy_handle = self.server.loop.call_later(LAZY_FLUSH_S, self._flush_lazy)

    def _extend(self, buffers: list[bytes]) -> None:
        out = self._out
        for data in buffers:
            out.append(data)
            self._out_bytes += len(data)

    def _queued_eager(self) -> None:
        """Frames somebody waits for were queued: flush at the end of this iteration
        (unless corked), or drop a client whose unread output passed the hard limit."""
        self._eager = True
        if self._out_bytes > self.server.write_hard_limit:
            assert self.transport is not None
            self._check_hard_limit(self.transport)
        elif not self._corked and self._flush_handle is None:
            self._flush_handle = self.server.loop.call_soon(self.flush)

    def _flush_lazy(self) -> None:
        self._lazy_handle = None
        self._eager = True
        self.flush()

    def flush(self) -> None:
        """Hand the queued frames to the transport: one ``send`` for all of them (only
        lazy ones: they wait, see write_lazy)."""
        handle, self._flush_handle = self._flush_handle, None
        if handle is not None:
            handle.cancel()
        out = self._out
        transport = self.transport
        if not out or self.closed or transport is None or not self._eager:
            return
        self._eager = False
        lazy, self._lazy_handle = self._lazy_handle, None
        if lazy is not None:
            lazy.cancel()
        self._out = []
        self._out_bytes = 0
        if len(out) == 1:
            transport.write(out[0])
        else:
            transport.writelines(out)
        self._check_hard_limit(transport)

    def queued(self) -> int:
        """Bytes written to this client and not yet sent (queued here or in the transport)."""
        transport = self.transport
        return self._out_bytes + (transport.get_write_buffer_size() if transport else 0)

    def send_error(self, op: int, request_id: int, err: int, message: str) -> None:
        self.write(P.error(op, request_id, err, message))

    def _check_hard_limit(self, transport: asyncio.Transport) -> None:
        """Drop a client that does not read (its output, queued here and in the
        transport, past the hard limit)."""
        size = self._out_bytes + transport.get_write_buffer_size()
        if size > self.server.write_hard_limit:
            log.warning(
                "client %d (pid %s) does not read: %d bytes queued; dropping it",
                self.id,
                self.pid,
                size,
            )
            self.drop("output limit exceeded", abort=True)

    # -- teardown -----------------------------------------------------------------------
    def drop(self, reason: str, *, abort: bool = False) -> None:
        """Close this client now: its descriptors are closed (soon, outside any Engine
        call) as at a process exit, and nothing more is read or written."""
        if self.closed:
            return
        if not abort and self._out and self.transport is not None:
            self._eager = True
            self.flush()  # a final error frame goes out before the close
        self.closed = True
        for handle in (self._flush_handle, self._lazy_handle):
            if handle is not None:
                handle.cancel()
        self._flush_handle = self._lazy_handle = None
        self._out = []
        transport = self.transport
        if transport is not None:
            # Flush a small final error frame, but never wait on a client that does not
            # read.
            if abort or transport.get_write_buffer_size() > 65536:
                transport.abort()
            else:
                transport.close()
        self._buf = bytearray()
        self.server.release(self, reason)

    # -- inspection ---------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "uid": self.uid,
            "gid": self.gid,
            "descriptors": sorted(self.qds),
            "pending_tokens": len(self.qts),
            "pending_push_bytes": self.push_bytes,
            "requests": self.requests,
            "output_queued": self.queued(),
            "reading_paused": self.paused,
            "connected_s": round(time.time() - self.connected_at, 3),
        }

    def _read_peercred(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            self.pid, self.uid, self.gid = _PEERCRED.unpack(raw)
        except (OSError, struct.error, AttributeError) as exc:
            log.debug("SO_PEERCRED failed: %s", exc)

    def __repr__(self) -> str:
        return f"Session(id={self.id}, pid={self.pid}, uid={self.uid}, qds={len(self.qds)})"


def _peek_op_rid(buf: bytearray, offset: int) -> tuple[int, int]:
    """The op and request id of a frame header at ``offset``, or (0, 0) if incomplete."""
    if len(buf) - offset >= P.HEADER_SIZE:
        _, _, op, _, rid = P.HEADER.unpack_from(buf, offset)
        return op, rid
    return 0, 0
