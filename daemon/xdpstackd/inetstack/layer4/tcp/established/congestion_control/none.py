"""No congestion control at all (Demikernel's ``None``).

Why it exists: on a dedicated link (a lab, a back-to-back benchmark, a veth pair) the
congestion window is pure overhead, and comparing against it shows what congestion
control costs. The sender is then limited only by the peer's receive window. Never the
default: on a shared path it is unfair and can collapse a bottleneck.
"""

from __future__ import annotations

#: The "unlimited" window, bytes: 2**31 - 1, Linux's TCP_INFINITE_SSTHRESH. It is larger
#: than any receive window TCP can advertise (65535 << 14 < 2**30), so min(cwnd, rwnd)
#: always picks the receive window, and it stays an ordinary int for the CLI and JSON.
UNLIMITED_WINDOW_BYTES: int = 0x7FFFFFFF


class NoCongestionControl:
    """``cwnd`` and ``ssthresh`` are :data:`UNLIMITED_WINDOW_BYTES` and never change.

    ACKs, congestion events and timeouts are accepted and ignored (the caller's NewReno
    recovery and retransmission timer still run; only the window does not move).
    """

    __slots__ = ("cwnd", "mss", "ssthresh")

    name: str = "none"

    def __init__(self, mss: int, initial_cwnd_segments: int = 10) -> None:
        if mss <= 0:
            raise ValueError(f"mss must be positive, got {mss}")
        if initial_cwnd_segments <= 0:
            raise ValueError(f"initial_cwnd_segments must be positive, got {initial_cwnd_segments}")
        self.mss: int = mss
        # initial_cwnd_segments is accepted for a uniform factory signature and ignored.
        self.cwnd: int = UNLIMITED_WINDOW_BYTES
        self.ssthresh: int = UNLIMITED_WINDOW_BYTES

    def on_ack(self, acked_bytes: int, flight_size: int, now: float, rtt_s: float | None) -> None:
        """Nothing grows: the window is already unlimited."""

    def on_congestion_event(self, flight_size: int, now: float) -> None:
        """Nothing shrinks: no congestion control."""

    def on_rto(self, flight_size: int, now: float) -> None:
        """Nothing shrinks: no congestion control (retransmission is the caller's job)."""

    def snapshot(self) -> dict[str, object]:
        """Plain dict of every field for the CLI."""
        return {"name": self.name, "mss": self.mss, "cwnd": self.cwnd, "ssthresh": self.ssthresh}

    def __repr__(self) -> str:
        return f"NoCongestionControl(mss={self.mss})"
