"""``TcpSocket``: one application descriptor and the phase its connection is in.

The phases are the seed's ``SocketState``: a socket starts Unbound, is Bound by
``bind``, becomes Listening (a ``PassiveSocket``) or Connecting (an
``ActiveOpenSocket``), then Established and Closing (an ``EstablishedSocket``). Each
phase is a different object, so no code ever asks "which state is this in?" of fields
that do not exist yet.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer4.tcp.established.connection_management import State

if TYPE_CHECKING:
    from xdpstackd.inetstack.layer4.tcp.active_open import ActiveOpenSocket
    from xdpstackd.inetstack.layer4.tcp.established.established_socket import (
        EstablishedSocket,
    )
    from xdpstackd.inetstack.layer4.tcp.passive_open import PassiveSocket


class SocketState(enum.Enum):
    UNBOUND = "UNBOUND"
    BOUND = "BOUND"
    LISTENING = "LISTENING"
    CONNECTING = "CONNECTING"
    ESTABLISHED = "ESTABLISHED"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"  # the connection ended (reset, refused, timed out, fully closed)


@dataclass(slots=True)
class SocketOptions:
    """Per-socket options, inherited by the connections a listener accepts."""

    nodelay: bool
    keepalive: bool
    send_buffer_bytes: int
    recv_buffer_bytes: int
    keepidle_s: float
    keepintvl_s: float
    keepcnt: int

    @classmethod
    def from_config(cls, config: TcpConfig) -> SocketOptions:
        return cls(
            nodelay=config.nodelay,
            keepalive=config.keepalive,
            send_buffer_bytes=config.send_buffer_bytes,
            recv_buffer_bytes=config.recv_buffer_bytes,
            keepidle_s=config.keepalive_idle_s,
            keepintvl_s=config.keepalive_interval_s,
            keepcnt=config.keepalive_probes,
        )

    def copy(self) -> SocketOptions:
        return SocketOptions(
            self.nodelay,
            self.keepalive,
            self.send_buffer_bytes,
            self.recv_buffer_bytes,
            self.keepidle_s,
            self.keepintvl_s,
            self.keepcnt,
        )


_OPEN_STATES = (State.ESTABLISHED, State.CLOSE_WAIT)


class TcpSocket:
    __slots__ = (
        "bound",
        "connection",
        "failed_errno",
        "listener",
        "local",
        "options",
        "owns_port",
        "qd",
    )

    def __init__(self, qd: int, options: SocketOptions) -> None:
        self.qd = qd
        self.options = options
        self.local: tuple[int, int] = (0, 0)
        self.bound = False
        self.owns_port = False  # this descriptor holds a reference on its local port
        self.listener: PassiveSocket | None = None
        self.connection: ActiveOpenSocket | EstablishedSocket | None = None
        self.failed_errno = 0  # a connect that failed leaves the socket CLOSED

    @property
    def state(self) -> SocketState:
        if self.listener is not None:
            return SocketState.LISTENING
        conn = self.connection
        if conn is None:
            if self.failed_errno:
                return SocketState.CLOSED
            return SocketState.BOUND if self.bound else SocketState.UNBOUND
        if conn.is_handshake:
            return SocketState.CONNECTING
        cm_state = conn.state
        if cm_state in _OPEN_STATES:
            return SocketState.ESTABLISHED
        if cm_state is State.CLOSED:
            return SocketState.CLOSED
        return SocketState.CLOSING
