"""Passive open (LISTEN and the half-open SYN_RECEIVED connections): RFC 9293 3.5 and
3.10.7.2.

A ``PassiveSocket`` answers SYNs with SYN-ACKs while its SYN backlog (half-open
connections) and accept queue have room, and drops them otherwise, as Linux does, so
that the client's SYN retransmission retries later. Each half-open connection is a
``HalfOpenConnection`` with its own SYN-ACK retransmission timer; the ACK that
completes the handshake turns it into an ``EstablishedSocket`` on the accept queue.

With ``TcpConfig.syncookies`` a SYN to a full SYN backlog is answered with a SYN cookie
(``syncookie.py``) and no state; an ACK for no half-open connection whose SEG.ACK - 1 is a
valid cookie opens the connection directly (MSS from the cookie, no window scale). So a
SYN flood can fill the backlog but not keep legitimate clients out.

A listener that had to send a cookie is *flooded* until ``FLOOD_HOLD_S`` after its last
one (``TcpPeer.flooded_ports``): only then may the XDP program answer its SYNs over the
per-CPU rate itself, as Linux sends cookies only when the SYN queue overflows.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from xdpstackd.inetstack.layer4.tcp.header import ACK, RST, SYN, TcpHeader, TcpOptions
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber
from xdpstackd.inetstack.layer4.tcp.syncookie import PERIOD_SHIFT

# After a cookie, ACKs are checked for cookies for as long as that cookie can verify.
_COOKIE_VALID_S = 2 * (1 << PERIOD_SHIFT) / 1e9
_DEFAULT_MSS = 536  # RFC 9293 3.7.1: a SYN without the MSS option
#: A listener stays flooded this long after the last SYN its full backlog could not take.
#: Long enough not to flap while a flood lasts (the XDP program still passes the daemon
#: ``xdp_syn_rate`` SYNs a second, and past a full backlog each one renews the hold), short
#: enough that clients after the flood soon get full SYN-ACKs (window scale) again, and
#: that a burst of legitimate connects does not keep XDP's cookies on (on a veth whose peer
#: runs no XDP, XDP_TX frames are never delivered).
FLOOD_HOLD_S = 2.0

if TYPE_CHECKING:
    from xdpstackd.inetstack.layer4.tcp.established.established_socket import (
        EstablishedSocket,
    )
    from xdpstackd.inetstack.layer4.tcp.peer import TcpPeer
    from xdpstackd.inetstack.layer4.tcp.socket import TcpSocket


class PassiveSocket:
    __slots__ = (
        "backlog",
        "cookies_until",
        "half_open",
        "local",
        "peer",
        "pending_accepts",
        "ready",
        "socket",
    )

    def __init__(self, peer: TcpPeer, socket: TcpSocket, backlog: int) -> None:
        self.peer = peer
        self.socket = socket
        self.local = socket.local
        self.backlog = backlog
        self.half_open: dict[tuple[int, int, int, int], HalfOpenConnection] = {}
        self.ready: deque[EstablishedSocket] = deque()  # the accept queue
        self.pending_accepts: deque[int] = deque()  # qts waiting for a connection
        self.cookies_until = 0.0  # ACKs are checked for cookies until then

    def receive(
        self, hdr: TcpHeader, payload: memoryview, src_ip: int, dst_ip: int, now: float
    ) -> None:
        """A segment for no existing connection, to our port (RFC 9293 3.10.7.2)."""
        flags = hdr.flags
        if flags & RST:
            self.peer.counters["tcp_drop_listen_rst"] += 1
            return
        if flags & ACK:
            if not flags & SYN and self._cookie_ack(hdr, payload, src_ip, dst_ip, now):
                return
            self.peer.send_rst_for(
                hdr, len(payload), (dst_ip, hdr.dst_port), (src_ip, hdr.src_port)
            )
            return
        if not flags & SYN:
            self.peer.counters["tcp_drop_listen_no_syn"] += 1
            return
        if len(self.ready) >= self.backlog:
            self.peer.counters["tcp_drop_listen_overflow"] += 1
            return
        local = (dst_ip, hdr.dst_port)
        remote = (src_ip, hdr.src_port)
        if len(self.half_open) >= self.peer.config.syn_backlog:
            if self.peer.config.syncookies:
                self._send_cookie(hdr, local, remote, now)
            else:
                self.peer.counters["tcp_drop_syn_backlog_full"] += 1
            return
        iss = self.peer.isn.generate(dst_ip, hdr.dst_port, src_ip, hdr.src_port, now)
        conn = HalfOpenConnection(
            self, local, remote, iss, hdr.seq_num, hdr.options, hdr.window, now
        )
        self.half_open[(dst_ip, hdr.dst_port, src_ip, hdr.src_port)] = conn
        self.peer.register_half_open(conn)
        conn.send_syn_ack()

    def _send_cookie(
        self, syn: TcpHeader, local: tuple[int, int], remote: tuple[int, int], now: float
    ) -> None:
        """A SYN-ACK whose ISN is a cookie, and no state (RFC 4987 3.6). MSS only: a
        window scale cannot be encoded without timestamps, so none is offered."""
        peer = self.peer
        opts = syn.options
        mss = opts.mss if opts is not None and opts.mss else _DEFAULT_MSS
        cookie = peer.isn.cookies.make(
            remote[0], local[0], remote[1], local[1], syn.seq_num.value, mss, now
        )
        self.cookies_until = now + _COOKIE_VALID_S
        peer.counters["tcp_syncookies_sent"] += 1
        peer.syn_backlog_overflowed(local[1], now)
        peer.send_syn(
            local,
            remote,
            SeqNumber(cookie),
            syn.seq_num + 1,
            self.socket.options,
            peer_offered_wscale=False,
        )

    def _cookie_ack(
        self, hdr: TcpHeader, payload: memoryview, src_ip: int, dst_ip: int, now: float
    ) -> bool:
        """An ACK for no half-open connection: if it returns a valid cookie, open the
        connection (True); False when the caller should reset it."""
        peer = self.peer
        if not peer.config.syncookies:
            return False
        cookies = peer.isn.cookies
        if now >= self.cookies_until and not cookies.external:
            return False  # no cookie of ours can be out there: do not guess at MACs
        iss = hdr.ack_num - 1
        irs = hdr.seq_num - 1
        mss = cookies.check(src_ip, dst_ip, hdr.src_port, hdr.dst_port, irs.value, iss.value, now)
        if mss is None:
            peer.counters["tcp_syncookies_failed"] += 1
            return False
        if len(self.ready) >= self.backlog:
            # as for a half-open one: ignore the ACK; the client's retransmission retries
            peer.counters["tcp_drop_accept_queue_full"] += 1
            return True
        peer.counters["tcp_syncookies_recv"] += 1
        conn = HalfOpenConnection(
            self,
            (dst_ip, hdr.dst_port),
            (src_ip, hdr.src_port),
            iss,
            irs,
            TcpOptions(mss=mss),
            hdr.window,
            now,
        )
        conn.synack_sent_at = None  # no RTT sample: we do not know when the SYN-ACK left
        peer.register_half_open(conn)
        peer.passive_open_established(conn, hdr, payload, now)
        return True

    def on_established(self, est: EstablishedSocket) -> None:
        if self.pending_accepts:
            self.peer.complete_accept(self, self.pending_accepts.popleft(), est)
        else:
            self.ready.append(est)


class HalfOpenConnection:
    """SYN_RECEIVED on the passive side: our SYN-ACK is out, waiting for its ACK."""

    is_handshake = True

    __slots__ = (
        "conn_id",
        "deadline",
        "irs",
        "iss",
        "listener",
        "local",
        "peer_options",
        "peer_window_raw",
        "released",
        "remote",
        "retries",
        "rto_s",
        "scheduled",
        "synack_sent_at",
    )

    def __init__(
        self,
        listener: PassiveSocket,
        local: tuple[int, int],
        remote: tuple[int, int],
        iss: SeqNumber,
        irs: SeqNumber,
        peer_options: TcpOptions | None,
        peer_window_raw: int,
        now: float,
    ) -> None:
        self.listener = listener
        self.local = local
        self.remote = remote
        self.iss = iss
        self.irs = irs
        self.peer_options = peer_options
        self.peer_window_raw = peer_window_raw
        self.retries = 0
        self.rto_s = listener.peer.config.rto_initial_s
        self.deadline = now + self.rto_s
        self.synack_sent_at: float | None = now
        self.scheduled: float | None = None
        self.released = False
        self.conn_id = 0

    state = "SYN_RECEIVED"

    @property
    def key(self) -> tuple[int, int, int, int]:
        return (self.local[0], self.local[1], self.remote[0], self.remote[1])

    def send_syn_ack(self) -> None:
        peer = self.listener.peer
        offered = self.peer_options is not None and self.peer_options.window_scale is not None
        peer.send_syn(
            self.local,
            self.remote,
            self.iss,
            self.irs + 1,
            self.listener.socket.options,
            peer_offered_wscale=offered,
        )

    def receive(self, hdr: TcpHeader, payload: memoryview, now: float) -> None:
        flags = hdr.flags
        peer = self.listener.peer
        if flags & RST:
            # RFC 9293 3.10.7.4 / RFC 5961: only an RST at RCV.NXT ends the attempt
            if hdr.seq_num == self.irs + 1:
                self.drop()
            else:
                peer.counters["tcp_drop_syn_recv_rst_not_exact"] += 1
            return
        if flags & SYN:
            if not flags & ACK and hdr.seq_num == self.irs:
                peer.counters["tcp_syn_duplicates"] += 1
                self.send_syn_ack()  # the peer did not see our SYN-ACK
            else:
                peer.send_ack_raw(self.local, self.remote, self.iss + 1, self.irs + 1)
            return
        if not flags & ACK:
            peer.counters["tcp_drop_syn_recv_no_ack"] += 1
            return
        if hdr.ack_num != self.iss + 1:
            peer.send_rst_for(hdr, len(payload), self.local, self.remote)
            return
        if hdr.seq_num != self.irs + 1 and not payload:
            peer.send_ack_raw(self.local, self.remote, self.iss + 1, self.irs + 1)
            return
        if len(self.listener.ready) >= self.listener.backlog:
            # accept queue full: ignore the ACK; our SYN-ACK retransmission retries
            peer.counters["tcp_drop_accept_queue_full"] += 1
            return
        peer.passive_open_established(self, hdr, payload, now)

    def on_timer(self, now: float) -> None:
        if now < self.deadline:
            return
        config = self.listener.peer.config
        if self.retries >= config.synack_retries:
            self.listener.peer.counters["tcp_synack_timeouts"] += 1
            self.drop()
            return
        self.retries += 1
        self.synack_sent_at = None
        self.rto_s = min(self.rto_s * 2, config.rto_max_s)
        self.deadline = now + self.rto_s
        self.listener.peer.counters["tcp_synack_retransmits"] += 1
        self.send_syn_ack()

    def drop(self) -> None:
        self.listener.half_open.pop(self.key, None)
        self.listener.peer.release_connection(self)

    def next_deadline(self) -> float | None:
        return None if self.released else self.deadline

    def handshake_rtt(self, now: float) -> float | None:
        return None if self.synack_sent_at is None else now - self.synack_sent_at

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            "connection_management": {
                "state": self.state,
                "local": self.local,
                "remote": self.remote,
                "synack_retries": self.retries,
                "rto_s": self.rto_s,
            }
        }
