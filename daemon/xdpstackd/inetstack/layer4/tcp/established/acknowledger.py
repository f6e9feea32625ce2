"""The acknowledger duty: pure ACKs, delayed or immediate (the seed's ``acknowledger``),
plus the two probes that are ACK-shaped: zero-window probes and keep-alives carry
SEG.SEQ = SND.UNA - 1 so that the peer must answer with its current ACK and window."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xdpstackd.inetstack.layer4.tcp.header import ACK
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

if TYPE_CHECKING:
    from xdpstackd.inetstack.layer4.tcp.established.established_socket import (
        EstablishedSocket,
    )


def acceptable_seq(sock: EstablishedSocket) -> SeqNumber:
    """SEG.SEQ for a segment without data that the peer must accept.

    RFC 9293's <SEQ=SND.NXT>, with SND.NXT the highest ever sent (our go-back pointer
    after an RTO sits below what the peer already has); but never past the right edge of
    the peer's window, which a zero-window receiver would reject (Linux:
    ``tcp_acceptable_seq``)."""
    cb = sock.cb
    rod = cb.rod
    edge = rod.snd_una + cb.fc.snd_wnd
    return rod.snd_max if rod.snd_max <= edge else edge


def send_ack(sock: EstablishedSocket) -> None:
    sock.emit(ACK, acceptable_seq(sock), b"")


def send_probe(sock: EstablishedSocket) -> None:
    sock.emit(ACK, sock.cb.rod.snd_una + -1, b"")
    sock.counters["tcp_probes_sent"] += 1
