"""CUBIC congestion control, RFC 9438 (the default algorithm, as in Linux).

Why CUBIC: its window growth is a function of the time since the last congestion event,
not of ACK arrivals, so it fills long fat pipes that Reno's one-segment-per-RTT cannot,
while its Reno-friendly region (section 4.3) keeps it no less aggressive than Reno on
short, small paths. It is what the Linux peer in our integration tests runs too.

Units. The RFC reasons in segments and seconds; the stack speaks bytes. Everything here
is kept in bytes (floats internally, ``cwnd``/``ssthresh`` exposed as ``int``), and the
cubic function is evaluated as ``C*mss*(t-K)^3 + W_max`` -- the RFC's Figure 1 multiplied
through by the MSS -- so that ``K`` (seconds) is exactly the RFC's Figure 2 in segments.

Choices the RFC leaves open, and the one made here:

* Multiplicative decrease uses ``cwnd``, not ``flight_size`` (section 4.6 allows it when
  "other measures" stop ``cwnd`` growing while the sender does not fill it: on_ack's
  application-limited rule is that measure).
* Slow start is RFC 5681 slow start with RFC 3465 Appropriate Byte Counting: each ACK
  grows ``cwnd`` by the bytes it acknowledges, with no per-ACK limit L (as Linux's
  ``tcp_slow_start``), so ``cwnd`` doubles per RTT whatever the receiver's ACK ratio: a
  receiver that ACKs once per receive batch (Linux after GRO, xdpstack itself) sends
  stretch ACKs of 10-40 segments, which L = 2*MSS would turn into near-linear growth. In
  the slow start that follows an RTO, L = 1*MSS (RFC 3465 section 2.3: cumulative ACKs
  for data that arrived before the loss must not release a burst). Slow start stops at
  ``ssthresh``; what is left of that ACK's credit is spent in congestion avoidance.
* Application-limited (RFC 7661 spirit, RFC 9438 section 5.8): the sender filled
  ``cwnd`` iff ``flight_size + mss > cwnd`` (no room for another full segment was left).
  Otherwise ``cwnd`` does not grow, and the time until the next window-limited ACK is
  cut out of ``t`` (section 5.8: "t in Figure 1 [must] not include application-limited
  periods"), by moving ``epoch_start`` forward by that gap.
* ``RTT`` in ``W_cubic(t + RTT)`` is "the smoothed round-trip time" (section 4.2): the
  per-ACK samples are smoothed here with RFC 6298's gain of 1/8. Before any sample the
  RTT term is 0.
* Fast convergence (section 4.7) is on by default (as in Linux); pass
  ``fast_convergence=False`` for a single flow on a dedicated path, as the RFC advises.
* Repeated timeouts: after an RTO, another RTO before any new data is acknowledged keeps
  ``ssthresh`` (RFC 5681 section 3.1: ssthresh is held constant while the same segment is
  retransmitted by the timer again); ``cwnd`` stays 1 MSS.
* In the Reno-friendly region ``cwnd`` is set to ``W_est`` only if that is larger: an ACK
  never shrinks ``cwnd``.
"""

from __future__ import annotations

import math

#: Section 4.2 / 5.1: C SHOULD be 0.4 (segments / second^3).
C: float = 0.4
#: Section 4.6: beta_cubic SHOULD be 0.7. Kept as 7/10 for exact integer ssthresh.
BETA_CUBIC: float = 0.7
_BETA_NUM = 7
_BETA_DEN = 10
#: Section 4.3, Figure 5: alpha_cubic = 3 * (1 - beta_cubic) / (1 + beta_cubic) (~0.529).
ALPHA_CUBIC: float = 3.0 * (1.0 - BETA_CUBIC) / (1.0 + BETA_CUBIC)
#: ssthresh before the first congestion event: "infinite", Linux's TCP_INFINITE_SSTHRESH.
INFINITE_SSTHRESH: int = 0x7FFFFFFF
#: RFC 3465's L outside the slow start after an RTO: none (every acked byte counts).
SS_NO_LIMIT: int = 1 << 62
#: Gain of the RTT smoothing for the t + RTT target (RFC 6298's alpha).
_SRTT_GAIN = 0.125


class Cubic:
    """RFC 9438 CUBIC; see the module docstring for the choices made.

    Public state (read it; the CC component may also assign ``cwnd``/``ssthresh``):

    * ``cwnd``, ``ssthresh``: bytes, ``int``.
    * ``w_max``: bytes, the window before the last reduction (after fast convergence);
      0.0 before the first congestion event.
    * ``k``: seconds, Figure 2, computed at the start of each congestion-avoidance epoch.
    * ``epoch_start``: the ``now`` of the first ACK in congestion avoidance after the last
      reduction (shifted forward past application-limited gaps), ``None`` between a
      reduction and that ACK.
    * ``cwnd_epoch``, ``w_est``, ``cwnd_prior``: bytes, as named in the RFC.
    * ``srtt_s``: smoothed RTT used for the target, ``None`` before any sample.
    """

    __slots__ = (
        "_after_rto",
        "_app_limited_since",
        "_cwnd_frac",
        "_rto_hold",
        "_ss_limit",
        "cwnd",
        "cwnd_epoch",
        "cwnd_prior",
        "epoch_start",
        "fast_convergence",
        "k",
        "mss",
        "srtt_s",
        "ssthresh",
        "w_est",
        "w_max",
    )

    name: str = "cubic"

    def __init__(
        self, mss: int, initial_cwnd_segments: int = 10, *, fast_convergence: bool = True
    ) -> None:
        if mss <= 0:
            raise ValueError(f"mss must be positive, got {mss}")
        if initial_cwnd_segments <= 0:
            raise ValueError(f"initial_cwnd_segments must be positive, got {initial_cwnd_segments}")
        self.mss: int = mss
        self.cwnd: int = initial_cwnd_segments * mss
        self.ssthresh: int = INFINITE_SSTHRESH
        self.fast_convergence: bool = fast_convergence
        self.w_max: float = 0.0
        self.k: float = 0.0
        self.epoch_start: float | None = None
        self.cwnd_epoch: float = 0.0
        self.w_est: float = 0.0
        self.cwnd_prior: float = 0.0
        self.srtt_s: float | None = None
        # Sub-byte remainder of congestion-avoidance growth, so that many tiny
        # increments add up exactly (the int cwnd alone would round them all away).
        self._cwnd_frac: float = 0.0
        # RFC 3465 ABC limit L for slow start: none, 1*MSS after an RTO.
        self._ss_limit: int = SS_NO_LIMIT
        # RFC 9438 4.8: the next congestion-avoidance epoch is the first after a timeout.
        self._after_rto: bool = False
        # RFC 5681 3.1: a further RTO before new data is acked keeps ssthresh.
        self._rto_hold: bool = False
        # Start of the current application-limited gap in an epoch (section 5.8).
        self._app_limited_since: float | None = None

    # ------------------------------------------------------------------ per-ACK path

    def on_ack(self, acked_bytes: int, flight_size: int, now: float, rtt_s: float | None) -> None:
        """New data acked outside loss recovery: slow start or CUBIC congestion avoidance."""
        if rtt_s is not None:
            srtt = self.srtt_s
            self.srtt_s = rtt_s if srtt is None else srtt + _SRTT_GAIN * (rtt_s - srtt)
        if acked_bytes <= 0:
            return
        self._rto_hold = False
        mss = self.mss
        cwnd = self.cwnd
        if flight_size + mss <= cwnd:
            # Application-limited: the sender left room for a full segment unused, so
            # this ACK says nothing about whether a larger window would be safe.
            if self.epoch_start is not None and self._app_limited_since is None:
                self._app_limited_since = now
            return
        if self._app_limited_since is not None:
            # Section 5.8: cut the application-limited gap out of t.
            if self.epoch_start is not None:
                self.epoch_start += now - self._app_limited_since
            self._app_limited_since = None

        ssthresh = self.ssthresh
        if cwnd < ssthresh:
            # Slow start (RFC 5681 3.1 with RFC 3465 ABC): cwnd += min(acked, L).
            limit = self._ss_limit
            inc = acked_bytes if acked_bytes < limit else limit
            room = ssthresh - cwnd
            if inc < room:
                self.cwnd = cwnd + inc
                return
            # Reached ssthresh: the rest of this ACK's credit goes to congestion avoidance.
            self.cwnd = ssthresh
            self._cwnd_frac = 0.0
            self._ss_limit = SS_NO_LIMIT
            acked_bytes = inc - room
            if acked_bytes <= 0:
                return
        self._congestion_avoidance(acked_bytes, now)

    def _congestion_avoidance(self, acked_bytes: int, now: float) -> None:
        mss = float(self.mss)
        cwnd = self.cwnd + self._cwnd_frac
        epoch_start = self.epoch_start
        if epoch_start is None:
            # First ACK of a congestion-avoidance stage: start the epoch.
            epoch_start = self.epoch_start = now
            self.cwnd_epoch = cwnd
            # 4.3: W_est = cwnd_epoch at the start of the stage (4.8: likewise after RTO).
            self.w_est = cwnd
            if self._after_rto or self.w_max <= cwnd:
                # 4.8: first stage after a timeout: K = 0, W_max = cwnd_epoch.
                # 4.2: "if cwnd_epoch is greater than W_max, K is set to 0" (and the
                # plateau is where we are, as in Linux), which also covers W_max unset.
                self.w_max = cwnd
                self.k = 0.0
            else:
                # Figure 2: K = cbrt((W_max - cwnd_epoch) / C), in segments.
                self.k = math.cbrt((self.w_max - cwnd) / (mss * C))
            self._after_rto = False
        t = now - epoch_start
        if t < 0.0:
            t = 0.0

        # Figure 4: W_est = W_est + alpha_cubic * segments_acked / cwnd (segments). In
        # bytes: alpha * (acked/mss) / (cwnd/mss) segments = alpha * acked * mss / cwnd.
        # 4.3: alpha_cubic becomes 1 once W_est >= cwnd_prior (Reno's AIMD(1, 0.5)).
        w_est = self.w_est
        alpha = 1.0 if w_est >= self.cwnd_prior else ALPHA_CUBIC
        w_est += alpha * acked_bytes * mss / cwnd
        self.w_est = w_est

        c_bytes = C * mss
        w_max = self.w_max
        d = t - self.k
        w_cubic_t = c_bytes * d * d * d + w_max  # Figure 1: C*(t-K)^3 + W_max
        if w_cubic_t < w_est:
            # 4.3 Reno-friendly region: cwnd = W_est (an ACK never shrinks cwnd).
            new_cwnd = w_est if w_est > cwnd else cwnd
        else:
            # 4.2 target = W_cubic(t + RTT), clamped to [cwnd, 1.5*cwnd]; then
            # 4.4 (concave, cwnd < W_max) / 4.5 (convex): cwnd += (target - cwnd)/cwnd
            # per segment acked, i.e. (target - cwnd) * acked / cwnd bytes.
            srtt = self.srtt_s
            d = t + (srtt if srtt is not None else 0.0) - self.k
            target = c_bytes * d * d * d + w_max
            upper = 1.5 * cwnd
            if target > upper:
                target = upper
            if target > cwnd:
                new_cwnd = cwnd + (target - cwnd) * acked_bytes / cwnd
            else:
                new_cwnd = cwnd
        whole = int(new_cwnd)
        self.cwnd = whole
        self._cwnd_frac = new_cwnd - whole

    # ------------------------------------------------------------------ reductions

    def _reduced_ssthresh(self, cwnd: int) -> int:
        # 4.6: ssthresh = cwnd * beta_cubic; ssthresh = max(ssthresh, 2) (segments).
        ssthresh = cwnd * _BETA_NUM // _BETA_DEN
        floor = 2 * self.mss
        return ssthresh if ssthresh > floor else floor

    def _end_epoch(self) -> None:
        self._cwnd_frac = 0.0
        self.epoch_start = None
        self._app_limited_since = None

    def on_congestion_event(self, flight_size: int, now: float) -> None:
        """Fast retransmit: 4.7 fast convergence, then 4.6 multiplicative decrease."""
        cwnd = self.cwnd
        # 4.6: cwnd_prior = cwnd (the window at the time ssthresh is set, for 4.3).
        self.cwnd_prior = float(cwnd)
        # 4.7, before the reduction: W_max = cwnd * (1 + beta_cubic) / 2 if cwnd < W_max
        # (the saturation point is falling: release bandwidth), else W_max = cwnd.
        if self.fast_convergence and cwnd < self.w_max:
            self.w_max = cwnd * (1.0 + BETA_CUBIC) / 2.0
        else:
            self.w_max = float(cwnd)
        ssthresh = self._reduced_ssthresh(cwnd)
        self.ssthresh = ssthresh
        self.cwnd = ssthresh  # 4.6: cwnd = ssthresh (NewReno inflation is the caller's)
        self._end_epoch()
        self._after_rto = False
        self._rto_hold = False
        self._ss_limit = SS_NO_LIMIT

    def on_rto(self, flight_size: int, now: float) -> None:
        """Timeout (4.8): ssthresh as in 4.6, cwnd = 1 MSS (RFC 5681's loss window)."""
        if not self._rto_hold:
            cwnd = self.cwnd
            self.cwnd_prior = float(cwnd)
            self.ssthresh = self._reduced_ssthresh(cwnd)
            self._rto_hold = True
        self.cwnd = self.mss
        self._end_epoch()
        self._after_rto = True
        self._ss_limit = self.mss

    # ------------------------------------------------------------------ inspection

    def snapshot(self) -> dict[str, object]:
        """Plain dict of every field for the CLI. Sizes in bytes, ``k`` in seconds."""
        return {
            "name": self.name,
            "mss": self.mss,
            "cwnd": self.cwnd,
            "ssthresh": self.ssthresh,
            "in_slow_start": self.cwnd < self.ssthresh,
            "w_max": self.w_max,
            "k": self.k,
            "epoch_start": self.epoch_start,
            "cwnd_epoch": self.cwnd_epoch,
            "w_est": self.w_est,
            "cwnd_prior": self.cwnd_prior,
            "srtt_s": self.srtt_s,
            "fast_convergence": self.fast_convergence,
            "after_rto": self._after_rto,
            "app_limited_since": self._app_limited_since,
        }

    def __repr__(self) -> str:
        return (
            f"Cubic(mss={self.mss}, cwnd={self.cwnd}, ssthresh={self.ssthresh}, "
            f"w_max={self.w_max:.1f}, k={self.k:.3f}, epoch_start={self.epoch_start!r})"
        )
