"""Ordered delivery (ROD): both byte streams and the sequence space they occupy.

Send side, one ``bytearray`` holding every byte from SND.UNA on::

        SND.UNA            SND.NXT                        SND.UNA + len(send_buf)
           |<--- in flight --->|<-------- not yet sent -------->|(FIN)
           [=========== send_buf ===============================]

The seed's ``unacked_queue`` and ``unsent_queue`` are the two parts of this buffer:
an ACK deletes from the front (CPython's bytearray does that without moving the rest),
a retransmission re-slices it, so no per-segment objects are kept. SND.MAX is the
highest sequence number ever sent; after an RTO, SND.NXT goes back to SND.UNA
(go-back-N) while ACKs up to SND.MAX stay acceptable.

Receive side: in-order bytes wait in ``recv_queue`` for the application; segments
ahead of RCV.NXT wait in a sorted out-of-order list bounded in bytes; a FIN ahead of
RCV.NXT is remembered and consumed when the stream reaches it.
"""

from __future__ import annotations

import bisect
from collections import deque

from xdpstackd.inetstack.layer4.tcp.established import actions as A
from xdpstackd.inetstack.layer4.tcp.sequence_number import SEQ_HALF, SEQ_MASK, SEQ_SPACE, SeqNumber

# the per-segment receive path does SeqNumber.distance's arithmetic inline


class OrderedDelivery:
    __slots__ = (
        "ack_deadline",
        "eof",
        "fin_acked",
        "fin_queued",
        "fin_seq",
        "irs",
        "iss",
        "last_acked_bytes",
        "last_rtt_sample_s",
        "ooo",
        "ooo_bytes",
        "ooo_drops",
        "ooo_max_bytes",
        "rcv_acked",
        "rcv_nxt",
        "recv_fin_seq",
        "recv_queue",
        "recv_queue_bytes",
        "retransmit_deadline",
        "retransmits",
        "rtt_seq",
        "rtt_start",
        "send_buf",
        "send_buffer_bytes",
        "snd_max",
        "snd_nxt",
        "snd_una",
        "timeouts",
    )

    def __init__(
        self,
        iss: SeqNumber,
        irs: SeqNumber,
        *,
        send_buffer_bytes: int,
        ooo_max_bytes: int,
    ) -> None:
        # send side
        self.iss = iss
        self.snd_una = iss + 1
        self.snd_nxt = iss + 1
        self.snd_max = iss + 1
        self.send_buf = bytearray()
        self.send_buffer_bytes = send_buffer_bytes
        self.fin_queued = False  # the application closed: a FIN follows the last byte
        self.fin_seq: SeqNumber | None = None  # sequence number our FIN occupies
        self.fin_acked = False
        self.rtt_seq: SeqNumber | None = None  # an ACK at or past this ends the timed segment
        self.rtt_start = 0.0
        self.retransmit_deadline: float | None = None
        self.retransmits = 0  # segments sent again, in all
        self.timeouts = 0  # consecutive RTO expiries without progress
        self.last_acked_bytes = 0  # bytes (incl. FIN) the latest ACK newly covered
        self.last_rtt_sample_s: float | None = None  # Karn-valid sample from that ACK
        # receive side
        self.irs = irs
        self.rcv_nxt = irs + 1
        self.rcv_acked = irs + 1  # RCV.NXT as of the last ACK we sent
        # made on the first in-order bytes and dropped when the application has taken
        # them all: an empty deque is 760 bytes, most of an idle connection's memory
        self.recv_queue: deque[bytes] | None = None
        self.recv_queue_bytes = 0
        self.ooo: list[tuple[int, SeqNumber, bytes]] = []  # (offset from IRS, seq, data)
        self.ooo_bytes = 0
        self.ooo_max_bytes = ooo_max_bytes
        self.ooo_drops = 0  # segments not held because the out-of-order bound was reached
        self.recv_fin_seq: SeqNumber | None = None
        self.eof = False
        self.ack_deadline: float | None = None

    # -- read-only facts (DeliveryView) -------------------------------------------------
    @property
    def bytes_in_flight(self) -> int:
        return self.snd_nxt.distance(self.snd_una)

    # -- application side ---------------------------------------------------------------
    def push(self, data: bytes | memoryview, start: int) -> int:
        """Append ``data[start:]`` as far as the send buffer allows; return bytes taken."""
        take = min(len(data) - start, self.send_buffer_bytes - len(self.send_buf))
        if take > 0:
            self.send_buf += data[start : start + take]
        return max(take, 0)

    def pop(self, size: int | None) -> bytes:
        """Take up to ``size`` in-order bytes (all buffered when None)."""
        q = self.recv_queue
        if not q:
            return b""
        if size is None or size >= self.recv_queue_bytes:
            out = q[0] if len(q) == 1 else b"".join(q)
            self.recv_queue = None
        else:
            parts = []
            need = size
            while need:
                head = q[0]
                if len(head) <= need:
                    parts.append(q.popleft())
                    need -= len(head)
                else:
                    parts.append(head[:need])
                    q[0] = head[need:]
                    need = 0
            out = parts[0] if len(parts) == 1 else b"".join(parts)
        self.recv_queue_bytes -= len(out)
        return out

    def on_close(self) -> int:
        """Queue our FIN after the last byte (sent once everything before it is)."""
        if self.fin_queued:
            return A.NONE
        self.fin_queued = True
        return A.SEND

    # -- transmit bookkeeping (called by the sender/retransmitter duties) ---------------
    def on_transmit(self, nbytes: int, fin: bool, now: float, rto_s: float) -> None:
        """A segment of ``nbytes`` (+FIN) left at SND.NXT."""
        seq = self.snd_nxt
        end = seq + (nbytes + 1 if fin else nbytes)
        snd_max = self.snd_max
        if seq.value == snd_max.value:  # new data, the common case: no comparisons needed
            if self.rtt_seq is None:
                self.rtt_seq = end
                self.rtt_start = now
            self.snd_max = end
        else:
            if seq < snd_max:
                self.retransmits += 1
                self.rtt_seq = None  # Karn: never time a retransmitted range
            elif self.rtt_seq is None:
                self.rtt_seq = end
                self.rtt_start = now
            if snd_max < end:
                self.snd_max = end
        if fin:
            self.fin_seq = end + -1
        self.snd_nxt = end
        if self.retransmit_deadline is None:
            self.retransmit_deadline = now + rto_s  # RFC 6298 5.1

    def on_retransmit_head(self) -> None:
        """Fast retransmit / partial ACK resent the segment at SND.UNA."""
        self.retransmits += 1
        self.rtt_seq = None

    def on_rto(self, now: float, rto_s: float) -> None:
        """RFC 6298 5.4-5.6: go back to SND.UNA and restart the timer (RTO already backed off)."""
        self.timeouts += 1
        self.snd_nxt = self.snd_una
        self.rtt_seq = None
        self.retransmit_deadline = now + rto_s

    def on_ack_sent(self) -> None:
        self.ack_deadline = None
        self.rcv_acked = self.rcv_nxt

    def arm_delayed_ack(self, now: float, delay_s: float) -> None:
        if self.ack_deadline is None:
            self.ack_deadline = now + delay_s

    # -- ACK processing -----------------------------------------------------------------
    def on_ack(self, ack: SeqNumber, now: float, rto_s: float) -> int:
        """SND.UNA < ack <= SND.MAX: drop acknowledged bytes, sample RTT, manage the timer."""
        acked = ack.distance(self.snd_una)
        self.last_acked_bytes = acked
        data_acked = acked
        if self.fin_seq is not None and not (ack < self.fin_seq + 1):
            data_acked -= 1
            self.fin_acked = True
        if data_acked:
            del self.send_buf[:data_acked]
        self.snd_una = ack
        if self.snd_nxt < ack:
            self.snd_nxt = ack  # acked past a go-back point
        self.timeouts = 0
        sample = None
        if self.rtt_seq is not None and not (ack < self.rtt_seq):
            sample = now - self.rtt_start
            self.rtt_seq = None
        self.last_rtt_sample_s = sample
        # RFC 6298 5.2/5.3: stop when all is acked, else restart
        self.retransmit_deadline = None if ack == self.snd_max else now + rto_s
        return A.SPACE | A.SEND

    def restart_retransmit_timer(self, now: float, rto_s: float) -> None:
        if self.snd_una != self.snd_max:
            self.retransmit_deadline = now + rto_s

    # -- receive ------------------------------------------------------------------------
    def on_data(
        self,
        seq: SeqNumber,
        payload: memoryview,
        fin: bool,
        rcv_wnd: int,
        mss: int,
    ) -> int:
        """An acceptable segment's text and FIN (RFC 9293 3.10.7.4, seventh/eighth steps)."""
        n = len(payload)
        off = (seq.value - self.rcv_nxt.value) & SEQ_MASK  # seq.distance(rcv_nxt), inline
        if off > SEQ_HALF:
            off -= SEQ_SPACE
        if off < 0:  # starts left of RCV.NXT: trim what we already have
            if -off >= n:
                if fin and -off == n and self.recv_fin_seq is None and not self.eof:
                    pass  # only the FIN is new
                else:
                    return A.ACK_NOW  # a pure duplicate: tell the sender at once
            payload = payload[-off:] if -off < n else payload[n:]
            n = len(payload)
            off = 0
        if off + n > rcv_wnd:  # right edge beyond the window: trim, drop the FIN
            keep = max(rcv_wnd - off, 0)
            payload = payload[:keep]
            n = keep
            fin = False
        actions = A.NONE
        if off == 0:
            if n:
                q = self.recv_queue
                if q is None:
                    q = self.recv_queue = deque()
                q.append(bytes(payload))
                self.recv_queue_bytes += n
                self.rcv_nxt = self.rcv_nxt + n
                actions |= A.DELIVER
            if self.ooo:
                actions |= self._drain_ooo() | A.ACK_NOW  # filling a hole: ACK at once
            if fin and self.recv_fin_seq is None:
                self.recv_fin_seq = self.rcv_nxt
        elif off > 0:
            if n:
                self._store_ooo(seq, off, payload)
            if fin:
                self.recv_fin_seq = seq + n
            return A.ACK_NOW  # out of order: duplicate ACK at once (RFC 5681 4.2)
        if self.recv_fin_seq is not None and self.rcv_nxt == self.recv_fin_seq and not self.eof:
            self.rcv_nxt = self.rcv_nxt + 1
            self.eof = True
            return actions | A.EOF_RECEIVED | A.ACK_NOW
        if n:
            # RFC 1122 4.2.3.2 / RFC 9293 3.8.6.3: ACK at least every second full segment
            # (at once, or at the end of the receive batch: see EstablishedSocket)
            if 2 * mss <= (self.rcv_nxt.value - self.rcv_acked.value) & SEQ_MASK <= SEQ_HALF:
                actions |= A.ACK_DUE
            else:
                actions |= A.ACK_DELAYED
        return actions

    def _store_ooo(self, seq: SeqNumber, off: int, payload: memoryview) -> None:
        n = len(payload)
        base = seq.distance(self.irs)
        for existing_base, _s, data in self.ooo:
            if existing_base <= base and base + n <= existing_base + len(data):
                return  # already held
        if self.ooo_bytes + n > self.ooo_max_bytes:
            self.ooo_drops += 1
            return  # bound reached: the sender will retransmit it
        bisect.insort(self.ooo, (base, seq, bytes(payload)), key=lambda e: e[0])
        self.ooo_bytes += n

    def _drain_ooo(self) -> int:
        actions = A.NONE
        ooo = self.ooo
        while ooo:
            _base, seq, data = ooo[0]
            off = seq.distance(self.rcv_nxt)
            if off > 0:
                break
            ooo.pop(0)
            self.ooo_bytes -= len(data)
            if -off < len(data):
                piece = data[-off:] if off else data
                q = self.recv_queue
                if q is None:
                    q = self.recv_queue = deque()
                q.append(piece)
                self.recv_queue_bytes += len(piece)
                self.rcv_nxt = self.rcv_nxt + len(piece)
                actions |= A.DELIVER
        return actions

    def next_deadline(self) -> float | None:
        a, r = self.ack_deadline, self.retransmit_deadline
        if a is None:
            return r
        if r is None or a < r:
            return a
        return r

    def snapshot(self) -> dict[str, object]:
        return {
            "iss": self.iss.value,
            "snd_una": self.snd_una.value,
            "snd_nxt": self.snd_nxt.value,
            "snd_max": self.snd_max.value,
            "unacked_bytes": self.bytes_in_flight,
            "unsent_bytes": len(self.send_buf) - min(self.bytes_in_flight, len(self.send_buf)),
            "send_buffer_bytes": self.send_buffer_bytes,
            "fin_queued": self.fin_queued,
            "fin_acked": self.fin_acked,
            "irs": self.irs.value,
            "rcv_nxt": self.rcv_nxt.value,
            "recv_queue_bytes": self.recv_queue_bytes,
            "ooo_segments": len(self.ooo),
            "ooo_bytes": self.ooo_bytes,
            "ooo_drops": self.ooo_drops,
            "recv_fin_seq": None if self.recv_fin_seq is None else self.recv_fin_seq.value,
            "eof": self.eof,
            "retransmits": self.retransmits,
            "consecutive_timeouts": self.timeouts,
            "retransmit_deadline": self.retransmit_deadline,
            "ack_deadline": self.ack_deadline,
        }
