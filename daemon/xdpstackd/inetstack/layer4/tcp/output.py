"""Where the TCP layer's segments go: the seam between ``TcpPeer`` and what lies below.

Why a seam: a segment built here and then wrapped by IPv4 and Ethernet is copied once
per layer, and that copying was a fifth of the daemon's time when it sends in bulk. An
established connection therefore asks its output for a *flow* once, and hands each
segment to the flow as fields plus a view of the payload; the flow builds whatever its
owner transmits in one go. Two outputs exist:

- ``SegmentOutput`` (a bare ``TcpPeer``: tests, the drill runner): TCP segments, as
  ``(src_ip, dst_ip, segment)`` tuples in the peer's outbox, drained by ``poll_transmit``.
- ``InetStack``'s frame output: whole Ethernet frames, built once, straight into the
  stack's transmit list (see ``stack.py``).

Segments that are not on an established connection's hot path (SYN, SYN-ACK, RSTs for
closed ports, handshake ACKs) are built with ``build_tcp`` and handed over with ``raw``.
"""

from __future__ import annotations

from typing import Protocol

from xdpstackd.inetstack.layer4.tcp.header import build_tcp_segment

Outbox = list[tuple[int, int, bytes]]


class Flow(Protocol):
    """One connection's way out; its 4-tuple is fixed when it is made."""

    def send(
        self, flags: int, seq: int, ack: int, window: int, payload: bytes | memoryview
    ) -> None:
        """Send one segment without options (``payload`` may be a view of the send
        buffer: it is copied before this returns)."""


class TcpOutput(Protocol):
    def flow(self, local: tuple[int, int], remote: tuple[int, int]) -> Flow: ...

    def raw(self, src_ip: int, dst_ip: int, segment: bytes) -> None:
        """Send a segment already built (with its checksum)."""


class SegmentOutput:
    """TCP segments into ``outbox``: what a ``TcpPeer`` on its own produces."""

    __slots__ = ("outbox",)

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def flow(self, local: tuple[int, int], remote: tuple[int, int]) -> SegmentFlow:
        return SegmentFlow(self.outbox, local, remote)

    def raw(self, src_ip: int, dst_ip: int, segment: bytes) -> None:
        self.outbox.append((src_ip, dst_ip, segment))


class SegmentFlow:
    __slots__ = ("dst_ip", "dst_port", "outbox", "src_ip", "src_port")

    def __init__(self, outbox: Outbox, local: tuple[int, int], remote: tuple[int, int]) -> None:
        self.outbox = outbox
        self.src_ip, self.src_port = local
        self.dst_ip, self.dst_port = remote

    def send(
        self, flags: int, seq: int, ack: int, window: int, payload: bytes | memoryview
    ) -> None:
        src_ip, dst_ip = self.src_ip, self.dst_ip
        segment = build_tcp_segment(
            self.src_port, self.dst_port, seq, ack, flags, window, payload, src_ip, dst_ip
        )
        self.outbox.append((src_ip, dst_ip, segment))
