"""Two ``TcpPeer``s wired back to back at layer 4, with virtual time.

The layer-4 twin of ``xdpstackd.simnet`` (which joins whole ``InetStack``s by links):
tests of TCP behaviour use it to look at exact segments between two stacks, to drop,
delay or rewrite chosen ones, and to run the clock forward deterministically.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from xdpstackd.inetstack.completion import Completion
from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer3.ipv4 import ip_from_str
from xdpstackd.inetstack.layer4.tcp.header import TcpHeader, TcpOptions, build_tcp, parse_tcp
from xdpstackd.inetstack.layer4.tcp.peer import TcpPeer
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

A_IP = "10.0.0.1"
B_IP = "10.0.0.2"

# A filter sees (sender_name, header, payload) and returns False to drop the segment.
SegmentFilter = Callable[[str, TcpHeader, bytes], bool]
# A delay function sees the same and returns the segment's one-way delay in seconds
# (segments may then overtake each other: reordering).
SegmentDelay = Callable[[str, TcpHeader, bytes], float]


class PeerPair:
    def __init__(
        self,
        config_a: TcpConfig | None = None,
        config_b: TcpConfig | None = None,
        *,
        delay_s: float = 0.001,
        seed: int = 1,
    ) -> None:
        self.now = 0.0
        self.delay_s = delay_s
        self.a = TcpPeer(config_a or TcpConfig(), ip_from_str(A_IP), isn_secret=b"a" * 16)
        self.b = TcpPeer(config_b or TcpConfig(), ip_from_str(B_IP), isn_secret=b"b" * 16)
        self.names = {id(self.a): "a", id(self.b): "b"}
        self.in_flight: list[tuple[float, int, TcpPeer, int, int, bytes]] = []
        self._seq = itertools.count()
        self.trace: list[tuple[float, str, TcpHeader, bytes]] = []
        self.completions: dict[str, list[Completion]] = {"a": [], "b": []}
        self.filter: SegmentFilter | None = None
        self.delay_fn: SegmentDelay | None = None  # None: every segment takes delay_s

    def other(self, peer: TcpPeer) -> TcpPeer:
        return self.b if peer is self.a else self.a

    def flush(self) -> None:
        """Move everything both peers want to send onto the wire, and collect completions."""
        for peer in (self.a, self.b):
            name = self.names[id(peer)]
            for src, dst, seg in peer.poll_transmit():
                hdr, payload = parse_tcp(seg, src, dst)
                self.trace.append((self.now, name, hdr, bytes(payload)))
                if self.filter is not None and not self.filter(name, hdr, bytes(payload)):
                    continue
                delay = self.delay_s
                if self.delay_fn is not None:
                    delay = self.delay_fn(name, hdr, bytes(payload))
                heapq.heappush(
                    self.in_flight,
                    (self.now + delay, next(self._seq), self.other(peer), src, dst, seg),
                )
            self.completions[name].extend(peer.poll_completions())

    def step(self, until: float) -> bool:
        """Advance to the next event not after ``until``; False when there is none."""
        self.flush()
        candidates = [d for d in (self.a.next_deadline(), self.b.next_deadline()) if d is not None]
        if self.in_flight:
            candidates.append(self.in_flight[0][0])
        if not candidates or min(candidates) > until:
            return False
        t = max(min(candidates), self.now)
        self.now = t
        while self.in_flight and self.in_flight[0][0] <= t:
            _, _, dst_peer, src, dst, seg = heapq.heappop(self.in_flight)
            dst_peer.receive(src, dst, seg, t)
            self.flush()
        self.a.handle_timers(t)
        self.b.handle_timers(t)
        self.flush()
        return True

    def run_until(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        end = self.now + timeout_s
        while not predicate():
            if not self.step(end):
                self.now = max(self.now, end) if not predicate() else self.now
                return predicate()
        return True

    def run_for(self, duration_s: float) -> None:
        end = self.now + duration_s
        while self.step(end):
            pass
        self.now = end

    def take(self, name: str, qt: int) -> Completion | None:
        for i, c in enumerate(self.completions[name]):
            if c.qt == qt:
                return self.completions[name].pop(i)
        return None

    def wait(self, name: str, qt: int, timeout_s: float = 10.0) -> Completion:
        box: list[Completion] = []

        def done() -> bool:
            c = self.take(name, qt)
            if c is not None:
                box.append(c)
            return bool(box)

        if not self.run_until(done, timeout_s):
            raise TimeoutError(f"{name} qt={qt} not completed by t={self.now:.3f}")
        return box[0]

    def connect(self, port: int = 8080) -> tuple[int, int, int]:
        """Listener on b, client on a; returns (listen_qd, client_qd, server_qd)."""
        lqd = self.b.socket()
        self.b.bind(lqd, (B_IP, port))
        self.b.listen(lqd, 16)
        aqt = self.b.accept(lqd)
        cqd = self.a.socket()
        cqt = self.a.connect(cqd, (B_IP, port), self.now)
        c = self.wait("a", cqt)
        assert c.errno == 0, c
        s = self.wait("b", aqt)
        assert s.errno == 0, s
        return lqd, cqd, s.new_qd  # type: ignore[return-value]

    # =====================================================================================
    # helpers for behaviour tests (tests/tcp/test_*.py)
    # =====================================================================================
    def peer(self, name: str) -> TcpPeer:
        return self.a if name == "a" else self.b

    def ip(self, name: str) -> int:
        return self.peer(name).local_ip

    def run_to(self, t: float) -> None:
        """Run every event up to the absolute virtual time ``t``; then ``now == t``."""
        while self.step(t):
            pass
        self.now = max(self.now, t)

    def sent(
        self,
        name: str,
        *,
        since: float = float("-inf"),
        flags: int | None = None,
        data: bool | None = None,
    ) -> list[tuple[float, TcpHeader, bytes]]:
        """Segments ``name`` sent (dropped by the filter or not), oldest first.

        ``flags``: keep segments whose flags are exactly these; ``data``: True keeps
        segments with payload, False those without.
        """
        self.flush()
        return [
            (t, hdr, payload)
            for t, who, hdr, payload in self.trace
            if who == name
            and t >= since
            and (flags is None or hdr.flags == flags)
            and (data is None or bool(payload) == data)
        ]

    def inject(self, to: str, hdr: TcpHeader, payload: bytes = b"") -> None:
        """Deliver a hand-made segment to peer ``to`` now, as if the other peer sent it."""
        dst_peer = self.peer(to)
        src_ip = self.ip("b" if to == "a" else "a")
        seg = build_tcp(hdr, payload, src_ip, dst_peer.local_ip)
        dst_peer.receive(src_ip, dst_peer.local_ip, seg, self.now)
        self.flush()

    def receive_raw(self, to: str, segment: bytes) -> None:
        """Deliver raw bytes (any garbage) to peer ``to`` now, from the other peer's address."""
        dst_peer = self.peer(to)
        src_ip = self.ip("b" if to == "a" else "a")
        dst_peer.receive(src_ip, dst_peer.local_ip, segment, self.now)
        self.flush()

    def states(self, name: str) -> list[str]:
        """The RFC 9293 state of every connection ``name`` holds (handshakes included)."""
        return [c["connection_management"]["state"] for c in self.peer(name).connections()]

    def state(self, name: str, qd: int) -> str:
        return str(self.peer(name).snapshot(qd)["connection_management"]["state"])

    def read(self, name: str, qd: int, nbytes: int, timeout_s: float = 60.0) -> bytes:
        """Pop until ``nbytes`` arrived (fails on EOF or error before that)."""
        peer = self.peer(name)
        out = bytearray()
        while len(out) < nbytes:
            c = self.wait(name, peer.pop(qd, None, self.now), timeout_s)
            assert c.errno == 0, c
            assert c.data, f"EOF after {len(out)} of {nbytes} bytes"
            out += c.data
        return bytes(out)

    def read_to_eof(self, name: str, qd: int, timeout_s: float = 60.0) -> bytes:
        peer = self.peer(name)
        out = bytearray()
        while True:
            c = self.wait(name, peer.pop(qd, None, self.now), timeout_s)
            assert c.errno == 0, c
            if not c.data:
                return bytes(out)
            out += c.data


def segment(
    src_port: int,
    dst_port: int,
    seq: int | SeqNumber,
    ack: int | SeqNumber,
    flags: int,
    window: int = 65535,
    options: TcpOptions | None = None,
) -> TcpHeader:
    """A hand-made TCP header (for ``PeerPair.inject``)."""
    return TcpHeader(
        src_port,
        dst_port,
        seq if isinstance(seq, SeqNumber) else SeqNumber(seq),
        ack if isinstance(ack, SeqNumber) else SeqNumber(ack),
        flags,
        window,
        options,
    )
