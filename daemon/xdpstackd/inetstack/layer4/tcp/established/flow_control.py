"""Flow control (FC): the peer's window we send into, the window we advertise, the
negotiated scales and MSS, and the zero-window probe (persist) timer.

Send side: SND.WND, SND.WL1, SND.WL2 with the RFC 9293 3.10.7.4 update rule, and the
largest window ever offered (for sender silly-window avoidance). Receive side: the right
edge we advertised (RCV.NXT + RCV.WND) never moves left (RFC 9293 3.8.6.2.2), and only
moves right in steps worth advertising (receiver SWS avoidance).
"""

from __future__ import annotations

from xdpstackd.inetstack.layer4.tcp.established import actions as A
from xdpstackd.inetstack.layer4.tcp.established.views import CongestionView, DeliveryView
from xdpstackd.inetstack.layer4.tcp.header import TcpHeader
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

_MAX_RAW_WINDOW = 0xFFFF


class FlowControl:
    __slots__ = (
        "last_window_raw",
        "max_snd_wnd",
        "mss",
        "probe_backoff",
        "probe_deadline",
        "probe_max_s",
        "probes_unanswered",
        "rcv_adv",
        "rcv_buffer_bytes",
        "rcv_wscale",
        "retries",
        "snd_wl1",
        "snd_wl2",
        "snd_wnd",
        "snd_wscale",
    )

    def __init__(
        self,
        *,
        mss: int,
        snd_wnd: int,
        snd_wscale: int,
        rcv_wscale: int,
        rcv_buffer_bytes: int,
        snd_wl1: SeqNumber,
        snd_wl2: SeqNumber,
        rcv_adv: SeqNumber,
        probe_max_s: float,
        retries: int,
    ) -> None:
        self.mss = mss  # effective send MSS: min(peer's MSS option, ours)
        self.snd_wnd = snd_wnd  # bytes, already scaled
        self.snd_wscale = snd_wscale  # shift applied to the peer's window field
        self.rcv_wscale = rcv_wscale  # shift the peer applies to ours
        self.rcv_buffer_bytes = rcv_buffer_bytes
        self.snd_wl1 = snd_wl1
        self.snd_wl2 = snd_wl2
        self.max_snd_wnd = snd_wnd
        self.last_window_raw = -1  # window field of the last acceptable ACK (dup-ACK test)
        self.rcv_adv = rcv_adv  # right edge of the window we last advertised
        self.probe_deadline: float | None = None
        self.probe_backoff = 0
        self.probes_unanswered = 0
        self.probe_max_s = probe_max_s
        self.retries = retries

    # -- DeliveryView readers -------------------------------------------------------------
    def rcv_wnd(self, rcv_nxt: SeqNumber) -> int:
        """The receive window the peer was told about (0 if RCV.NXT passed the edge)."""
        return max(self.rcv_adv.distance(rcv_nxt), 0)

    def window_unchanged(self, hdr: TcpHeader) -> bool:
        return hdr.window == self.last_window_raw

    # -- handlers -----------------------------------------------------------------------
    def on_ack(self, hdr: TcpHeader, *, advanced: bool) -> int:
        """Fifth step: update SND.WND from an acceptable ACK.

        RFC 9293's SND.WL1/SND.WL2 rule, in Linux's form (``tcp_may_update_window``): an
        ACK that moves SND.UNA always carries the current window, because the window is
        measured from that ACK; otherwise only a newer segment (SEG.SEQ past SND.WL1), or
        the same one offering more (or closing the window), may change it. ``advanced``
        says whether ROD just moved SND.UNA.
        """
        self.probes_unanswered = 0
        seq = hdr.seq_num
        wnd = hdr.window << self.snd_wscale
        self.last_window_raw = hdr.window
        if (
            advanced
            or self.snd_wl1 < seq
            or (self.snd_wl1 == seq and (wnd > self.snd_wnd or wnd == 0))
        ):
            old = self.snd_wnd
            self.snd_wnd = wnd
            self.snd_wl1 = seq
            self.snd_wl2 = hdr.ack_num
            if wnd > self.max_snd_wnd:
                self.max_snd_wnd = wnd
            if wnd > 0:
                self.probe_deadline = None
                self.probe_backoff = 0
            if wnd > old:
                return A.SEND
        return A.NONE

    def advertise(self, rod: DeliveryView) -> int:
        """The window field for an outgoing segment; moves the advertised right edge."""
        rcv_nxt = rod.rcv_nxt
        free = self.rcv_buffer_bytes - rod.recv_queue_bytes
        current = self.rcv_adv.distance(rcv_nxt)
        if current < 0:
            current = 0
        # receiver SWS avoidance: grow the edge only by a worthwhile amount
        if free - current >= min(self.rcv_buffer_bytes // 2, self.mss):
            current = free
        # what the 16-bit field and the scale can express (RFC 7323 2.3: round down)
        raw = current >> self.rcv_wscale
        if raw > _MAX_RAW_WINDOW:
            raw = _MAX_RAW_WINDOW
        # the right edge is what the peer is told; it never moves left (RFC 9293 3.8.6.2.2)
        edge = rcv_nxt + (raw << self.rcv_wscale)
        if self.rcv_adv < edge:
            self.rcv_adv = edge
        else:
            raw = self.rcv_adv.distance(rcv_nxt) >> self.rcv_wscale
            if raw > _MAX_RAW_WINDOW:
                raw = _MAX_RAW_WINDOW
        return raw

    def window_update_due(self, rod: DeliveryView) -> bool:
        """After the application read: is the window we could offer much larger than the
        one the peer knows (Linux's tcp_cleanup_rbuf rule)?"""
        current = max(self.rcv_adv.distance(rod.rcv_nxt), 0)
        clamp = min(self.rcv_buffer_bytes, _MAX_RAW_WINDOW << self.rcv_wscale)
        offer = min(self.rcv_buffer_bytes - rod.recv_queue_bytes, clamp)
        return 2 * current <= clamp and offer >= max(2 * current, self.mss)

    def arm_probe(self, now: float, cc: CongestionView) -> None:
        """Persist timer: the peer's window is closed while we hold unsent data."""
        if self.probe_deadline is None:
            interval = min(cc.rto_s * (1 << self.probe_backoff), self.probe_max_s)
            self.probe_deadline = now + interval

    def disarm_probe(self) -> None:
        self.probe_deadline = None
        self.probe_backoff = 0

    def on_timer(self, now: float, cc: CongestionView) -> int:
        if self.probe_deadline is None or now < self.probe_deadline:
            return A.NONE
        self.probes_unanswered += 1
        if self.probes_unanswered > self.retries:
            self.probe_deadline = None
            return A.TIMED_OUT
        self.probe_backoff += 1
        interval = min(cc.rto_s * (1 << min(self.probe_backoff, 30)), self.probe_max_s)
        self.probe_deadline = now + interval
        return A.PROBE

    def snapshot(self) -> dict[str, object]:
        return {
            "snd_wnd": self.snd_wnd,
            "snd_wl1": self.snd_wl1.value,
            "snd_wl2": self.snd_wl2.value,
            "max_snd_wnd": self.max_snd_wnd,
            "snd_wscale": self.snd_wscale,
            "rcv_wscale": self.rcv_wscale,
            "mss": self.mss,
            "rcv_buffer_bytes": self.rcv_buffer_bytes,
            "rcv_adv": self.rcv_adv.value,
            "probe_deadline": self.probe_deadline,
            "probe_backoff": self.probe_backoff,
            "probes_unanswered": self.probes_unanswered,
        }
