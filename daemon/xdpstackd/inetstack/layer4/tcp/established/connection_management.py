"""Connection management (CM): the RFC 9293 state machine of an established
connection, its endpoints, per-socket options, TIME_WAIT and keep-alive timers.

It owns ``state`` and moves it only in response to events the dispatcher hands it
(close requested, FIN received, our FIN acknowledged, RST, timers). It never looks at
sequence numbers: whether our FIN is acked is ROD's knowledge, passed in as an event.
"""

from __future__ import annotations

import enum

from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer4.tcp.established import actions as A


class State(enum.Enum):
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN_WAIT_1"
    FIN_WAIT_2 = "FIN_WAIT_2"
    CLOSING = "CLOSING"
    TIME_WAIT = "TIME_WAIT"
    CLOSE_WAIT = "CLOSE_WAIT"
    LAST_ACK = "LAST_ACK"
    CLOSED = "CLOSED"

    # Members are singletons: hash by identity (a C slot) instead of Enum's Python-level
    # hash of the name, which the per-segment ``state in _RECEIVING`` test paid for.
    __hash__ = object.__hash__


# States in which the peer may still send us data (RFC 9293 3.10.7.4, seventh step).
_RECEIVING = frozenset({State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2})
# States in which the application may still push data.
_SENDING = frozenset({State.ESTABLISHED, State.CLOSE_WAIT})


class ConnectionManagement:
    __slots__ = (
        "error",
        "fin_wait_2_deadline",
        "fin_wait_2_timeout_s",
        "keepalive",
        "keepalive_deadline",
        "keepalive_idle_s",
        "keepalive_interval_s",
        "keepalive_probes",
        "keepalive_probes_sent",
        "last_heard",
        "local",
        "msl_s",
        "nodelay",
        "orphaned",
        "remote",
        "state",
        "time_wait_deadline",
    )

    def __init__(
        self,
        local: tuple[int, int],
        remote: tuple[int, int],
        config: TcpConfig,
        *,
        nodelay: bool,
        keepalive: bool,
        now: float,
    ) -> None:
        self.state = State.ESTABLISHED
        self.local = local
        self.remote = remote
        self.nodelay = nodelay
        self.keepalive = keepalive
        self.keepalive_idle_s = config.keepalive_idle_s
        self.keepalive_interval_s = config.keepalive_interval_s
        self.keepalive_probes = config.keepalive_probes
        self.keepalive_probes_sent = 0
        self.last_heard = now  # when the peer last sent an acceptable segment
        self.keepalive_deadline: float | None = now + self.keepalive_idle_s if keepalive else None
        self.msl_s = config.msl_s
        self.fin_wait_2_timeout_s = config.fin_wait_2_timeout_s
        self.time_wait_deadline: float | None = None
        self.fin_wait_2_deadline: float | None = None
        self.orphaned = False  # the application closed its descriptor
        self.error = 0  # errno the connection died with (ECONNRESET, ETIMEDOUT, ...)

    # -- read-only facts the dispatcher looks at -----------------------------------------
    @property
    def receiving(self) -> bool:
        return self.state in _RECEIVING

    @property
    def sending_allowed(self) -> bool:
        return self.state in _SENDING

    # -- handlers ---------------------------------------------------------------------
    def on_close(self) -> int:
        """The application closed (or shut down) its sending side: RFC 9293 3.10.4."""
        if self.state is State.ESTABLISHED:
            self.state = State.FIN_WAIT_1
        elif self.state is State.CLOSE_WAIT:
            self.state = State.LAST_ACK
        else:
            return A.NONE
        return A.SEND

    def on_orphaned(self, now: float) -> None:
        """The descriptor is gone; an orphan in FIN_WAIT_2 must not live forever."""
        self.orphaned = True
        if self.state is State.FIN_WAIT_2:
            self.fin_wait_2_deadline = now + self.fin_wait_2_timeout_s

    def on_segment_received(self, now: float) -> None:
        """Any acceptable segment proves the peer alive: restart the keep-alive clock."""
        self.last_heard = now
        if self.keepalive:
            self.keepalive_probes_sent = 0
            self.keepalive_deadline = now + self.keepalive_idle_s

    def on_fin_acked(self, now: float) -> int:
        """ROD reports our FIN acknowledged."""
        if self.state is State.FIN_WAIT_1:
            self.state = State.FIN_WAIT_2
            if self.orphaned:
                self.fin_wait_2_deadline = now + self.fin_wait_2_timeout_s
        elif self.state is State.CLOSING:
            self._enter_time_wait(now)
        elif self.state is State.LAST_ACK:
            self.state = State.CLOSED
            return A.CLOSED
        return A.NONE

    def on_fin_received(self, now: float) -> int:
        """The peer's FIN became in-order (RFC 9293 3.10.7.4, eighth step)."""
        if self.state is State.ESTABLISHED:
            self.state = State.CLOSE_WAIT
        elif self.state is State.FIN_WAIT_1:
            self.state = State.CLOSING  # our FIN not yet acked: simultaneous close
        elif self.state is State.FIN_WAIT_2:
            self.fin_wait_2_deadline = None
            self._enter_time_wait(now)
        elif self.state is State.TIME_WAIT:
            self.time_wait_deadline = now + 2 * self.msl_s  # retransmitted FIN: restart
        return A.ACK_NOW | A.EOF_RECEIVED

    def on_reset(self, errno_: int) -> int:
        """RST accepted, or the connection aborted/timed out locally."""
        quiet = self.state in (State.CLOSING, State.LAST_ACK, State.TIME_WAIT)
        self.state = State.CLOSED
        self.error = 0 if quiet else errno_
        return A.CLOSED | (A.NONE if quiet else A.RESET)

    def on_timer(self, now: float) -> int:
        if self.time_wait_deadline is not None and now >= self.time_wait_deadline:
            self.time_wait_deadline = None
            self.state = State.CLOSED
            return A.CLOSED
        if self.fin_wait_2_deadline is not None and now >= self.fin_wait_2_deadline:
            self.fin_wait_2_deadline = None
            self.state = State.CLOSED
            return A.CLOSED
        if self.keepalive_deadline is not None and now >= self.keepalive_deadline:
            if self.keepalive_probes_sent >= self.keepalive_probes:
                self.keepalive_deadline = None
                return A.TIMED_OUT
            self.keepalive_probes_sent += 1
            self.keepalive_deadline = now + self.keepalive_interval_s
            return A.PROBE
        return A.NONE

    def set_keepalive(self, enabled: bool) -> None:
        """SO_KEEPALIVE: idle time counts from the last segment heard."""
        self.keepalive = enabled
        self.keepalive_probes_sent = 0
        self.keepalive_deadline = self.last_heard + self.keepalive_idle_s if enabled else None

    def _enter_time_wait(self, now: float) -> None:
        self.state = State.TIME_WAIT
        self.keepalive_deadline = None
        self.time_wait_deadline = now + 2 * self.msl_s

    def next_deadline(self) -> float | None:
        best = self.time_wait_deadline
        for d in (self.fin_wait_2_deadline, self.keepalive_deadline):
            if d is not None and (best is None or d < best):
                best = d
        return best

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "local": self.local,
            "remote": self.remote,
            "nodelay": self.nodelay,
            "keepalive": self.keepalive,
            "keepalive_probes_sent": self.keepalive_probes_sent,
            "time_wait_deadline": self.time_wait_deadline,
            "orphaned": self.orphaned,
            "error": self.error,
        }
