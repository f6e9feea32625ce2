"""Active open (SYN_SENT, and SYN_RECEIVED after a simultaneous open): RFC 9293
3.5 and 3.10.7.3.

Sends the SYN with our MSS and window scale, retransmits it with exponential backoff
from the initial RTO (Linux: 1 s, 2 s, 4 s, ... ``syn_retries`` times, then ETIMEDOUT),
gives ECONNREFUSED on an acceptable RST, answers a bad ACK with a RST, and hands over
to an ``EstablishedSocket`` once the SYN is acknowledged.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from xdpstackd.inetstack.layer4.tcp.header import ACK, RST, SYN, TcpHeader, TcpOptions
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

if TYPE_CHECKING:
    from xdpstackd.inetstack.layer4.tcp.peer import TcpPeer
    from xdpstackd.inetstack.layer4.tcp.socket import TcpSocket


class ActiveOpenSocket:
    is_handshake = True

    __slots__ = (
        "conn_id",
        "deadline",
        "give_up_at",
        "irs",
        "iss",
        "local",
        "peer",
        "peer_options",
        "peer_window_raw",
        "qt",
        "released",
        "remote",
        "retries",
        "rto_s",
        "scheduled",
        "socket",
        "syn_received",
        "syn_sent_at",
    )

    def __init__(
        self,
        peer: TcpPeer,
        socket: TcpSocket,
        qt: int,
        local: tuple[int, int],
        remote: tuple[int, int],
        iss: SeqNumber,
        now: float,
    ) -> None:
        self.peer = peer
        self.socket = socket
        self.qt = qt
        self.local = local
        self.remote = remote
        self.iss = iss
        self.irs: SeqNumber | None = None
        self.peer_options: TcpOptions | None = None
        self.peer_window_raw = 0
        self.syn_received = False  # simultaneous open: we answered the peer's SYN
        self.retries = 0
        self.rto_s = peer.config.rto_initial_s
        self.syn_sent_at: float | None = now  # None once retransmitted (Karn)
        self.deadline = now + self.rto_s
        self.give_up_at = now + peer.config.connect_timeout_s
        self.scheduled: float | None = None
        self.released = False
        self.conn_id = 0

    @property
    def state(self) -> str:
        return "SYN_RECEIVED" if self.syn_received else "SYN_SENT"

    def start(self) -> None:
        self._send_syn()

    def _send_syn(self) -> None:
        if self.syn_received:
            assert self.irs is not None
            opts = self.peer_options
            self.peer.send_syn(
                self.local,
                self.remote,
                self.iss,
                self.irs + 1,
                self.socket.options,
                peer_offered_wscale=opts is not None and opts.window_scale is not None,
            )
        else:
            self.peer.send_syn(self.local, self.remote, self.iss, None, self.socket.options)

    def receive(self, hdr: TcpHeader, payload: memoryview, now: float) -> None:
        flags = hdr.flags
        snd_nxt = self.iss + 1
        ack_ok = bool(flags & ACK) and hdr.ack_num == snd_nxt
        if flags & ACK and not ack_ok:
            # RFC 9293 3.10.7.3 first: an unacceptable ACK gets <SEQ=SEG.ACK><CTL=RST>
            if not flags & RST:
                self.peer.send_rst_for(hdr, len(payload), self.local, self.remote)
            return
        if flags & RST:
            if self.syn_received:
                # SYN_RECEIVED from an active open: an in-window RST refuses us too
                if self.irs is not None and hdr.seq_num == self.irs + 1:
                    self.peer.active_open_failed(self, errno.ECONNREFUSED)
                return
            if ack_ok:
                self.peer.active_open_failed(self, errno.ECONNREFUSED)
            return
        if flags & SYN:
            if self.syn_received and hdr.seq_num != self.irs:
                return  # a different SYN while half-synchronized: ignore
            self.irs = hdr.seq_num
            self.peer_options = hdr.options
            self.peer_window_raw = hdr.window
            if ack_ok:
                self.peer.active_open_established(self, hdr, payload, now, send_ack=True)
            else:
                # simultaneous open: SYN crossed ours; answer SYN-ACK, wait for its ACK
                self.syn_received = True
                self._send_syn()
            return
        if self.syn_received and ack_ok:
            self.peer_window_raw = hdr.window
            self.peer.active_open_established(self, hdr, payload, now, send_ack=False)

    def on_timer(self, now: float) -> None:
        if now < self.deadline:
            return
        config = self.peer.config
        if self.retries >= config.syn_retries or now >= self.give_up_at:
            self.peer.active_open_failed(self, errno.ETIMEDOUT)
            return
        self.retries += 1
        self.syn_sent_at = None
        self.rto_s = min(self.rto_s * 2, config.rto_max_s)
        self.deadline = min(now + self.rto_s, self.give_up_at)
        self.peer.counters["tcp_syn_retransmits"] += 1
        self._send_syn()

    def next_deadline(self) -> float | None:
        return None if self.released else self.deadline

    def handshake_rtt(self, now: float) -> float | None:
        return None if self.syn_sent_at is None else now - self.syn_sent_at

    def snapshot(self) -> dict[str, dict[str, object]]:
        return {
            "connection_management": {
                "state": self.state,
                "local": self.local,
                "remote": self.remote,
                "syn_retries": self.retries,
                "rto_s": self.rto_s,
            }
        }
