"""The daemon's Unix-socket API server: many clients, one Engine.

Each accepted connection is a :class:`~xdpstackd.api.session.Session`. Requests are
decoded with :mod:`xdpstack.protocol` and turned into Engine calls on the loop's thread;
every request gets exactly one REPLY or ERROR frame, in order -- except ACCEPT, CONNECT,
PUSH and POP in the no-reply form (``F_QT``: the client chose the queue token), whose only
answer is the token's COMPLETION, with the errno when the call failed at once (a request
that cannot be decoded still gets an ERROR). A session's frames of one loop iteration go
out together (:class:`~xdpstackd.api.session.Session` corks its output). A reply larger than a
frame (CONNECTIONS on a busy daemon) goes in several REPLY frames, written together, to a
client whose request carries ``F_STREAM``; to others, or past ``max_reply`` bytes, it is
ERROR EMSGSIZE (see "Replies in several frames" in :mod:`xdpstack.protocol`).

Ownership: a descriptor belongs to the session that created it (``socket``) or accepted
it (the accept completion's ``new_qd`` goes to the listener's session). Any call on a
descriptor the session does not own is EBADF, exactly as for a number the stack never
handed out. A session that goes away has its descriptors closed (``engine.close``), as a
process exit closes its files.

Completions: the Engine hands every completion to :meth:`ApiServer.on_completion`
(``engine.completion_sink``). They are routed by queue token to the session that asked
(by descriptor if the token is unknown). A call such as ``accept`` or ``pop`` can
complete *inside* the Engine call that created the token, before the server knows the
token; completions that arrive during a call are therefore held and routed right after
the call's reply is written, so a client always sees the reply that names a token
before the token's completion. A completion goes out with the client's token: the one
it chose (``F_QT``), else the Engine's.

Control ops (``xdpstackctl``): STATUS, CONNECTIONS and SHOW (each connection carries an
``owner``: the client id, pid and uid holding its descriptor), STATS, STEERING,
ABORT_CONN (an operator's RST, whoever owns the connection) and CAPTURE, which turns the
asking connection into a stream of pcap records (:mod:`xdpstackd.pcap`; the format is in
:mod:`xdpstack.ctl_pcap`) until its count is reached, it asks to stop, or it goes away.

Per-client limits (``[daemon]`` keys ``client_max_sockets`` and
``client_max_push_bytes``), so that one client cannot take the daemon's memory:

* descriptors: ``socket`` (and ``accept``, counting accepts not yet completed) fails with
  EMFILE once the client holds ``max_descriptors`` of them, as a process at its
  RLIMIT_NOFILE does;
* bytes in pending pushes: a push completes when its bytes are in the connection's send
  buffer (bounded by SO_SNDBUF); until then the daemon holds them for the client. A push
  that would take the client's held bytes past ``max_push_bytes`` fails at once with
  ENOBUFS and nothing of it is queued; the pushes accepted before it are not affected and
  complete in order as the peer reads. The client waits for one of its push tokens and
  tries again. (The client library knows the limit from the server hello and uses the
  replied form of PUSH whenever a push could pass it, so the refusal reaches the call.)
  (Chosen over back-pressure -- not reading the client's requests -- because
  that would also hold up the client's pops and its other connections behind one slow
  peer.) A client with no push pending can always push one frame, whatever the limit.

Nothing a client sends can stop the daemon: decoding raises only ``ProtocolError``
(answered with its errno; framing errors also close that client), an Engine call that
fails with ``OSError`` is answered with its errno, and any other exception is logged
and answered with EINVAL or EIO.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import itertools
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from typing import Any

import xdpstack
from xdpstack import protocol as P
from xdpstack.ctl_pcap import RECORD_HEADER
from xdpstackd.api.session import Session
from xdpstackd.inetstack.completion import Completion
from xdpstackd.pcap import CaptureStream, parse_capture_args

log = logging.getLogger(__name__)

DEFAULT_MAX_CLIENTS = 1024
DEFAULT_MAX_DESCRIPTORS = 65536  # per client, like RLIMIT_NOFILE ([daemon] client_max_sockets)
DEFAULT_MAX_PUSH_BYTES = 64 << 20  # per client, in pushes not yet completed
DEFAULT_MAX_PENDING = 65536  # queue tokens per client not yet completed
DEFAULT_WRITE_HIGH = 4 << 20  # above this a client's requests are not read
DEFAULT_WRITE_HARD_LIMIT = 256 << 20  # above this a client is dropped
LISTEN_BACKLOG = 128


class ApiServer:
    """Serve ``engine`` on the Unix socket ``path``.

    ``await start()`` creates the socket (a stale file from a dead daemon is removed;
    a live daemon on the same path makes it fail with EADDRINUSE), sets its mode and
    group, and starts accepting. ``await stop()`` closes every client (their descriptors
    are closed) and removes the socket file.
    """

    def __init__(
        self,
        engine: Any,
        path: str,
        *,
        group: str | int | None = None,
        mode: int = 0o660,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_frame: int = P.DEFAULT_MAX_PAYLOAD,
        max_descriptors: int = DEFAULT_MAX_DESCRIPTORS,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_push_bytes: int = DEFAULT_MAX_PUSH_BYTES,
        write_high: int = DEFAULT_WRITE_HIGH,
        write_hard_limit: int = DEFAULT_WRITE_HARD_LIMIT,
        status_extra: Callable[[], dict[str, Any]] | None = None,
        max_reply: int | None = None,
    ) -> None:
        if max_frame < P.PAYLOAD_OVERHEAD + 1 or max_frame > P.U32_MAX - P.HEADER_SIZE:
            raise ValueError(f"max_frame {max_frame} is out of range")
        self.engine = engine
        self.path = os.fspath(path)
        self.group = group
        self.mode = mode
        self.max_clients = max_clients
        self.max_frame = max_frame  # largest frame payload, both directions
        self.max_push = max_frame - 4
        self.max_pop = max_frame - P.COMPLETION.size
        self.max_descriptors = max_descriptors
        self.max_pending = max_pending
        self.max_push_bytes = max_push_bytes
        self.write_high = write_high
        self.write_hard_limit = max(write_hard_limit, write_high + 2 * max_frame)
        # most bytes one reply takes on the wire (split into frames); more is EMSGSIZE
        self.max_reply = max_reply if max_reply is not None else self.write_hard_limit // 2
        self.status_extra = status_extra
        self.sessions: dict[int, Session] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "clients_accepted",
                "clients_refused",
                "clients_dropped",
                "requests",
                "request_errors",
                "protocol_errors",
                "internal_errors",
                "completions_routed",
                "completions_dropped",
                "orphan_descriptors_closed",
                "sockets_refused_emfile",
                "pushes_refused_enobufs",
                "replies_split",
                "replies_too_large",
            ),
            0,
        )
        self._ids = itertools.count(1)
        self._qt_owner: dict[int, tuple[Session, int]] = {}  # engine qt -> (session, its qt)
        self._wire_qt: int | None = None  # the client's token of the F_QT request in hand
        self._lazy = False  # the request in hand is a PUSH with F_LAZY
        self._qd_owner: dict[int, Session] = {}
        self._in_call = False
        self._request_id = 0  # of the request being handled
        self._held: list[Completion] = []
        self._server: asyncio.AbstractServer | None = None
        self._file_id: tuple[int, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous_sink: Callable[[Completion], None] | None = None
        self._started_at = time.time()
        self._handlers: dict[P.Op, Callable[..., Any]] = {
            P.Op.SOCKET: self._socket,
            P.Op.BIND: self._bind,
            P.Op.LISTEN: self._listen,
            P.Op.ACCEPT: self._accept,
            P.Op.CONNECT: self._connect,
            P.Op.PUSH: self._push,
            P.Op.POP: self._pop,
            P.Op.CLOSE: self._close,
            P.Op.ABORT: self._abort,
            P.Op.SHUTDOWN: self._qd_call("shutdown"),
            P.Op.SETSOCKOPT: self._qd_call("setsockopt"),
            P.Op.GETSOCKOPT: self._qd_call("getsockopt"),
            P.Op.GETSOCKNAME: self._qd_call("getsockname"),
            P.Op.GETPEERNAME: self._qd_call("getpeername"),
            P.Op.STATUS: self._status,
            P.Op.CONNECTIONS: self._connections,
            P.Op.SHOW: self._show,
            P.Op.STATS: self._stats,
            P.Op.STEERING: self._steering,
            P.Op.ABORT_CONN: self._abort_conn,
            P.Op.CAPTURE: self._capture,
        }
        self._captures: dict[int, CaptureStream] = {}  # session id -> its capture

    # =================================================================================
    # lifecycle
    # =================================================================================
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        path = self.path
        self._prepare_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        created = False
        try:
            sock.bind(path)
            created = True
            # Mode and group before listen(): until then a connect is refused, so no
            # client ever reaches a socket with the umask's permissions.
            os.chmod(path, self.mode)
            if self.group is not None:
                os.chown(path, -1, _group_id(self.group))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
            self._server = await loop.create_unix_server(self._new_session, sock=sock)
        except BaseException:
            sock.close()
            if created:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        st = os.stat(path)
        self._file_id = (st.st_dev, st.st_ino)
        self._started_at = time.time()
        self._previous_sink = self.engine.completion_sink
        self.engine.completion_sink = self.on_completion
        log.info("API socket %s (mode %o)", path, self.mode)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for session in list(self.sessions.values()):
            session.drop("daemon stopping")
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        # run the descriptor closes that drop() scheduled
        await asyncio.sleep(0)
        if self.engine.completion_sink == self.on_completion:
            self.engine.completion_sink = self._previous_sink or (lambda completion: None)
        self._remove_socket_file()

    def _prepare_path(self) -> None:
        path = self.path
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket", path)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale API socket %s", path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        except TimeoutError:
            pass  # a live listener too busy to accept: still live
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, "another xdpstackd is listening on this socket", path)

    def _remove_socket_file(self) -> None:
        if self._file_id is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._file_id:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", self.path, exc)
        self._file_id = None

    # =================================================================================
    # sessions
    # =================================================================================
    def _new_session(self) -> Session:
        return Session(self, next(self._ids))

    def admit(self, session: Session) -> bool:
        if self._server is None or len(self.sessions) >= self.max_clients:
            self.counters["clients_refused"] += 1
            return False
        self.sessions[session.id] = session
        self.counters["clients_accepted"] += 1
        return True

    def release(self, session: Session, reason: str) -> None:
        """Forget ``session`` now; close its descriptors right after the current
        callback (never inside an Engine call or a completion hand-off)."""
        if self.sessions.pop(session.id, None) is None:
            return
        capture = self._captures.pop(session.id, None)
        if capture is not None:
            capture.stop("client gone")  # removes the engine tap
        if reason not in ("disconnected", "daemon stopping"):
            self.counters["clients_dropped"] += 1
            log.info("client %d (pid %s) dropped: %s", session.id, session.pid, reason)
        for qt in session.qts:
            owner = self._qt_owner.get(qt)
            if owner is not None and owner[0] is session:
                del self._qt_owner[qt]
        session.qts.clear()
        session.accept_qts.clear()
        session.push_sizes.clear()
        session.lazy_qts.clear()
        session.push_bytes = 0
        qds = sorted(session.qds)
        session.qds.clear()
        for qd in qds:
            if self._qd_owner.get(qd) is session:
                del self._qd_owner[qd]
        if qds:
            self._call_soon(self._close_descriptors, qds)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop or self.engine.loop

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon(fn, *args)

    def _close_descriptors(self, qds: list[int]) -> None:
        for qd in qds:
            if qd in self._qd_owner:  # handed out again meanwhile (cannot happen today)
                continue
            try:
                self.engine.close(qd, discard_pending=True)
            except OSError:
                pass  # already gone (aborted by the daemon, or closed by the stack)
            except Exception:
                self.counters["internal_errors"] += 1
                log.exception("closing descriptor %d of a departed client", qd)

    def clients(self) -> list[dict[str, Any]]:
        return [s.info() for s in self.sessions.values()]

    # =================================================================================
    # completions
    # =================================================================================
    def on_completion(self, completion: Completion) -> None:
        """``engine.completion_sink``. Never raises and never calls the Engine."""
        if self._in_call:
            self._held.append(completion)
            return
        try:
            self._route(completion)
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("routing completion %r", completion)

    def _route(self, c: Completion) -> None:
        owner = self._qt_owner.pop(c.qt, None)
        if owner is None:
            session = self._qd_owner.get(c.qd)
            wire_qt = c.qt
        else:
            session, wire_qt = owner
        new_qd = c.new_qd
        if session is None or session.closed:
            self.counters["completions_dropped"] += 1
            if new_qd is not None and new_qd not in self._qd_owner:
                self.counters["orphan_descriptors_closed"] += 1
                self._call_soon(self._close_descriptors, [new_qd])
            return
        session.qts.discard(c.qt)
        if session.push_sizes:
            session.push_bytes -= session.push_sizes.pop(c.qt, 0)
        if session.accept_qts:
            session.accept_qts.discard(c.qt)
        lazy = False
        if session.lazy_qts and c.qt in session.lazy_qts:
            session.lazy_qts.discard(c.qt)
            lazy = not c.errno
        if new_qd is not None:
            session.qds.add(new_qd)
            self._qd_owner[new_qd] = session
        self.counters["completions_routed"] += 1
        frames = P.completion_frame(
            wire_qt, c.qd, int(c.opcode), c.errno, c.data or b"", c.addr, new_qd
        )
        if lazy or (c.errno == errno.ECANCELED and c.qd not in session.qds):
            # Nobody waits for it (a push the client said it does not wait for; an
            # operation cancelled by the client's own close): it goes with the next frame.
            session.write_lazy(frames)
        else:
            session.writelines(frames)

    def _flush_held(self) -> None:
        held, self._held = self._held, []
        for completion in held:
            try:
                self._route(completion)
            except Exception:
                self.counters["internal_errors"] += 1
                log.exception("routing completion %r", completion)

    # =================================================================================
    # requests
    # =================================================================================
    def handle_frame(self, session: Session, frame: P.Frame) -> None:
        """One frame from ``session``: exactly one REPLY or ERROR goes back (for a
        request in the no-reply form, nothing or its token's failed COMPLETION)."""
        self.counters["requests"] += 1
        op_num, rid = frame.op, frame.request_id
        try:
            op, wire_qt, args = P.decode_request_qt(frame)
        except P.ProtocolError as exc:
            self.counters["protocol_errors"] += 1
            session.send_error(op_num, rid, exc.errno, str(exc))
            return
        handler = self._handlers.get(op)
        if handler is None:
            self.counters["protocol_errors"] += 1
            session.send_error(op_num, rid, errno.ENOSYS, f"{op.name} is not implemented")
            return
        if wire_qt is not None:
            self._lazy = bool(frame.flags & P.F_LAZY)
            self._handle_no_reply(session, op, wire_qt, handler, args)
            return
        if frame.flags & P.F_NOREPLY:  # CLOSE, ABORT, SETSOCKOPT: a failure only counted
            try:
                handler(session, *args)
            except Exception:
                self.counters["request_errors"] += 1
            return
        self._in_call = True
        self._request_id = rid
        try:
            value = handler(session, *args)
        except OSError as exc:
            self.counters["request_errors"] += 1
            err = exc.errno or errno.EIO
            session.send_error(op_num, rid, err, exc.strerror or str(exc))
        except (TypeError, ValueError, OverflowError, KeyError) as exc:
            self.counters["request_errors"] += 1
            session.send_error(op_num, rid, errno.EINVAL, str(exc) or type(exc).__name__)
        except Exception as exc:
            self.counters["internal_errors"] += 1
            log.exception("%s from client %d", op.name, session.id)
            session.send_error(op_num, rid, errno.EIO, f"internal error: {type(exc).__name__}")
        else:
            self._reply(session, op, rid, frame.flags, value)
        finally:
            self._in_call = False
            if self._held:
                self._flush_held()

    def _handle_no_reply(
        self,
        session: Session,
        op: P.Op,
        wire_qt: int,
        handler: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        """ACCEPT/CONNECT/PUSH/POP with the client's token ``wire_qt``: no reply; a call
        that fails at once completes that token with its errno."""
        self._in_call = True
        self._wire_qt = wire_qt
        err = 0
        try:
            handler(session, *args)
        except OSError as exc:
            err = exc.errno or errno.EIO
        except (TypeError, ValueError, OverflowError, KeyError):
            err = errno.EINVAL
        except Exception as exc:
            self.counters["internal_errors"] += 1
            log.exception("%s from client %d: %s", op.name, session.id, exc)
            err = errno.EIO
        finally:
            self._wire_qt = None
            self._lazy = False
            self._in_call = False
            if self._held:
                self._flush_held()
        if err:
            self.counters["request_errors"] += 1
            session.writelines(P.completion_frame(wire_qt, args[0], _OPCODE_OF[op], err))

    def _reply(self, session: Session, op: P.Op, rid: int, flags: int, value: Any) -> None:
        """Send ``value`` as the reply: one REPLY frame when it fits; in several frames
        (``F_STREAM`` ... ``F_STREAM | F_END``) when it does not and the request said it
        can read them; else ERROR EMSGSIZE (the client stays connected)."""
        try:
            payload = P.encode_value(value)
        except Exception as exc:
            self.counters["internal_errors"] += 1
            log.exception("encoding the reply to %s", op.name)
            session.send_error(op, rid, errno.EIO, f"cannot encode reply: {exc}")
            return
        size = len(payload)
        if size <= self.max_frame:
            session.write(P.encode_frame(P.FrameType.REPLY, op, rid, payload))
            return
        if not flags & P.F_STREAM:
            self.counters["replies_too_large"] += 1
            session.send_error(
                op,
                rid,
                errno.EMSGSIZE,
                f"the {op.name} reply is {size} bytes, more than one frame carries "
                f"({self.max_frame}), and this client did not ask for it in several frames "
                f"(request flag F_STREAM: a newer xdpstack client library does)",
            )
            return
        frames = -(-size // self.max_frame)
        wire = size + frames * P.HEADER_SIZE
        queued = session.queued()
        # past write_hard_limit the session would drop its client: refuse instead
        limit = min(self.max_reply, self.write_hard_limit - queued)
        if wire > limit:
            self.counters["replies_too_large"] += 1
            session.send_error(
                op,
                rid,
                errno.EMSGSIZE,
                f"the {op.name} reply is {size} bytes, more than the daemon sends as one "
                f"reply ({limit})",
            )
            return
        self.counters["replies_split"] += 1
        session.writelines(P.reply_frames(op, rid, payload, self.max_frame))

    # -- helpers --------------------------------------------------------------------------
    def _own(self, session: Session, qd: int) -> None:
        if qd not in session.qds:
            raise OSError(errno.EBADF, f"bad descriptor {qd}")

    def _token(self, session: Session, qt: int) -> int:
        session.qts.add(qt)
        wire_qt = self._wire_qt
        self._qt_owner[qt] = (session, qt if wire_qt is None else wire_qt)
        return qt

    def _check_pending(self, session: Session) -> None:
        if len(session.qts) >= self.max_pending:
            raise OSError(errno.ENOBUFS, f"too many pending operations ({self.max_pending})")

    def _qd_call(self, name: str) -> Callable[..., Any]:
        def call(session: Session, qd: int, *args: Any) -> Any:
            self._own(session, qd)
            return getattr(self.engine, name)(qd, *args)

        return call

    # -- socket calls -------------------------------------------------------------------
    def _check_descriptors(self, session: Session) -> None:
        """EMFILE at the client's descriptor limit (accepts not yet completed count: each
        brings a descriptor)."""
        if len(session.qds) + len(session.accept_qts) >= self.max_descriptors:
            self.counters["sockets_refused_emfile"] += 1
            raise OSError(errno.EMFILE, f"too many descriptors ({self.max_descriptors})")

    def _socket(self, session: Session) -> int:
        self._check_descriptors(session)
        qd = self.engine.socket()
        session.qds.add(qd)
        self._qd_owner[qd] = session
        return qd

    def _bind(self, session: Session, qd: int, addr: tuple[str, int]) -> None:
        self._own(session, qd)
        self.engine.bind(qd, addr)

    def _listen(self, session: Session, qd: int, backlog: int) -> None:
        self._own(session, qd)
        self.engine.listen(qd, backlog)

    def _accept(self, session: Session, qd: int) -> int:
        self._own(session, qd)
        self._check_pending(session)
        self._check_descriptors(session)
        qt = self._token(session, self.engine.accept(qd))
        session.accept_qts.add(qt)
        return qt

    def _connect(self, session: Session, qd: int, addr: tuple[str, int]) -> int:
        self._own(session, qd)
        self._check_pending(session)
        return self._token(session, self.engine.connect(qd, addr))

    def _push(self, session: Session, qd: int, data: bytes) -> int:
        self._own(session, qd)
        self._check_pending(session)
        size = len(data)
        held = session.push_bytes
        if held and held + size > self.max_push_bytes:
            self.counters["pushes_refused_enobufs"] += 1
            raise OSError(
                errno.ENOBUFS,
                f"{held} bytes of this client's pushes wait for send-buffer space; "
                f"{size} more would pass its limit of {self.max_push_bytes}",
            )
        qt = self._token(session, self.engine.push(qd, data))
        if self._lazy:
            session.lazy_qts.add(qt)
        if size:
            # routed (and subtracted) after this call returns, even if already complete
            session.push_sizes[qt] = size
            session.push_bytes += size
        return qt

    def _pop(self, session: Session, qd: int, size: int | None) -> int:
        self._own(session, qd)
        self._check_pending(session)
        # pop completes with 1..size bytes, so a smaller size is always correct; the
        # completion must fit one frame.
        if size is None or size > self.max_pop:
            size = self.max_pop
        return self._token(session, self.engine.pop(qd, size))

    def _close(self, session: Session, qd: int) -> None:
        self._own(session, qd)
        self._disown(session, qd)
        self.engine.close(qd)

    def _abort(self, session: Session, qd: int) -> None:
        self._own(session, qd)
        self._disown(session, qd)
        self.engine.abort(qd)

    def _disown(self, session: Session, qd: int) -> None:
        session.qds.discard(qd)
        if self._qd_owner.get(qd) is session:
            del self._qd_owner[qd]

    # -- control calls (xdpstackctl) -----------------------------------------------------
    def _status(self, session: Session, args: dict[str, Any]) -> Any:
        engine_stats = self.engine.stats()
        status: dict[str, Any] = {
            "version": xdpstack.__version__,
            "protocol": P.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "socket": self.path,
            "uptime_s": round(time.time() - self._started_at, 3),
            "started_at": round(self._started_at, 3),
            "clients": self.clients(),
            "api": dict(self.counters),
        }
        for key in ("connections", "sockets", "steered_ports", "wakeups", "datapath", "xdp"):
            if key in engine_stats:
                status[key] = engine_stats[key]
        status.update(_describe_engine(self.engine))
        status["captures"] = len(self._captures)
        if self.status_extra is not None:
            status.update(self.status_extra())
        return _plain(status)

    def _owner(self, qd: Any) -> dict[str, Any] | None:
        """Which client holds descriptor ``qd`` (None: nobody, e.g. an orphan closing)."""
        session = self._qd_owner.get(qd) if isinstance(qd, int) else None
        if session is None:
            return None
        return {"client": session.id, "pid": session.pid, "uid": session.uid}

    def _with_owner(self, conn: dict[str, Any]) -> dict[str, Any]:
        out = dict(conn)
        out["owner"] = self._owner(conn.get("connection_management", {}).get("qd"))
        return out

    def _connections(self, session: Session, args: dict[str, Any]) -> Any:
        # Not _plain(): the reply's encoder makes the same JSON, and with tens of thousands
        # of connections the round trip through json would cost more than the snapshot.
        return [self._with_owner(c) for c in self.engine.connections()]

    def _stats(self, session: Session, args: dict[str, Any]) -> Any:
        stats = dict(self.engine.stats())
        stats["api"] = dict(self.counters)
        return _plain(stats)

    def _show(self, session: Session, args: dict[str, Any]) -> Any:
        """``{"id": conn_id}`` (as in CONNECTIONS) or ``{"qd": qd}``."""
        if "qd" in args:
            qd = args["qd"]
            if isinstance(qd, bool) or not isinstance(qd, int):
                raise OSError(errno.EINVAL, "qd must be an integer")
            return _plain(self._with_owner(self.engine.snapshot(qd)))
        conn_id = args.get("id")
        if conn_id is None:
            raise OSError(errno.EINVAL, 'SHOW takes {"id": N} or {"qd": N}')
        for conn in self.engine.connections():
            cm = conn.get("connection_management", {})
            if cm.get("id") == conn_id or str(cm.get("id")) == str(conn_id):
                return _plain(self._with_owner(conn))
        raise OSError(errno.ENOENT, f"no connection {conn_id}")

    def _steering(self, session: Session, args: dict[str, Any]) -> Any:
        """``{"source": "xdp" | "engine", "entries": [{"address", "port"}, ...]}``: the
        XDP program's steering map (the engine's port set when there is no program)."""
        entries = sorted(self.engine.steering(), key=lambda e: (e[1], e[0]))
        return _plain(
            {
                "source": "xdp" if getattr(self.engine, "xdp", None) is not None else "engine",
                "entries": [{"address": ip, "port": port} for ip, port in entries],
            }
        )

    def _abort_conn(self, session: Session, args: dict[str, Any]) -> Any:
        """``{"id": conn_id}``: RST that connection, whoever owns it; its owner's
        descriptor stays and reports ECONNABORTED."""
        conn_id = args.get("id")
        if isinstance(conn_id, bool) or not isinstance(conn_id, int):
            raise OSError(errno.EINVAL, 'ABORT_CONN takes {"id": N} with an integer N')
        found: dict[str, Any] = {}
        for conn in self.engine.connections():
            cm = conn.get("connection_management", {})
            if cm.get("id") == conn_id:
                found = {k: cm.get(k) for k in ("state", "local", "remote", "qd")}
                found["owner"] = self._owner(cm.get("qd"))
                break
        owner_uid = (found.get("owner") or {}).get("uid")
        if not _privileged(session) and session.uid != owner_uid:
            raise OSError(
                errno.EPERM, "only root, the daemon's user or the connection's owner may abort it"
            )
        if not self.engine.abort_connection(conn_id):
            raise OSError(errno.ENOENT, f"no connection {conn_id}")
        log.info("connection %d aborted by client %d (pid %s)", conn_id, session.id, session.pid)
        return _plain({"aborted": conn_id, **found})

    def _capture(self, session: Session, args: dict[str, Any]) -> Any:
        """Start a capture stream on this connection (see :mod:`xdpstackd.pcap`), or
        ``{"stop": true}`` to end it (its END frame goes out before this reply)."""
        current = self._captures.get(session.id)
        if args.get("stop"):
            if current is None:
                return {"stopped": False}
            current.stop("stopped")
            return {"stopped": True}
        if current is not None:
            raise OSError(errno.EBUSY, "this connection is already capturing")
        if not _privileged(session):
            raise OSError(errno.EPERM, "only root or the daemon's user may capture (like tcpdump)")
        count, port, snaplen = parse_capture_args(args, self.max_frame - RECORD_HEADER.size)
        capture = CaptureStream(
            self.engine,
            session,
            P.Op.CAPTURE,
            self._request_id,
            count=count,
            port=port,
            snaplen=snaplen,
            max_queued=self.write_high,
            on_end=lambda c: self._capture_ended(session, c),
        )
        self._captures[session.id] = capture
        capture.start()
        log.info("client %d (pid %s) captures %s", session.id, session.pid, capture.describe())
        return capture.describe()

    def _capture_ended(self, session: Session, capture: CaptureStream) -> None:
        if self._captures.get(session.id) is capture:
            del self._captures[session.id]


_PUSH = int(P.OpCode.PUSH)
_OPCODE_OF = {
    P.Op.ACCEPT: int(P.OpCode.ACCEPT),
    P.Op.CONNECT: int(P.OpCode.CONNECT),
    P.Op.PUSH: int(P.OpCode.PUSH),
    P.Op.POP: int(P.OpCode.POP),
}


def _privileged(session: Session) -> bool:
    """Root or the daemon's own user: who may reset others' connections or see their
    traffic (on Linux, ``ss -K`` and tcpdump need CAP_NET_ADMIN / CAP_NET_RAW)."""
    return session.uid in (0, os.getuid())


def _describe_engine(engine: Any) -> dict[str, Any]:
    """What STATUS says about the interface, the address, the queues and the XDP program,
    read from the engine's parts (every lookup tolerant: tests run simulated datapaths)."""
    out: dict[str, Any] = {}
    stack = getattr(engine, "stack", None)
    xdp = getattr(engine, "xdp", None)
    datapath = getattr(engine, "datapath", None)
    sockets = list(getattr(datapath, "sockets", None) or ([datapath] if datapath else []))
    ifname = getattr(xdp, "ifname", None) or next(
        (s.ifname for s in sockets if getattr(s, "ifname", None)), None
    )
    if stack is not None:
        mac = getattr(stack, "mac", b"")
        config = getattr(stack, "config", None)
        out["interface"] = {
            "name": ifname,
            "mac": ":".join(f"{b:02x}" for b in mac) if mac else None,
            "mtu": getattr(config, "mtu", None),
        }
        gateway = getattr(stack, "gateway", None)
        out["address"] = {
            "ip": stack.ip_str,
            "prefix_len": stack.prefix_len,
            "mode": "owned" if stack.owned_address else "shared",
            "gateway": socket.inet_ntoa(gateway.to_bytes(4, "big")) if gateway else None,
        }
    kinds = {"XskSocket": "af_xdp", "SimulatedDatapath": "simulated"}
    out["queues"] = {
        "count": len(sockets),
        "ids": [getattr(s, "queue_id", i) for i, s in enumerate(sockets)],
        "datapath": kinds.get(type(sockets[0]).__name__, type(datapath).__name__)
        if sockets
        else None,
        "socket_modes": sorted({m for s in sockets if (m := getattr(s, "mode", None))}),
    }
    if xdp is not None:
        out["xdp_program"] = {
            "interface": xdp.ifname,
            "mode": xdp.mode,
            "attached": bool(getattr(xdp, "attached", False)),
            "prog_id": getattr(xdp, "prog_id", None),
        }
    else:
        out["xdp_program"] = None
    return out


def _plain(obj: Any) -> Any:
    """Control replies go out as JSON: make sure they are (enums, sequence numbers,
    tuples and bytes become plain values)."""
    import json

    return json.loads(P.json_dumps(obj))


def _group_id(group: str | int) -> int:
    if isinstance(group, int):
        return group
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"unknown group {group!r} for the API socket") from None
