"""Small applications that drive a stack through completions: bulk transfer, echo.

Why here and not in each test: the demo, the TCP-over-simnet tests and the benchmark all
need "send N bytes, receive M bytes, check the hash, close cleanly", and getting the
close right matters: ``close`` with unread data sends RST (as Linux does), and there is no
half-close in the API, so the side that closes first (``closer=True``) does so only after
it has received every byte it expects; the other side then reads to EOF and closes.

An endpoint is clock-agnostic: it is given a ``clock()`` for the ``now`` of the commands
it issues, and is fed completions through ``on_completion`` (simnet's
``Network.on_completion`` or the benchmark's own loop).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from xdpstackd.inetstack.completion import Completion, OpCode
from xdpstackd.inetstack.stack import InetStack
from xdpstackd.simnet.network import Network


def pattern_bytes(size: int, seed: int) -> bytes:
    """Deterministic pseudo-random payload (incompressible, unlike a repeated pattern)."""
    return random.Random(seed).randbytes(size)


class StreamEndpoint:
    """One side of a connection: pushes ``send_data``, pops until it has ``expect_bytes``.

    Pushes go in ``chunk_bytes`` pieces with at most ``max_pushes_outstanding`` pending.
    One pop is outstanding at a time. ``done`` when it has sent everything, received
    everything (and EOF, for the non-closer) and closed; ``error`` says what went wrong.
    """

    def __init__(
        self,
        stack: InetStack,
        qd: int,
        clock: Callable[[], float],
        *,
        send_data: bytes,
        expect_bytes: int,
        closer: bool,
        chunk_bytes: int = 64 * 1024,
        max_pushes_outstanding: int = 4,
        pop_size: int | None = None,
    ) -> None:
        self.stack = stack
        self.qd = qd
        self.clock = clock
        self.send_data = send_data
        self.expect_bytes = expect_bytes
        self.closer = closer
        self.chunk_bytes = chunk_bytes
        self.max_pushes_outstanding = max_pushes_outstanding
        self.pop_size = pop_size
        self.sent_offset = 0  # bytes handed to push
        self.pushed_bytes = 0  # bytes whose push completed
        self.received_bytes = 0
        self.eof = False
        self.closed = False
        self.error: str | None = None
        self.done_at_s: float | None = None
        self._hash = hashlib.sha256()
        self._push_qts: dict[int, int] = {}
        self._pop_qt: int | None = None

    @property
    def done(self) -> bool:
        return self.closed or self.error is not None

    def received_sha256(self) -> str:
        return self._hash.hexdigest()

    def start(self) -> None:
        self._fill_pushes()
        self._next_pop()
        self._maybe_close()

    def on_completion(self, completion: Completion) -> bool:
        """Consume ``completion`` if it belongs to this endpoint; True when it did."""
        qt = completion.qt
        if qt in self._push_qts:
            size = self._push_qts.pop(qt)
            if completion.errno:
                self._fail(f"push failed with errno {completion.errno}")
                return True
            self.pushed_bytes += size
            self._fill_pushes()
            self._maybe_close()
            return True
        if qt == self._pop_qt:
            self._pop_qt = None
            if completion.errno:
                self._fail(f"pop failed with errno {completion.errno}")
                return True
            data = completion.data
            if not data:
                self.eof = True
                if self.received_bytes != self.expect_bytes:
                    self._fail(f"EOF after {self.received_bytes} of {self.expect_bytes} bytes")
                    return True
            else:
                self.received_bytes += len(data)
                self._hash.update(data)
                if self.received_bytes > self.expect_bytes:
                    self._fail(f"received {self.received_bytes} > {self.expect_bytes} bytes")
                    return True
                self._next_pop()
            self._maybe_close()
            return True
        return False

    def _fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
            self.done_at_s = self.clock()

    def _fill_pushes(self) -> None:
        total = len(self.send_data)
        while (
            self.error is None
            and self.sent_offset < total
            and len(self._push_qts) < self.max_pushes_outstanding
        ):
            end = min(total, self.sent_offset + self.chunk_bytes)
            chunk = self.send_data[self.sent_offset : end]
            self.sent_offset = end
            qt = self.stack.push(self.qd, chunk, self.clock())
            self._push_qts[qt] = len(chunk)

    def _next_pop(self) -> None:
        if self.error is not None or self._pop_qt is not None or self.eof:
            return
        if self.closer and self.received_bytes >= self.expect_bytes:
            return  # the closer does not wait for EOF (there is no half-close)
        self._pop_qt = self.stack.pop(self.qd, self.pop_size, self.clock())

    def _maybe_close(self) -> None:
        if self.closed or self.error is not None:
            return
        if self.pushed_bytes < len(self.send_data):
            return
        if self.received_bytes < self.expect_bytes:
            return
        if not self.closer and not self.eof:
            return
        self.stack.close(self.qd, self.clock())
        self.closed = True
        self.done_at_s = self.clock()


@dataclass(slots=True)
class TransferResult:
    """What a bidirectional bulk transfer did; ``ok`` when both hashes matched."""

    ok: bool
    up_bytes: int
    down_bytes: int
    up_sha256_sent: str
    up_sha256_received: str
    down_sha256_sent: str
    down_sha256_received: str
    virtual_time_s: float
    errors: list[str] = field(default_factory=list)


def bulk_transfer(
    net: Network,
    client: str,
    server: str,
    *,
    up_bytes: int,
    down_bytes: int,
    port: int = 5001,
    timeout_s: float = 600.0,
    data_seed: int = 1,
) -> TransferResult:
    """Move ``up_bytes`` client->server and ``down_bytes`` back on one connection.

    The server listens on ``port``; the client connects; both sides send and receive at
    once; the client closes first. ``ok`` in the result when both sha256 sums match.
    """
    client_stack, server_stack = net.hosts[client], net.hosts[server]
    up = pattern_bytes(up_bytes, data_seed)
    down = pattern_bytes(down_bytes, data_seed + 1)
    errors: list[str] = []
    start_s = net.now

    def clock() -> float:
        return net.now

    listener = server_stack.socket()
    server_stack.bind(listener, (server_stack.ip_str, port))
    server_stack.listen(listener, 16)
    server_stack.accept(listener)
    client_qd = client_stack.socket()
    # Queue tokens are per stack: each host routes its completions to its own endpoint.
    # Each side starts as soon as its own side of the handshake completes, as a real
    # application would (the client's first data segment also completes the server's
    # handshake when the final ACK was lost).
    ends: dict[str, StreamEndpoint] = {}

    def route_client(completion: Completion) -> None:
        if completion.opcode == OpCode.CONNECT:
            if completion.errno:
                errors.append(f"connect failed with errno {completion.errno}")
                return
            ends["client"] = StreamEndpoint(
                client_stack, client_qd, clock, send_data=up, expect_bytes=down_bytes, closer=True
            )
            ends["client"].start()
        elif "client" in ends:
            ends["client"].on_completion(completion)

    def route_server(completion: Completion) -> None:
        if completion.opcode == OpCode.ACCEPT and completion.qd == listener:
            if completion.errno or completion.new_qd is None:
                errors.append(f"accept failed with errno {completion.errno}")
                return
            ends["server"] = StreamEndpoint(
                server_stack,
                completion.new_qd,
                clock,
                send_data=down,
                expect_bytes=up_bytes,
                closer=False,
            )
            ends["server"].start()
        elif "server" in ends:
            ends["server"].on_completion(completion)

    net.on_completion(client, route_client)
    net.on_completion(server, route_server)
    client_stack.connect(client_qd, (server_stack.ip_str, port), net.now)

    def finished_or_failed() -> bool:
        if errors:
            return True
        return len(ends) == 2 and all(e.done for e in ends.values())

    finished = net.run_until(finished_or_failed, timeout_s)
    server_stack.close(listener, net.now)
    net.remove_completion_callback(client, route_client)
    net.remove_completion_callback(server, route_server)
    client_end, server_end = ends.get("client"), ends.get("server")
    if not finished:
        errors.append(
            f"timeout after {timeout_s} s virtual: client got "
            f"{client_end.received_bytes if client_end else 'no connection'}/{down_bytes}, "
            f"server got {server_end.received_bytes if server_end else 'no connection'}"
            f"/{up_bytes}"
        )
    for name, endpoint in ends.items():
        if endpoint.error:
            errors.append(f"{name}: {endpoint.error}")
    end_s = max((e.done_at_s or net.now for e in ends.values()), default=net.now)
    result = TransferResult(
        ok=False,
        up_bytes=server_end.received_bytes if server_end else 0,
        down_bytes=client_end.received_bytes if client_end else 0,
        up_sha256_sent=hashlib.sha256(up).hexdigest(),
        up_sha256_received=server_end.received_sha256() if server_end else "",
        down_sha256_sent=hashlib.sha256(down).hexdigest(),
        down_sha256_received=client_end.received_sha256() if client_end else "",
        virtual_time_s=end_s - start_s,
        errors=errors,
    )
    result.ok = (
        not errors
        and result.up_sha256_sent == result.up_sha256_received
        and result.down_sha256_sent == result.down_sha256_received
    )
    return result
