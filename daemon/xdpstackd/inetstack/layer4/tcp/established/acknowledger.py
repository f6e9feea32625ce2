"""The acknowledger duty: pure ACKs, delayed or immediate (the seed's ``acknowledger``),
plus the two probes that are ACK-shaped: zero-window probes and keep-alives carry
SEG.SEQ = SND.UNA - 1 so that the peer must answer with its current ACK and window."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xdpstackd.inetstack.layer4.tcp.header import ACK

if TYPE_CHECKING:
    from xdpstackd.inetstack.layer4.tcp.established.established_socket import (
        EstablishedSocket,
    )


def send_ack(sock: EstablishedSocket) -> None:
    """<SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>, where SND.NXT is the RFC's, never rewound:
    after an RTO our go-back pointer sits below what the peer has already received, and
    an ACK carrying it would be unacceptable there (so use SND.MAX)."""
    sock.emit(ACK, sock.cb.rod.snd_max, b"")


def send_probe(sock: EstablishedSocket) -> None:
    sock.emit(ACK, sock.cb.rod.snd_una + -1, b"")
    sock.counters["tcp_probes_sent"] += 1
