"""Congestion control (CC): the pluggable algorithm's cwnd/ssthresh, NewReno loss
recovery (RFC 6582) layered over it, duplicate-ACK counting and the RTO calculator.

The algorithm (``congestion_control/``: ``cubic`` or ``none``) decides how cwnd grows
and shrinks; this component decides *when* to tell it (new ACK, third duplicate ACK,
RTO) and keeps the recovery bookkeeping: ``recover`` and the temporary window
inflation of fast recovery, so the algorithm never sees NewReno's arithmetic.
"""

from __future__ import annotations

from xdpstackd.inetstack.layer4.tcp.established import actions as A
from xdpstackd.inetstack.layer4.tcp.established.congestion_control import (
    CongestionAlgorithm,
)
from xdpstackd.inetstack.layer4.tcp.established.rto import RtoCalculator
from xdpstackd.inetstack.layer4.tcp.established.views import DeliveryView
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

DUP_ACK_THRESHOLD = 3  # RFC 5681 3.2


class CongestionControl:
    __slots__ = (
        "algorithm",
        "dup_acks",
        "fast_retransmits",
        "in_recovery",
        "inflation",
        "mss",
        "recover",
        "rto",
        "timeouts_total",
    )

    def __init__(
        self, algorithm: CongestionAlgorithm, rto: RtoCalculator, mss: int, iss: SeqNumber
    ) -> None:
        self.algorithm = algorithm
        self.rto = rto
        self.mss = mss
        self.dup_acks = 0
        self.in_recovery = False
        self.recover = iss  # RFC 6582: highest sequence sent when recovery began
        self.inflation = 0  # fast-recovery inflation on top of the algorithm's cwnd
        self.fast_retransmits = 0
        self.timeouts_total = 0

    # -- CongestionView -----------------------------------------------------------------
    @property
    def cwnd(self) -> int:
        return self.algorithm.cwnd + self.inflation

    @property
    def rto_s(self) -> float:
        return self.rto.rto_s

    # -- handlers -----------------------------------------------------------------------
    def on_ack(self, rod: DeliveryView, flight_before: int, now: float) -> int:
        """New data acked; ROD has already dropped it and taken any RTT sample."""
        acked = rod.last_acked_bytes
        sample = rod.last_rtt_sample_s
        if sample is not None:
            self.rto.on_rtt_sample(sample)
        self.dup_acks = 0
        if self.in_recovery:
            if self.recover < rod.snd_una or self.recover == rod.snd_una:
                # full ACK: leave recovery with cwnd = ssthresh (RFC 6582 3.2 step 3)
                self.in_recovery = False
                self.inflation = 0
                return A.SEND
            # partial ACK: deflate by what was acked, add back one MSS, resend the head
            self.inflation = max(self.inflation - acked, 0) + self.mss
            return A.RETRANSMIT | A.SEND
        self.inflation = 0  # limited transmit's allowance ends with the new ACK
        self.algorithm.on_ack(acked, flight_before, now, sample)
        return A.SEND

    def on_dup_ack(self, rod: DeliveryView, now: float) -> int:
        self.dup_acks += 1
        if self.in_recovery:
            self.inflation += self.mss  # each dup ACK means a segment left the network
            return A.SEND
        if self.dup_acks < DUP_ACK_THRESHOLD:
            # limited transmit (RFC 3042): one new segment per early duplicate ACK keeps
            # the ACK clock going, so a small window can still reach three duplicates
            self.inflation = self.dup_acks * self.mss
            return A.SEND
        if self.dup_acks == DUP_ACK_THRESHOLD and self.recover < rod.snd_una:
            self.algorithm.on_congestion_event(rod.bytes_in_flight, now)
            self.recover = rod.snd_max
            self.in_recovery = True
            self.inflation = DUP_ACK_THRESHOLD * self.mss
            self.fast_retransmits += 1
            return A.RETRANSMIT | A.SEND
        return A.NONE

    def on_rto(self, rod: DeliveryView, now: float) -> None:
        """RFC 6298 5.5 back off; RFC 5681 3.1 loss window; RFC 6582 recover = SND.MAX."""
        self.algorithm.on_rto(rod.bytes_in_flight, now)
        self.rto.on_timeout()
        self.timeouts_total += 1
        self.in_recovery = False
        self.inflation = 0
        self.dup_acks = 0
        self.recover = rod.snd_max

    def snapshot(self) -> dict[str, object]:
        out: dict[str, object] = {
            "algorithm": self.algorithm.name,
            "cwnd": self.cwnd,
            "ssthresh": self.algorithm.ssthresh,
            "in_recovery": self.in_recovery,
            "recover": self.recover.value,
            "dup_acks": self.dup_acks,
            "fast_retransmits": self.fast_retransmits,
            "timeouts": self.timeouts_total,
        }
        out.update(
            {
                f"rto_{k}" if not k.startswith("rto") else k: v
                for k, v in self.rto.snapshot().items()
            }
        )
        out.update(
            {
                f"cc_{k}": v
                for k, v in self.algorithm.snapshot().items()
                if k not in ("cwnd", "ssthresh")
            }
        )
        return out
