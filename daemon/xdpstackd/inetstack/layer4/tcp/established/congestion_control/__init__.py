"""Pluggable congestion-control algorithms (the window arithmetic only).

Why the split: the congestion-control *component* of a connection (``ctrlblk``'s CC) owns
the things every algorithm shares -- NewReno fast recovery and its window inflation,
duplicate-ACK counting, Karn's rule, the RTO calculator. What differs between algorithms
is only how ``cwnd`` and ``ssthresh`` move on an ACK, on a congestion event and on a
timeout, and that is all an algorithm here does. The component calls:

* :meth:`CongestionAlgorithm.on_ack` for new data cumulatively acknowledged outside
  loss recovery,
* :meth:`CongestionAlgorithm.on_congestion_event` on fast retransmit (3 duplicate ACKs),
* :meth:`CongestionAlgorithm.on_rto` when the retransmission timer expires,

and reads ``cwnd`` / ``ssthresh`` (bytes) back. Algorithms are sans-IO: ``now`` is a
parameter, they never read a clock, never log, never allocate on the per-ACK path.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .cubic import INFINITE_SSTHRESH, Cubic
from .none import UNLIMITED_WINDOW_BYTES, NoCongestionControl

__all__ = [
    "ALGORITHMS",
    "INFINITE_SSTHRESH",
    "UNLIMITED_WINDOW_BYTES",
    "CongestionAlgorithm",
    "Cubic",
    "NoCongestionControl",
    "make_algorithm",
]


@runtime_checkable
class CongestionAlgorithm(Protocol):
    """What the congestion-control component needs from an algorithm. Sizes in bytes."""

    name: str
    cwnd: int  # congestion window, bytes
    ssthresh: int  # slow-start threshold, bytes (INFINITE_SSTHRESH until the first loss)

    def on_ack(self, acked_bytes: int, flight_size: int, now: float, rtt_s: float | None) -> None:
        """New data cumulatively acked while NOT in loss recovery: grow ``cwnd``.

        Slow start below ``ssthresh``, the algorithm's congestion avoidance otherwise.
        ``flight_size`` is the bytes outstanding *before* this ACK; ``rtt_s`` the RTT
        sample taken for this ACK if one was (Karn-valid), else ``None``. An
        application-limited sender (``flight_size + mss <= cwnd``: room for another
        full segment was left unused) does not grow ``cwnd`` (RFC 7661 / RFC 9438 5.8).
        """
        ...

    def on_congestion_event(self, flight_size: int, now: float) -> None:
        """Loss detected by 3 duplicate ACKs: multiplicative decrease.

        Sets ``ssthresh`` and ``cwnd = ssthresh``; the caller's NewReno recovery adds its
        own inflation on top without telling the algorithm.
        """
        ...

    def on_rto(self, flight_size: int, now: float) -> None:
        """Retransmission timeout: ``ssthresh`` reduced, ``cwnd`` = 1 MSS (loss window)."""
        ...

    def snapshot(self) -> dict[str, object]:
        """Plain dict of every field for the CLI (``name``, ``cwnd``, ``ssthresh``, ...)."""
        ...


#: Names accepted by :func:`make_algorithm` (and by ``TcpConfig.congestion_control``).
ALGORITHMS: tuple[str, ...] = ("cubic", "none")


def make_algorithm(name: str, mss: int, initial_cwnd_segments: int = 10) -> CongestionAlgorithm:
    """Build the algorithm called ``name`` ("cubic" or "none") for a connection.

    ``mss`` is the sender MSS in bytes; the initial window is
    ``initial_cwnd_segments * mss`` (RFC 6928 IW10 by default). Raises ``ValueError``
    naming the unknown algorithm otherwise.
    """
    if name == "cubic":
        return Cubic(mss, initial_cwnd_segments)
    if name == "none":
        return NoCongestionControl(mss, initial_cwnd_segments)
    raise ValueError(
        f"unknown congestion control algorithm {name!r} (known: {', '.join(ALGORITHMS)})"
    )
