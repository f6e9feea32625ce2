"""What an application's queue token completes with (Demikernel's qresult)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class OpCode(enum.IntEnum):
    ACCEPT = 1
    CONNECT = 2
    PUSH = 3
    POP = 4


@dataclass(slots=True, frozen=True)
class Completion:
    """The result of one queue token.

    ``errno`` is 0 on success. ``addr`` is ``(ip_str, port)`` for accept.
    ``data`` is the popped bytes (``b""`` at end of stream).
    """

    opcode: OpCode
    qt: int
    qd: int
    data: bytes = b""
    addr: tuple[str, int] | None = None
    new_qd: int | None = None
    errno: int = 0
