"""The control block: the four components of an established connection and the
dispatcher that hands each event to them in one fixed order.

This is where the seed's "Problem 2" (ordering) lives, written down once:

* ACK of new data: ROD drops acked bytes and takes the RTT sample -> CC feeds the
  sample to the RTO calculator and grows cwnd (reading ROD) -> FC updates SND.WND ->
  CM learns whether our FIN was acknowledged (reading ROD).
* Text and FIN: ROD reassembles and consumes the FIN -> CM moves the state.
* Timers: acknowledger (ROD) -> retransmitter (CC backs off, then ROD goes back) ->
  persist (FC) -> TIME_WAIT / keep-alive (CM).

Handlers mutate only their own component and return ``actions`` flags; the dispatcher
ORs them and ``EstablishedSocket`` carries them out. Nothing here sends or reads a clock.
"""

from __future__ import annotations

import errno

from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.counters import Counters
from xdpstackd.inetstack.layer4.tcp.established import actions as A
from xdpstackd.inetstack.layer4.tcp.established.congestion_control_state import (
    CongestionControl,
)
from xdpstackd.inetstack.layer4.tcp.established.connection_management import (
    ConnectionManagement,
    State,
)
from xdpstackd.inetstack.layer4.tcp.established.flow_control import FlowControl
from xdpstackd.inetstack.layer4.tcp.established.ordered_delivery import OrderedDelivery
from xdpstackd.inetstack.layer4.tcp.header import ACK, FIN, RST, SYN, TcpHeader
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

ORPHAN_PROBES = 8  # Linux: tcp_orphan_retries = 0 means 8 probes


def segment_acceptable(seq: SeqNumber, seg_len: int, rcv_nxt: SeqNumber, rcv_wnd: int) -> bool:
    """RFC 9293 3.10.7.4, the four-case acceptability test."""
    off = seq.distance(rcv_nxt)
    if seg_len == 0:
        if rcv_wnd == 0:
            return off == 0
        return 0 <= off < rcv_wnd
    if rcv_wnd == 0:
        return False
    end = off + seg_len - 1
    return (0 <= off < rcv_wnd) or (0 <= end < rcv_wnd)


class ControlBlock:
    """The four components, plus the stack's counters so every drop is counted by reason."""

    __slots__ = ("cc", "cm", "config", "counters", "fc", "rod")

    def __init__(
        self,
        cm: ConnectionManagement,
        rod: OrderedDelivery,
        fc: FlowControl,
        cc: CongestionControl,
        config: TcpConfig,
        counters: Counters,
    ) -> None:
        self.counters = counters
        self.cm = cm
        self.rod = rod
        self.fc = fc
        self.cc = cc
        self.config = config

    # -- network events -------------------------------------------------------------------
    def on_segment(self, hdr: TcpHeader, payload: memoryview, now: float) -> int:
        """One segment for this connection, RFC 9293 3.10.7.4 in its order of steps."""
        cm, rod, fc = self.cm, self.rod, self.fc
        state = cm.state
        if state is State.CLOSED:
            self.counters["tcp_drop_connection_closed"] += 1
            return A.NONE
        flags = hdr.flags
        seq = hdr.seq_num
        rst = flags & RST
        syn = flags & SYN
        fin = flags & FIN
        seg_len = len(payload) + (1 if syn else 0) + (1 if fin else 0)
        rcv_wnd = fc.rcv_wnd(rod.rcv_nxt)

        # first: sequence number acceptability
        if not segment_acceptable(seq, seg_len, rod.rcv_nxt, rcv_wnd):
            if rst:
                self.counters["tcp_drop_rst_out_of_window"] += 1
                return A.NONE
            if syn:  # RFC 5961 4.2: any SYN, whatever its sequence number
                self.counters["tcp_syn_challenged"] += 1
                return A.CHALLENGE_ACK
            self.counters["tcp_drop_out_of_window"] += 1
            if fin and state is State.TIME_WAIT:
                # the peer's FIN again: our last ACK was lost (RFC 9293 3.10.7.4 TIME-WAIT)
                return cm.on_fin_received(now) & ~A.EOF_RECEIVED
            # data gets its duplicate ACK at once, and so does a probe (a zero-window or
            # keep-alive probe is SEG.SEQ = RCV.NXT - 1, built to draw exactly this ACK);
            # any other bare segment only at a limited rate, so two confused ends cannot
            # ACK each other at line rate (Linux: tcp_oow_rate_limited)
            if payload or seq.distance(rod.rcv_nxt) == -1:
                return A.ACK_NOW
            return A.ACK_INVALID
        # second: RST, accepted only exactly at RCV.NXT (RFC 5961 3.2)
        if rst:
            if seq == rod.rcv_nxt:
                return cm.on_reset(errno.ECONNRESET)
            self.counters["tcp_rst_in_window_challenged"] += 1
            return A.CHALLENGE_ACK
        # fourth: SYN in a synchronized state -> challenge ACK (RFC 5961 4.2)
        if syn:
            self.counters["tcp_syn_challenged"] += 1
            return A.CHALLENGE_ACK
        # fifth: the ACK field
        if not flags & ACK:
            self.counters["tcp_drop_no_ack_flag"] += 1
            return A.NONE
        cm.on_segment_received(now)
        actions = self._on_ack_field(hdr, payload, now)
        if actions & (A.CLOSED | A.DROP):
            return actions & ~A.DROP
        # seventh/eighth: text and FIN
        if payload or fin:
            if cm.orphaned and payload and rod.rcv_nxt < seq + len(payload):
                # new data for a descriptor the application closed: nobody will read
                # it, so reset, as Linux does (its TCPAbortOnData counter)
                self.counters["tcp_abort_on_data"] += 1
                return actions | A.SEND_RST | cm.on_reset(errno.ECONNABORTED)
            if cm.receiving:
                ooo_drops = rod.ooo_drops
                actions |= rod.on_data(seq, payload, bool(fin), rcv_wnd, fc.mss)
                if rod.ooo_drops != ooo_drops:
                    self.counters["tcp_drop_ooo_queue_full"] += 1
                if actions & A.EOF_RECEIVED:
                    actions |= cm.on_fin_received(now)
            elif fin and cm.state is State.TIME_WAIT:
                actions |= cm.on_fin_received(now)  # retransmitted FIN: ACK, restart 2MSL
            else:
                actions |= A.ACK_NOW  # data after the peer's FIN: ignore, re-ACK
        return actions

    def _on_ack_field(self, hdr: TcpHeader, payload: memoryview, now: float) -> int:
        """Fifth step. ``A.DROP`` in the result means the segment goes no further."""
        rod, cc, fc, cm = self.rod, self.cc, self.fc, self.cm
        ack = hdr.ack_num
        una = rod.snd_una
        if una < ack and not (rod.snd_max < ack):
            flight_before = rod.bytes_in_flight
            actions = rod.on_ack(ack, now, cc.rto_s)  # 1. ROD
            actions |= cc.on_ack(rod, max(flight_before, rod.last_acked_bytes), now)  # 2. CC
            if rod.retransmit_deadline is not None:  # re-arm with the freshly sampled RTO
                rod.restart_retransmit_timer(now, cc.rto_s)
            actions |= fc.on_ack(hdr, advanced=True)  # 3. FC
            if rod.fin_acked and cm.state in (State.FIN_WAIT_1, State.CLOSING, State.LAST_ACK):
                actions |= cm.on_fin_acked(now)  # 4. CM
            return actions
        if ack == una:
            dup = (
                not payload
                and not hdr.flags & FIN
                and rod.snd_max != una
                and fc.window_unchanged(hdr)
            )
            actions = fc.on_ack(hdr, advanced=False)
            if dup:
                actions |= cc.on_dup_ack(rod, now)
            return actions
        if rod.snd_max < ack:
            self.counters["tcp_drop_ack_of_unsent"] += 1
            # acks something not yet sent (RFC 9293): ACK and drop; a bare one only at
            # the out-of-window rate, so it cannot make us ACK at line rate
            return A.DROP | (A.ACK_NOW if payload else A.ACK_INVALID)
        # an old ACK: within MAX.SND.WND behind SND.UNA it is merely ignored (RFC 5961 5.2)
        if una.distance(ack) > fc.max_snd_wnd:
            self.counters["tcp_drop_ack_too_old"] += 1
            return A.DROP | A.CHALLENGE_ACK
        return A.NONE

    def on_timer(self, now: float) -> int:
        rod, cc, fc, cm = self.rod, self.cc, self.fc, self.cm
        actions = A.NONE
        if rod.ack_deadline is not None and now >= rod.ack_deadline:
            actions |= A.ACK_NOW  # the acknowledger's duty
        if rod.retransmit_deadline is not None and now >= rod.retransmit_deadline:
            if rod.timeouts >= self.config.retries2:
                rod.retransmit_deadline = None
                return actions | A.TIMED_OUT | cm.on_reset(errno.ETIMEDOUT)
            self.counters["tcp_rto_expirations"] += 1
            cc.on_rto(rod, now)  # back off first, so ROD re-arms with the new RTO
            rod.on_rto(now, cc.rto_s)
            actions |= A.GO_BACK | A.SEND
        fa = fc.on_timer(now, cc)
        if fa & A.TIMED_OUT:
            return actions | A.TIMED_OUT | cm.on_reset(errno.ETIMEDOUT)
        if fa & A.PROBE and cm.orphaned and fc.probe_backoff > ORPHAN_PROBES:
            # nobody will ever write more or read: an orphan may not sit in persist for
            # ever behind a window the peer keeps shut (Linux: tcp_orphan_retries)
            self.counters["tcp_orphans_aborted_in_persist"] += 1
            return actions | A.SEND_RST | cm.on_reset(errno.ETIMEDOUT)
        actions |= fa
        ca = cm.on_timer(now)
        if ca & A.TIMED_OUT:
            return actions | A.TIMED_OUT | A.SEND_RST | cm.on_reset(errno.ETIMEDOUT)
        return actions | ca

    def next_deadline(self) -> float | None:
        best = self.rod.next_deadline()
        for d in (self.fc.probe_deadline, self.cm.next_deadline()):
            if d is not None and (best is None or d < best):
                best = d
        return best

    def snapshot(self) -> dict[str, dict[str, object]]:
        flow_control = self.fc.snapshot()
        flow_control["rcv_wnd"] = self.fc.rcv_wnd(self.rod.rcv_nxt)  # RCV.WND needs RCV.NXT
        return {
            "connection_management": self.cm.snapshot(),
            "ordered_delivery": self.rod.snapshot(),
            "flow_control": flow_control,
            "congestion_control": self.cc.snapshot(),
        }
