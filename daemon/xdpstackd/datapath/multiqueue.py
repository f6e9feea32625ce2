"""Several AF_XDP sockets (one per rx queue) as one datapath for the engine.

An epoll instance watches every socket, so the event loop has a single descriptor to
wait on; a wakeup drains the queues in turn. Frames go out on the first queue's socket:
the stack has one transmit path, and a veth or NIC accepts any queue.
"""

from __future__ import annotations

import select
from collections.abc import Sequence

from xdpstackd.engine import Datapath


class MultiQueueDatapath:
    def __init__(self, sockets: Sequence[Datapath]) -> None:
        if not sockets:
            raise ValueError("at least one queue is needed")
        self.sockets = list(sockets)
        self._epoll = select.epoll()
        for sock in self.sockets:
            self._epoll.register(sock.fileno(), select.EPOLLIN)
        self._next = 0

    def fileno(self) -> int:
        return self._epoll.fileno()

    def receive(self, max_frames: int = 64) -> list[bytes]:
        self._epoll.poll(0)  # clear the edge the loop saw; readiness is re-checked below
        out: list[bytes] = []
        n = len(self.sockets)
        for i in range(n):
            sock = self.sockets[(self._next + i) % n]
            out.extend(sock.receive(max_frames - len(out)))
            if len(out) >= max_frames:
                break
        self._next = (self._next + 1) % n
        return out

    def transmit(self, frames: list[bytes]) -> int:
        return self.sockets[0].transmit(frames)

    def flush(self) -> int:
        """The transmit queue of the sending socket (see ``XskSocket.flush``)."""
        flush = getattr(self.sockets[0], "flush", None)
        return flush() if flush is not None else 0

    def tx_pending(self) -> int:
        pending = getattr(self.sockets[0], "tx_pending", None)
        return pending() if pending is not None else 0

    def stats(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for sock in self.sockets:
            for key, value in sock.stats().items():
                total[key] = total.get(key, 0) + value
        total["queues"] = len(self.sockets)
        return total

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self._epoll.close()
