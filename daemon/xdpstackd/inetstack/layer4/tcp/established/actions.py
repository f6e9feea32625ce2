"""What a component handler asks the dispatcher to do, as bit flags in one int.

Handlers never send or complete anything themselves (the seed's Problem 5, option 1):
they return an ``int`` made of these flags and ``EstablishedSocket`` carries them out in
one fixed order. Plain int constants rather than ``enum.IntFlag``: this is the per-packet
path and ``IntFlag`` arithmetic costs a Python-level call per operation.
"""

NONE = 0
SEND = 1 << 0  # the sender duty should try to transmit (new window, new data, FIN)
ACK_NOW = 1 << 1  # send a pure ACK now (unless a data segment carries it)
ACK_DELAYED = 1 << 2  # arm the delayed-ACK timer
DELIVER = 1 << 3  # new in-order bytes in the receive queue: complete pops
EOF_RECEIVED = 1 << 4  # peer's FIN consumed: pops see b""
RESET = 1 << 5  # connection reset by the peer
CLOSED = 1 << 6  # reached CLOSED: release the connection
RETRANSMIT = 1 << 7  # retransmit the segment at SND.UNA (fast retransmit, partial ACK)
SEND_RST = 1 << 8  # send a RST (abort, close with unread data)
SPACE = 1 << 9  # send buffer space freed: complete waiting pushes
CHALLENGE_ACK = 1 << 10  # RFC 5961 challenge ACK (rate-limited by the dispatcher)
TIMED_OUT = 1 << 11  # retransmissions/probes unanswered: ETIMEDOUT
PROBE = 1 << 12  # send a zero-window or keep-alive probe (SEG.SEQ = SND.UNA - 1)
GO_BACK = 1 << 13  # RTO: resend from SND.UNA
ACK_INVALID = 1 << 15  # answer an unacceptable segment with an ACK, rate-limited
DROP = 1 << 14  # the dispatcher stops processing this segment (internal to ctrlblk)
# the second full segment since our last ACK (RFC 1122 4.2.3.2): ACK now, or, inside a
# receive batch, once at the end of it (Linux ACKs a GRO-merged segment once)
ACK_DUE = 1 << 16

NAMES = {
    SEND: "SEND",
    ACK_NOW: "ACK_NOW",
    ACK_DELAYED: "ACK_DELAYED",
    DELIVER: "DELIVER",
    EOF_RECEIVED: "EOF_RECEIVED",
    RESET: "RESET",
    CLOSED: "CLOSED",
    RETRANSMIT: "RETRANSMIT",
    SEND_RST: "SEND_RST",
    SPACE: "SPACE",
    CHALLENGE_ACK: "CHALLENGE_ACK",
    TIMED_OUT: "TIMED_OUT",
    PROBE: "PROBE",
    GO_BACK: "GO_BACK",
    DROP: "DROP",
    ACK_INVALID: "ACK_INVALID",
    ACK_DUE: "ACK_DUE",
}


def describe(actions: int) -> str:
    """``"SEND|ACK_NOW"`` for debugging and test messages."""
    return "|".join(name for bit, name in NAMES.items() if actions & bit) or "NONE"
