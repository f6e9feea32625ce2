"""The retransmitter duty: resend the segment at SND.UNA (the seed's
``background_retransmitter``). Timeouts go back to SND.UNA through ROD and the sender;
this function serves fast retransmit and NewReno partial ACKs (RFC 6582 3.2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xdpstackd.inetstack.layer4.tcp.header import ACK, FIN, PSH

if TYPE_CHECKING:
    from xdpstackd.inetstack.layer4.tcp.established.established_socket import (
        EstablishedSocket,
    )


def retransmit_head(sock: EstablishedSocket, now: float) -> None:
    rod = sock.cb.rod
    mss = sock.cb.fc.mss
    buffered = len(rod.send_buf)
    n = buffered if buffered < mss else mss
    fin = rod.fin_seq is not None and n == buffered and not rod.fin_acked
    if n == 0 and not fin:
        return
    flags = ACK | (PSH if n == buffered else 0) | (FIN if fin else 0)
    sock.emit(flags, rod.snd_una, memoryview(rod.send_buf)[:n])
    rod.on_retransmit_head()
    sock.counters["tcp_retransmits"] += 1
