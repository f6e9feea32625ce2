"""RFC 6298 retransmission timeout (RTO) calculator.

Why a class of its own: the RTO is pure arithmetic over RTT samples and timeouts, and the
congestion-control component (which owns it) should not have to reason about the EWMA,
the clamps or the backoff. Keeping it here makes every rule of RFC 6298 testable with
hand-computed numbers, without a connection or a clock.

Sans-IO: nothing here reads a clock. The caller measures RTT samples (with virtual or
monotonic time) and tells us when the retransmission timer expired; we only compute.

Departures from RFC 6298, on purpose:

* (2.4) says the RTO SHOULD be rounded up to 1 s. Like Linux, the minimum is a parameter
  (``min_s``, default 200 ms, SPEC section 2 and ``TcpConfig.rto_min_s``).
* The note in section 5 allows clearing SRTT/RTTVAR after several backoffs; we keep them
  (Linux does too) and let the next valid sample fold in through (2.3).
"""

from __future__ import annotations

import math

# RFC 6298 section 2: alpha = 1/8, beta = 1/4, K = 4. Powers of two, so exact in floats.
_ALPHA = 0.125
_BETA = 0.25
_K = 4.0


class RtoCalculator:
    """RFC 6298 retransmission timeout.

    * :meth:`on_rtt_sample` applies (2.2) to the first sample and (2.3) to later ones,
      then sets ``rto_s = SRTT + max(G, K*RTTVAR)`` clamped to ``[min_s, max_s]`` (2.4,
      2.5), and clears any backoff: a valid sample ends Karn's "keep the backed-off RTO".
    * :meth:`on_timeout` is (5.5): ``rto_s = min(2 * rto_s, max_s)``.

    **Karn's rule is the caller's job**: never pass a sample measured on a segment that
    was retransmitted (its ACK is ambiguous). Neither is (5.7) (3 s RTO after a SYN
    timeout) handled here; the caller may pass ``initial_s=3.0`` for that case.

    Attributes (read them; change them only through the methods):
        srtt_s: smoothed RTT, ``None`` before the first sample.
        rttvar_s: RTT variation, ``None`` before the first sample.
        rto_s: current RTO including any backoff, always within ``[min_s, max_s]``.
        backoffs: consecutive timeouts since the last valid sample.
    """

    __slots__ = (
        "backoffs",
        "granularity_s",
        "initial_s",
        "max_s",
        "min_s",
        "rto_s",
        "rttvar_s",
        "srtt_s",
    )

    def __init__(
        self,
        initial_s: float = 1.0,
        min_s: float = 0.2,
        max_s: float = 60.0,
        granularity_s: float = 0.001,
    ) -> None:
        if not (0.0 < min_s <= max_s < math.inf):
            raise ValueError(f"need 0 < min_s <= max_s < inf, got min_s={min_s} max_s={max_s}")
        if not (0.0 < initial_s < math.inf):
            raise ValueError(f"initial_s must be positive and finite, got {initial_s}")
        if not (0.0 <= granularity_s < math.inf):
            raise ValueError(f"granularity_s must be >= 0 and finite, got {granularity_s}")
        self.initial_s: float = initial_s
        self.min_s: float = min_s
        self.max_s: float = max_s
        self.granularity_s: float = granularity_s
        self.srtt_s: float | None = None
        self.rttvar_s: float | None = None
        # (2.1) Until a sample is taken, RTO = initial value (clamped like every RTO).
        self.rto_s: float = min(max(initial_s, min_s), max_s)
        self.backoffs: int = 0

    def on_rtt_sample(self, rtt_s: float) -> None:
        """Fold in one valid (Karn-clean) RTT measurement, in seconds.

        Zero is accepted (virtual-time links can have no delay); negative, NaN or
        infinite samples raise ``ValueError`` and leave the state unchanged.
        """
        if not (0.0 <= rtt_s < math.inf):
            raise ValueError(f"RTT sample must be finite and >= 0, got {rtt_s}")
        srtt = self.srtt_s
        rttvar = self.rttvar_s
        if srtt is None or rttvar is None:
            # (2.2) First measurement R: SRTT <- R, RTTVAR <- R/2.
            srtt = rtt_s
            rttvar = rtt_s / 2.0
        else:
            # (2.3) Later measurement R'. RTTVAR is updated first, with the SRTT of
            # *before* this sample, exactly as the RFC orders the two assignments:
            #   RTTVAR <- (1 - beta) * RTTVAR + beta * |SRTT - R'|
            #   SRTT   <- (1 - alpha) * SRTT + alpha * R'
            rttvar = (1.0 - _BETA) * rttvar + _BETA * abs(srtt - rtt_s)
            srtt = (1.0 - _ALPHA) * srtt + _ALPHA * rtt_s
        self.srtt_s = srtt
        self.rttvar_s = rttvar
        # (2.2)/(2.3) RTO <- SRTT + max(G, K*RTTVAR); (2.4) lower clamp; (2.5) upper clamp.
        rto = srtt + max(self.granularity_s, _K * rttvar)
        self.rto_s = min(max(rto, self.min_s), self.max_s)
        self.backoffs = 0

    def on_timeout(self) -> None:
        """The retransmission timer expired: (5.5) back off, ``rto_s = min(2*rto_s, max_s)``."""
        self.rto_s = min(2.0 * self.rto_s, self.max_s)
        self.backoffs += 1

    def snapshot(self) -> dict[str, object]:
        """Plain dict of every field, for the CLI and for tests."""
        return {
            "srtt_s": self.srtt_s,
            "rttvar_s": self.rttvar_s,
            "rto_s": self.rto_s,
            "backoffs": self.backoffs,
            "initial_s": self.initial_s,
            "min_s": self.min_s,
            "max_s": self.max_s,
            "granularity_s": self.granularity_s,
        }

    def __repr__(self) -> str:
        return (
            f"RtoCalculator(rto_s={self.rto_s!r}, srtt_s={self.srtt_s!r}, "
            f"rttvar_s={self.rttvar_s!r}, backoffs={self.backoffs})"
        )
