"""The sender duty: move bytes from the send buffer onto the wire while the windows
allow (the seed's ``background_sender``, as a function the dispatcher calls).

Per segment it honours min(SND.WND, cwnd), the MSS, Nagle's algorithm (RFC 896,
RFC 1122 4.2.3.4) unless TCP_NODELAY, and sender silly-window avoidance (RFC 9293
3.8.6.2.1); a FIN rides on the last data segment or goes alone. When the peer's window
is closed with data waiting and nothing in flight, it arms the persist timer.

A burst of data segments goes straight to the connection's flow: nothing is received
while it is sent, so the ACK number and the window field (``advertise``, whose result
depends only on RCV.NXT, the receive queue and the edge it moved itself) are the same
for every segment of the burst and are worked out once, at its first segment; so are
the windows, the congestion window and the RTO, which only ACKs and timers change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xdpstackd.inetstack.layer4.tcp.header import ACK, FIN, PSH
from xdpstackd.inetstack.layer4.tcp.sequence_number import SEQ_HALF, SEQ_MASK, SEQ_SPACE

if TYPE_CHECKING:
    from xdpstackd.inetstack.layer4.tcp.established.established_socket import (
        EstablishedSocket,
    )


def send_pending(sock: EstablishedSocket, now: float) -> int:
    """Transmit what the windows allow; return the number of segments sent."""
    cb = sock.cb
    rod, fc, cc, cm = cb.rod, cb.fc, cb.cc, cb.cm
    mss = fc.mss
    send = sock.flow.send
    window = -1  # the burst's window field, once a segment needs it
    ack = rod.rcv_nxt.value
    wnd = fc.snd_wnd
    cwnd = cc.cwnd
    limit = wnd if wnd < cwnd else cwnd
    rto_s = cc.rto_s
    una = rod.snd_una.value
    burst = 0  # data segments sent through the flow
    sent = 0
    while True:
        flight = (rod.snd_nxt.value - una) & SEQ_MASK  # rod.snd_nxt.distance(snd_una)
        if flight > SEQ_HALF:
            flight -= SEQ_SPACE
        buffered = len(rod.send_buf)
        avail = buffered - flight  # bytes not yet (re)sent; negative once the FIN is out
        if avail > 0:
            usable = limit - flight
            n = avail if avail < mss else mss
            if usable < n:
                n = usable
            if n <= 0:
                break
            if n < mss and rod.snd_max.distance(rod.snd_nxt) <= 0:
                # a short segment of new data: Nagle and silly-window avoidance
                if n < avail:
                    if flight > 0 and n < fc.max_snd_wnd // 2:
                        break
                elif flight > 0 and not cm.nodelay:
                    break
            last = n == avail
            flags = ACK
            # the FIN rides along only if it fits the peer's window too (Linux's
            # tcp_snd_wnd_test counts it); otherwise it follows on its own
            fin = last and rod.fin_queued and n < wnd - flight
            if last:
                flags |= PSH | (FIN if fin else 0)
            seq = rod.snd_nxt
            if seq.value != rod.snd_max.value and seq < rod.snd_max:
                sock.counters["tcp_retransmits"] += 1  # going back over lost data after an RTO
            if window < 0:
                window = fc.advertise(rod)
            send(flags, seq.value, ack, window, memoryview(rod.send_buf)[flight : flight + n])
            rod.on_transmit(n, fin, now, rto_s)
            burst += 1
        elif avail == 0 and rod.fin_queued and not rod.fin_acked:
            if fc.snd_wnd <= flight:
                break  # a FIN needs window too; the persist timer probes meanwhile
            if rod.snd_nxt < rod.snd_max:
                sock.counters["tcp_retransmits"] += 1
            sock.emit(ACK | FIN, rod.snd_nxt, b"")
            rod.on_transmit(0, True, now, rto_s)
            sent += 1
            break
        else:
            break
    if burst:
        sock.on_burst_sent(burst)
        sent += burst
    # persist timer: window closed, data or FIN waiting, nothing in flight to clock an ACK
    waiting = len(rod.send_buf) > 0 or (rod.fin_queued and rod.fin_seq is None)
    if rod.snd_nxt == rod.snd_una and waiting and fc.snd_wnd == 0:
        fc.arm_probe(now, cc)
    elif fc.probe_deadline is not None and fc.snd_wnd > 0:
        fc.disarm_probe()
    return sent
