"""``TcpPeer``: the TCP layer of one stack (the seed's ``peer.rs``).

It owns the descriptor table (qd -> ``TcpSocket``), demultiplexes segments by 4-tuple
and then by listener, answers segments for closed ports with RSTs (RFC 9293 3.10.7.1),
generates ISNs (RFC 6528), allocates ephemeral ports, and keeps one timer heap for every
connection. It is sans-IO: see ``docs/ARCHITECTURE.md`` for the calling contract
(``receive`` / commands -> ``poll_transmit``, ``poll_completions``, ``next_deadline``).
"""

from __future__ import annotations

import errno
import heapq
import itertools
import os
import random
from collections import Counter as _Counter
from typing import Any

from xdpstackd.inetstack.completion import Completion, OpCode
from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.counters import Counters
from xdpstackd.inetstack.errors import ChecksumError, ParseError
from xdpstackd.inetstack.layer3.ipv4 import ip_from_str, ip_to_str
from xdpstackd.inetstack.layer4.tcp.active_open import ActiveOpenSocket
from xdpstackd.inetstack.layer4.tcp.established import acknowledger
from xdpstackd.inetstack.layer4.tcp.established.connection_management import State
from xdpstackd.inetstack.layer4.tcp.established.established_socket import (
    AckBatch,
    ChallengeAckLimiter,
    EstablishedSocket,
)
from xdpstackd.inetstack.layer4.tcp.header import (
    ACK,
    FIN,
    RST,
    SYN,
    TcpHeader,
    TcpOptions,
    build_tcp,
    parse_tcp,
)
from xdpstackd.inetstack.layer4.tcp.isn_generator import IsnGenerator
from xdpstackd.inetstack.layer4.tcp.output import SegmentOutput, TcpOutput
from xdpstackd.inetstack.layer4.tcp.passive_open import (
    FLOOD_HOLD_S,
    HalfOpenConnection,
    PassiveSocket,
)
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber
from xdpstackd.inetstack.layer4.tcp.socket import SocketOptions, SocketState, TcpSocket

Address = tuple[str, int]
Connection = ActiveOpenSocket | HalfOpenConnection | EstablishedSocket
_ZERO = SeqNumber(0)

_BOOL_OPTIONS = {"TCP_NODELAY", "SO_KEEPALIVE"}
_SOCKOPT_ALIASES = {
    1: "TCP_NODELAY",
    9: "SO_KEEPALIVE",
    7: "SO_SNDBUF",
    8: "SO_RCVBUF",
    4: "TCP_KEEPIDLE",
    5: "TCP_KEEPINTVL",
    6: "TCP_KEEPCNT",
}
_MIN_BUFFER_BYTES = 4096
_MAX_BUFFER_BYTES = 64 << 20


def window_scale_for(buffer_bytes: int) -> int:
    """The smallest shift that lets a 16-bit window field express ``buffer_bytes``."""
    shift = 0
    while (0xFFFF << shift) < buffer_bytes and shift < 14:
        shift += 1
    return shift


class TcpPeer:
    def __init__(
        self,
        config: TcpConfig,
        local_ip: int,
        *,
        counters: Counters | None = None,
        isn_secret: bytes | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.local_ip = local_ip
        self.counters = counters if counters is not None else Counters()
        self.isn = IsnGenerator(isn_secret)
        self.rng = rng if rng is not None else random.Random(os.urandom(8))
        self.sockets: dict[int, TcpSocket] = {}
        self.conns: dict[tuple[int, int, int, int], Connection] = {}
        self.listeners: dict[tuple[int, int], PassiveSocket] = {}
        self.port_refs: _Counter[int] = _Counter()
        # bumped whenever the set of ports in use, or of flooded ports, changes
        self.ports_version = 0
        #: listening port -> when it stops being flooded (``syn_backlog_overflowed``)
        self.flooded: dict[int, float] = {}
        self._flood_deadline: float | None = None  # at or before the earliest of those
        self.port_held_by: dict[int, int] = {}  # id(conn) -> port an orphan still holds
        # accepted connections use their listener's port; they keep it steered even after
        # the listener is closed (no bind conflict from them: that is port_refs' job)
        self.conn_port_refs: _Counter[int] = _Counter()
        self.conn_port_of: dict[int, int] = {}  # id(accepted conn) -> its local port
        self.outbox: list[tuple[int, int, bytes]] = []
        #: where segments go: the outbox by default; ``InetStack`` puts its frame output
        #: here before any connection exists (connections take their flow from it)
        self.output: TcpOutput = SegmentOutput(self.outbox)
        self.ack_batch = AckBatch()
        self.completions: list[Completion] = []
        self.limiter = ChallengeAckLimiter(config.challenge_ack_per_s)
        self._timers: list[tuple[float, int, Connection]] = []
        self._timer_seq = itertools.count()
        self._qds = itertools.count(1)
        self._qts = itertools.count(1)
        self._conn_ids = itertools.count(1)

    # =====================================================================================
    # network side
    # =====================================================================================
    def receive(self, src_ip: int, dst_ip: int, segment: bytes | memoryview, now: float) -> None:
        counters = self.counters
        counters["tcp_segments_in"] += 1
        try:
            hdr, payload = parse_tcp(segment, src_ip, dst_ip)
        except ChecksumError:
            counters["tcp_drop_bad_checksum"] += 1
            return
        except ParseError as exc:
            counters["tcp_drop_" + exc.reason] += 1
            return
        if hdr.src_port == 0 or hdr.dst_port == 0:
            counters["tcp_drop_port_zero"] += 1
            return
        key = (dst_ip, hdr.dst_port, src_ip, hdr.src_port)
        conn = self.conns.get(key)
        if conn is not None:
            if (
                hdr.flags & (SYN | ACK | RST) == SYN
                and not conn.is_handshake
                and conn.state is State.TIME_WAIT
                and conn.cb.rod.rcv_nxt < hdr.seq_num
            ):
                # RFC 6191 / Linux: a new SYN ahead of the old stream ends TIME_WAIT
                counters["tcp_time_wait_recycled"] += 1
                conn.end_time_wait()
            else:
                conn.receive(hdr, payload, now)
                batch = self.ack_batch
                if batch.active:
                    batch.touched.add(conn)  # its timers are read once, at the end
                else:
                    self._schedule(conn)
                return
        listener = self.listeners.get((dst_ip, hdr.dst_port)) or self.listeners.get(
            (0, hdr.dst_port)
        )
        if listener is not None:
            listener.receive(hdr, payload, src_ip, dst_ip, now)
            return
        counters["tcp_rst_closed_port"] += 1
        self.send_rst_for(hdr, len(payload), (dst_ip, hdr.dst_port), (src_ip, hdr.src_port))

    def begin_batch(self) -> None:
        """Segments until ``end_batch`` arrived together (one rx batch): connections ACK
        them once at the end, not every second segment (see ``AckBatch``)."""
        self.ack_batch.active = True

    def end_batch(self) -> None:
        batch = self.ack_batch
        batch.active = False
        due = batch.due
        if due:
            for est in due:
                est.send_batch_ack()
            due.clear()
        touched = batch.touched
        if touched:
            for conn in touched:
                self._schedule(conn)
            touched.clear()

    def poll_transmit(self) -> list[tuple[int, int, bytes]]:
        # connections append to this very list, so it is copied and cleared in place
        outbox = self.outbox
        if not outbox:
            return []
        out = outbox[:]
        outbox.clear()
        return out

    def poll_completions(self) -> list[Completion]:
        completions = self.completions
        if not completions:
            return []
        out = completions[:]
        completions.clear()
        return out

    def handle_timers(self, now: float) -> None:
        flood_deadline = self._flood_deadline
        if flood_deadline is not None and flood_deadline <= now:
            self._end_floods(now)
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, conn = heapq.heappop(timers)
            if conn.released or conn.scheduled != deadline:
                continue  # stale entry: the connection moved its deadline
            conn.scheduled = None
            conn.on_timer(now)
            self._schedule(conn)

    def next_deadline(self) -> float | None:
        timers = self._timers
        flood_deadline = self._flood_deadline
        while timers:
            deadline, _, conn = timers[0]
            if conn.released or conn.scheduled != deadline:
                heapq.heappop(timers)
                continue
            if flood_deadline is not None and flood_deadline < deadline:
                return flood_deadline
            return deadline
        return flood_deadline

    # =====================================================================================
    # application side
    # =====================================================================================
    def socket(self) -> int:
        qd = next(self._qds)
        self.sockets[qd] = TcpSocket(qd, SocketOptions.from_config(self.config))
        return qd

    def bind(self, qd: int, addr: Address) -> None:
        sock = self._socket(qd)
        if sock.bound or sock.state is not SocketState.UNBOUND:
            raise OSError(errno.EINVAL, "socket is already bound")
        ip, port = self._parse_addr(addr)
        if ip not in (0, self.local_ip):
            raise OSError(errno.EADDRNOTAVAIL, f"{addr[0]} is not this stack's address")
        if port == 0:
            port = self._ephemeral_port()
        elif self.port_refs[port]:
            raise OSError(errno.EADDRINUSE, f"port {port} is in use")
        if not self.port_refs[port]:
            self.ports_version += 1
        self.port_refs[port] += 1
        sock.local = (ip, port)
        sock.bound = True
        sock.owns_port = True

    def listen(self, qd: int, backlog: int = 128) -> None:
        sock = self._socket(qd)
        state = sock.state
        if state is SocketState.LISTENING:
            sock.listener.backlog = self._clamp_backlog(backlog)  # type: ignore[union-attr]
            return
        if state is SocketState.UNBOUND:
            self.bind(qd, ("0.0.0.0", 0))
        elif state is not SocketState.BOUND:
            raise OSError(errno.EINVAL, f"cannot listen on a socket in state {state.value}")
        listener = PassiveSocket(self, sock, self._clamp_backlog(backlog))
        sock.listener = listener
        self.listeners[sock.local] = listener

    def accept(self, qd: int) -> int:
        sock = self._socket(qd)
        listener = sock.listener
        if listener is None:
            raise OSError(errno.EINVAL, "socket is not listening")
        qt = next(self._qts)
        if listener.ready:
            self.complete_accept(listener, qt, listener.ready.popleft())
        else:
            listener.pending_accepts.append(qt)
        return qt

    def connect(self, qd: int, addr: Address, now: float) -> int:
        sock = self._socket(qd)
        state = sock.state
        if state is SocketState.CONNECTING:
            raise OSError(errno.EALREADY, "a connect is already in progress")
        if state in (SocketState.ESTABLISHED, SocketState.CLOSING, SocketState.LISTENING):
            raise OSError(errno.EISCONN, "socket is already connected or listening")
        if state not in (SocketState.UNBOUND, SocketState.BOUND):
            raise OSError(errno.EINVAL, f"cannot connect a socket in state {state.value}")
        remote = self._parse_addr(addr)
        if remote[0] == 0 or remote[1] == 0:
            raise OSError(errno.EINVAL, f"cannot connect to {addr[0]}:{addr[1]}")
        if not sock.bound:
            self.bind(qd, ("0.0.0.0", 0))
        local = (self.local_ip, sock.local[1])
        key = (local[0], local[1], remote[0], remote[1])
        if key in self.conns:
            raise OSError(errno.EADDRNOTAVAIL, "that 4-tuple is in use")
        qt = next(self._qts)
        iss = self.isn.generate(local[0], local[1], remote[0], remote[1], now)
        conn = ActiveOpenSocket(self, sock, qt, local, remote, iss, now)
        conn.conn_id = next(self._conn_ids)
        sock.connection = conn
        self.conns[key] = conn
        conn.start()
        self._schedule(conn)
        return qt

    def push(self, qd: int, data: bytes | bytearray | memoryview, now: float) -> int:
        est = self._established(qd)
        qt = next(self._qts)
        est.push(qt, bytes(data), now)
        self._schedule(est)
        return qt

    def pop(self, qd: int, size: int | None, now: float) -> int:
        if size is not None and size <= 0:
            raise OSError(errno.EINVAL, "pop size must be positive")
        est = self._established(qd)
        qt = next(self._qts)
        est.pop(qt, size, now)
        self._schedule(est)
        return qt

    def close(self, qd: int, now: float, *, discard_pending: bool = False) -> None:
        sock = self.sockets.pop(qd, None)
        if sock is None:
            raise OSError(errno.EBADF, f"bad descriptor {qd}")
        conn = sock.connection
        if sock.listener is not None:
            self._close_listener(sock.listener, now)
        self._hand_over_port(sock)
        if conn is None or conn.released:
            return
        if conn.is_handshake:
            if isinstance(conn, ActiveOpenSocket):
                self.active_open_failed(conn, errno.ECONNABORTED, complete=False)
            return
        conn.close(now, discard_pending=discard_pending)
        self._schedule(conn)

    def shutdown(self, qd: int, now: float) -> None:
        """SHUT_WR: send our FIN after queued data; keep receiving."""
        est = self._established(qd)
        est.shutdown_write(now)
        self._schedule(est)

    def abort(self, qd: int, now: float) -> None:
        sock = self.sockets.pop(qd, None)
        if sock is None:
            raise OSError(errno.EBADF, f"bad descriptor {qd}")
        if sock.listener is not None:
            self._close_listener(sock.listener, now)
        self._hand_over_port(sock)
        conn = sock.connection
        if conn is not None and not conn.released:
            if conn.is_handshake:
                if isinstance(conn, ActiveOpenSocket):
                    self.active_open_failed(conn, errno.ECONNABORTED, complete=False)
            else:
                conn.abort(now)

    def abort_connection(self, conn_id: int, now: float) -> bool:
        """An operator's abort (``xdpstackctl abort ID``): RST the connection with that
        id, whoever owns it; its descriptor, if any, stays and reports ECONNABORTED."""
        for conn in list(self.conns.values()):
            if conn.conn_id != conn_id:
                continue
            if isinstance(conn, EstablishedSocket):
                conn.abort(now, errno.ECONNABORTED, descriptor_closed=False)
            elif isinstance(conn, ActiveOpenSocket):
                self.active_open_failed(conn, errno.ECONNABORTED)
            else:
                conn.drop()
            self.counters["tcp_operator_aborts"] += 1
            return True
        return False

    def setsockopt(self, qd: int, name: str | int, value: Any) -> None:
        sock = self._socket(qd)
        name = self._option_name(name)
        opts = sock.options
        conn = sock.connection
        est = conn if isinstance(conn, EstablishedSocket) else None
        if name == "TCP_NODELAY":
            opts.nodelay = bool(value)
            if est is not None:
                est.cb.cm.nodelay = opts.nodelay
        elif name == "SO_KEEPALIVE":
            opts.keepalive = bool(value)
        elif name in ("SO_SNDBUF", "SO_RCVBUF"):
            size = int(value)
            if not _MIN_BUFFER_BYTES <= size <= _MAX_BUFFER_BYTES:
                raise OSError(
                    errno.EINVAL, f"{name} must be {_MIN_BUFFER_BYTES}..{_MAX_BUFFER_BYTES}"
                )
            if name == "SO_SNDBUF":
                opts.send_buffer_bytes = size
                if est is not None:
                    est.cb.rod.send_buffer_bytes = max(size, len(est.cb.rod.send_buf))
            else:
                if est is not None or isinstance(conn, ActiveOpenSocket):
                    raise OSError(errno.EISCONN, "SO_RCVBUF must be set before connecting")
                opts.recv_buffer_bytes = size
        elif name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"):
            if int(value) <= 0:
                raise OSError(errno.EINVAL, f"{name} must be positive")
            if name == "TCP_KEEPIDLE":
                opts.keepidle_s = float(value)
            elif name == "TCP_KEEPINTVL":
                opts.keepintvl_s = float(value)
            else:
                opts.keepcnt = int(value)
        else:
            raise OSError(errno.ENOPROTOOPT, f"unknown socket option {name!r}")
        if est is not None and name.startswith(("SO_KEEPALIVE", "TCP_KEEP")):
            cm = est.cb.cm
            cm.keepalive_idle_s = opts.keepidle_s
            cm.keepalive_interval_s = opts.keepintvl_s
            cm.keepalive_probes = opts.keepcnt
            cm.set_keepalive(opts.keepalive)
            self._schedule(est)

    def getsockopt(self, qd: int, name: str | int) -> Any:
        opts = self._socket(qd).options
        name = self._option_name(name)
        values = {
            "TCP_NODELAY": int(opts.nodelay),
            "SO_KEEPALIVE": int(opts.keepalive),
            "SO_SNDBUF": opts.send_buffer_bytes,
            "SO_RCVBUF": opts.recv_buffer_bytes,
            "TCP_KEEPIDLE": opts.keepidle_s,
            "TCP_KEEPINTVL": opts.keepintvl_s,
            "TCP_KEEPCNT": opts.keepcnt,
        }
        if name not in values:
            raise OSError(errno.ENOPROTOOPT, f"unknown socket option {name!r}")
        return values[name]

    def getsockname(self, qd: int) -> Address:
        sock = self._socket(qd)
        conn = sock.connection
        ip, port = conn.local if conn is not None else sock.local
        return (ip_to_str(ip), port)

    def getpeername(self, qd: int) -> Address:
        sock = self._socket(qd)
        conn = sock.connection
        if conn is None or conn.is_handshake:
            raise OSError(errno.ENOTCONN, "socket is not connected")
        return (ip_to_str(conn.remote[0]), conn.remote[1])

    def flooded_ports(self) -> frozenset[int]:
        """Listening ports whose SYN backlog overflowed in the last ``FLOOD_HOLD_S``: the
        ports whose SYNs over its rate the XDP program may answer with cookies itself
        (the engine pushes the set to it whenever ``ports_version`` changes)."""
        return frozenset(self.flooded)

    def syn_backlog_overflowed(self, port: int, now: float) -> None:
        """The listener on ``port`` answered a SYN with a cookie: flooded for a while."""
        until = now + FLOOD_HOLD_S
        flooded = self.flooded
        if port not in flooded:
            self.ports_version += 1
            if self._flood_deadline is None or until < self._flood_deadline:
                self._flood_deadline = until
        flooded[port] = until

    def _end_floods(self, now: float) -> None:
        """Ports whose hold ran out are no longer flooded; the next deadline is the
        earliest hold left (renewed holds move on without a timer of their own)."""
        flooded = self.flooded
        ended = [port for port, until in flooded.items() if until <= now]
        for port in ended:
            del flooded[port]
        if ended:
            self.ports_version += 1
        self._flood_deadline = min(flooded.values()) if flooded else None

    def ports_in_use(self) -> list[int]:
        """Local ports the stack's sockets and connections use (what XDP must steer):
        bound and listening sockets, connections they opened, and every accepted
        connection, which keeps its port steered after its listener is gone."""
        return list(set(self.port_refs) | set(self.conn_port_refs))

    def socket_state(self, qd: int) -> SocketState:
        return self._socket(qd).state

    def snapshot(self, qd: int) -> dict[str, dict[str, object]]:
        sock = self._socket(qd)
        conn = sock.connection
        if conn is None:
            ip, port = sock.local
            return {"socket": {"qd": qd, "state": sock.state.value, "local": (ip_to_str(ip), port)}}
        return self._conn_snapshot(conn, qd)

    def connections(self) -> list[dict[str, Any]]:
        seen = {id(s.connection): s.qd for s in self.sockets.values() if s.connection}
        return [self._conn_snapshot(c, seen.get(id(c))) for c in self.conns.values()]

    # =====================================================================================
    # used by the handshake and established sockets
    # =====================================================================================
    def send_syn(
        self,
        local: tuple[int, int],
        remote: tuple[int, int],
        iss: SeqNumber,
        ack: SeqNumber | None,
        options: SocketOptions,
        peer_offered_wscale: bool = True,
    ) -> None:
        """SYN (ack None) or SYN-ACK with our MSS and window scale, like Linux minus
        SACK-permitted and timestamps, which this stack declines."""
        wscale = window_scale_for(options.recv_buffer_bytes) if peer_offered_wscale else None
        opts = TcpOptions(mss=self.config.mss, window_scale=wscale)
        window = min(options.recv_buffer_bytes, 0xFFFF)
        flags = SYN | (ACK if ack is not None else 0)
        hdr = TcpHeader(
            local[1], remote[1], iss, ack if ack is not None else _ZERO, flags, window, opts
        )
        self._emit_raw(local[0], remote[0], hdr)

    def send_ack_raw(
        self, local: tuple[int, int], remote: tuple[int, int], seq: SeqNumber, ack: SeqNumber
    ) -> None:
        hdr = TcpHeader(local[1], remote[1], seq, ack, ACK, 0xFFFF)
        self._emit_raw(local[0], remote[0], hdr)

    def send_rst_for(
        self, hdr: TcpHeader, payload_len: int, local: tuple[int, int], remote: tuple[int, int]
    ) -> None:
        """RFC 9293 3.10.7.1: the reset answering a segment that has no connection."""
        if hdr.flags & RST:
            return
        if hdr.flags & ACK:
            rst = TcpHeader(local[1], remote[1], hdr.ack_num, _ZERO, RST, 0)
        else:
            seg_len = payload_len + (1 if hdr.flags & SYN else 0) + (1 if hdr.flags & FIN else 0)
            rst = TcpHeader(local[1], remote[1], _ZERO, hdr.seq_num + seg_len, RST | ACK, 0)
        self.counters["tcp_resets_out"] += 1
        self._emit_raw(local[0], remote[0], rst)

    def register_half_open(self, conn: HalfOpenConnection) -> None:
        conn.conn_id = next(self._conn_ids)
        self.conns[conn.key] = conn
        self._schedule(conn)

    def passive_open_established(
        self, half: HalfOpenConnection, hdr: TcpHeader, payload: memoryview, now: float
    ) -> None:
        listener = half.listener
        listener.half_open.pop(half.key, None)
        opts = half.peer_options
        options = listener.socket.options.copy()
        est = self._new_established(
            options,
            half.local,
            half.remote,
            half.iss,
            half.irs,
            opts,
            half.peer_window_raw,
            half.handshake_rtt(now),
            now,
        )
        half.released = True
        est.conn_id = half.conn_id
        self.conns[half.key] = est
        port = half.local[1]
        if not self.conn_port_refs[port] and not self.port_refs[port]:
            self.ports_version += 1
        self.conn_port_refs[port] += 1
        self.conn_port_of[id(est)] = port
        est.receive(hdr, payload, now)  # the completing ACK may carry window, data, FIN
        self._schedule(est)
        self.counters["tcp_passive_opens"] += 1
        listener.on_established(est)

    def active_open_established(
        self,
        conn: ActiveOpenSocket,
        hdr: TcpHeader,
        payload: memoryview,
        now: float,
        send_ack: bool,
    ) -> None:
        assert conn.irs is not None
        est = self._new_established(
            conn.socket.options,
            conn.local,
            conn.remote,
            conn.iss,
            conn.irs,
            conn.peer_options,
            conn.peer_window_raw,
            conn.handshake_rtt(now),
            now,
        )
        conn.released = True
        est.conn_id = conn.conn_id
        est.qd = conn.socket.qd if conn.socket.qd in self.sockets else None
        key = (conn.local[0], conn.local[1], conn.remote[0], conn.remote[1])
        self.conns[key] = est
        conn.socket.connection = est
        if send_ack:
            acknowledger.send_ack(est)
        else:
            est.receive(hdr, payload, now)
        self._schedule(est)
        self.counters["tcp_active_opens"] += 1
        self.completions.append(Completion(OpCode.CONNECT, conn.qt, conn.socket.qd))

    def active_open_failed(
        self, conn: ActiveOpenSocket, errno_: int, complete: bool = True
    ) -> None:
        self.release_connection(conn)
        conn.socket.connection = None
        conn.socket.failed_errno = errno_
        if complete:
            self.counters["tcp_connect_failures"] += 1
            self.completions.append(
                Completion(OpCode.CONNECT, conn.qt, conn.socket.qd, errno=errno_)
            )

    def complete_accept(self, listener: PassiveSocket, qt: int, est: EstablishedSocket) -> None:
        qd = next(self._qds)
        sock = TcpSocket(qd, listener.socket.options.copy())
        sock.local = est.local
        sock.bound = True
        sock.connection = est
        est.qd = qd
        self.sockets[qd] = sock
        addr = (ip_to_str(est.remote[0]), est.remote[1])
        self.completions.append(
            Completion(OpCode.ACCEPT, qt, listener.socket.qd, addr=addr, new_qd=qd)
        )

    def release_connection(self, conn: Connection) -> None:
        """Forget a connection that reached CLOSED (or whose handshake ended)."""
        conn.released = True
        key = (conn.local[0], conn.local[1], conn.remote[0], conn.remote[1])
        if self.conns.get(key) is conn:
            del self.conns[key]
        port = self.port_held_by.pop(id(conn), None)
        if port is not None:
            self._release_port(port)
        port = self.conn_port_of.pop(id(conn), None)
        if port is not None:
            if self.conn_port_refs[port] <= 1:
                del self.conn_port_refs[port]
                self.ports_version += 1
            else:
                self.conn_port_refs[port] -= 1

    # =====================================================================================
    # internals
    # =====================================================================================
    def _new_established(
        self,
        options: SocketOptions,
        local: tuple[int, int],
        remote: tuple[int, int],
        iss: SeqNumber,
        irs: SeqNumber,
        peer_options: TcpOptions | None,
        peer_window_raw: int,
        handshake_rtt_s: float | None,
        now: float,
    ) -> EstablishedSocket:
        return EstablishedSocket.create(
            config=self.config,
            options=options,
            local=local,
            remote=remote,
            iss=iss,
            irs=irs,
            peer_mss=peer_options.mss if peer_options else None,
            peer_wscale=peer_options.window_scale if peer_options else None,
            our_wscale=window_scale_for(options.recv_buffer_bytes),
            peer_window_raw=peer_window_raw,
            advertised_window=min(options.recv_buffer_bytes, 0xFFFF),
            handshake_rtt_s=handshake_rtt_s,
            now=now,
            output=self.output,
            ack_batch=self.ack_batch,
            completions=self.completions,
            counters=self.counters,
            limiter=self.limiter,
            on_released=self.release_connection,
        )

    def _emit_raw(self, local_ip: int, remote_ip: int, hdr: TcpHeader) -> None:
        self.output.raw(local_ip, remote_ip, build_tcp(hdr, b"", local_ip, remote_ip))
        self.counters["tcp_segments_out"] += 1

    def _schedule(self, conn: Connection) -> None:
        deadline = conn.next_deadline()
        if deadline is not None and deadline != conn.scheduled:
            conn.scheduled = deadline
            heapq.heappush(self._timers, (deadline, next(self._timer_seq), conn))

    def _socket(self, qd: int) -> TcpSocket:
        sock = self.sockets.get(qd)
        if sock is None:
            raise OSError(errno.EBADF, f"bad descriptor {qd}")
        return sock

    def _established(self, qd: int) -> EstablishedSocket:
        sock = self._socket(qd)
        conn = sock.connection
        if isinstance(conn, EstablishedSocket):
            return conn
        if sock.failed_errno:
            raise OSError(sock.failed_errno, os.strerror(sock.failed_errno))
        raise OSError(errno.ENOTCONN, "socket is not connected")

    def _close_listener(self, listener: PassiveSocket, now: float) -> None:
        """Closing a listener resets what waits in its accept queue (as Linux does)."""
        self.listeners.pop(listener.local, None)
        if self.flooded.pop(listener.local[1], None) is not None:
            self.ports_version += 1
        for half in list(listener.half_open.values()):
            half.drop()
        while listener.ready:
            est = listener.ready.popleft()
            est.abort(now)
        for qt in listener.pending_accepts:
            self.completions.append(
                Completion(OpCode.ACCEPT, qt, listener.socket.qd, errno=errno.EBADF)
            )
        listener.pending_accepts.clear()
        listener.socket.listener = None

    def _hand_over_port(self, sock: TcpSocket) -> None:
        """A closed descriptor's port stays taken while its connection lives on."""
        if not sock.owns_port:
            return
        sock.owns_port = False
        conn = sock.connection
        if conn is not None and not conn.released:
            self.port_held_by[id(conn)] = sock.local[1]
        else:
            self._release_port(sock.local[1])

    def _release_port(self, port: int) -> None:
        if self.port_refs[port] <= 1:
            del self.port_refs[port]
            self.ports_version += 1
        else:
            self.port_refs[port] -= 1

    def _ephemeral_port(self) -> int:
        low, high = self.config.ephemeral_ports
        span = high - low + 1
        start = self.rng.randrange(span)
        for i in range(span):
            port = low + (start + i) % span
            if not self.port_refs[port]:
                return port
        raise OSError(errno.EADDRNOTAVAIL, "no free ephemeral port")

    def _clamp_backlog(self, backlog: int) -> int:
        return max(1, min(int(backlog), self.config.max_accept_backlog))

    @staticmethod
    def _parse_addr(addr: Address) -> tuple[int, int]:
        try:
            ip_text, port = addr
            ip = ip_from_str(ip_text) if isinstance(ip_text, str) else int(ip_text)
            port = int(port)
        except (TypeError, ValueError) as exc:
            raise OSError(errno.EINVAL, f"bad address {addr!r}: {exc}") from None
        if not 0 <= port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"port {port} out of range")
        return ip, port

    @staticmethod
    def _option_name(name: str | int) -> str:
        if isinstance(name, int):
            if name not in _SOCKOPT_ALIASES:
                raise OSError(errno.ENOPROTOOPT, f"unknown socket option {name}")
            return _SOCKOPT_ALIASES[name]
        return name.upper()

    def _conn_snapshot(self, conn: Connection, qd: int | None) -> dict[str, Any]:
        snap = conn.snapshot()
        cm = snap["connection_management"]
        cm["local"] = (ip_to_str(conn.local[0]), conn.local[1])
        cm["remote"] = (ip_to_str(conn.remote[0]), conn.remote[1])
        cm["id"] = conn.conn_id
        cm["qd"] = qd
        return snap
