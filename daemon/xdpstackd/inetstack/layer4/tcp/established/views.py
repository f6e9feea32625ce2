"""Read-only views a component gets of the others (the seed's Problem 1).

Each is a ``Protocol`` naming only the fields a reader may look at; the component
objects themselves satisfy them, so a view costs nothing at run time while a type
checker rejects a handler that tries to write another component's state.
"""

from __future__ import annotations

from typing import Protocol

from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber


class DeliveryView(Protocol):
    @property
    def snd_una(self) -> SeqNumber: ...
    @property
    def snd_nxt(self) -> SeqNumber: ...
    @property
    def snd_max(self) -> SeqNumber: ...
    @property
    def rcv_nxt(self) -> SeqNumber: ...
    @property
    def recv_queue_bytes(self) -> int: ...
    @property
    def bytes_in_flight(self) -> int: ...
    @property
    def fin_acked(self) -> bool: ...
    @property
    def last_acked_bytes(self) -> int: ...
    @property
    def last_rtt_sample_s(self) -> float | None: ...
    @property
    def retransmit_deadline(self) -> float | None: ...


class CongestionView(Protocol):
    @property
    def cwnd(self) -> int: ...
    @property
    def rto_s(self) -> float: ...
