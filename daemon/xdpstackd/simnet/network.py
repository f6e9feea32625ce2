"""A simulated Ethernet with virtual time: stacks, links with impairments, a switch.

Why: the TCP core must be tested against loss, reordering, duplication, corruption,
delay and rate limits without a kernel, and every failure must reproduce exactly. So
nothing here reads a clock or uses global randomness: time is the time of the next
event, and every random decision comes from a ``random.Random`` owned by one link
direction and seeded from the network seed and the link's name. Events at equal times
run in the order they were scheduled (a global sequence number breaks ties), so the same
seed and the same script give the same frame trace, byte for byte.

The loop (``step``): pop the earliest event (a frame arriving at a host or switch, or a
host's timer), hand it to the stack (``receive_frame`` / ``handle_timers``), then drain
the stack: ``poll_transmit`` onto its link, ``poll_completions`` into
``Network.completions[host]`` (and any callbacks), and reschedule its timer at
``next_deadline()``. Application commands issued between runs (``net.hosts[h].push``)
are drained at the start of the next ``step``/``run_*`` call.

A link direction applies, per frame and in this order: loss, duplication (the copy goes
through everything below independently), corruption (one random bit flipped),
the rate limiter (serialisation at ``rate_bps`` behind a FIFO bounded in bytes; overflow
is tail-dropped), then propagation ``delay_s`` plus uniform jitter in ``[0, jitter_s]``
(jitter can reorder frames, as netem's does), plus ``reorder_delay_s`` for the frames
picked by ``reorder``. Serialisation time counts the frame's bytes only (no preamble,
FCS or inter-frame gap).
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xdpstackd.inetstack.completion import Completion
from xdpstackd.inetstack.config import StackConfig
from xdpstackd.inetstack.stack import InetStack

# A host whose timer fires this many times at one instant without its deadline moving
# forward is spinning (a core bug: handle_timers did not clear the deadline it was
# called for). Raise instead of hanging the test.
MAX_TIMER_FIRINGS_AT_ONE_INSTANT = 10_000
# Completion callbacks that keep issuing commands forever are a test bug: bound them.
MAX_SERVICE_ROUNDS = 100_000


@dataclass(slots=True)
class Impairments:
    """What one direction of a link does to frames. Probabilities are per frame."""

    delay_s: float = 0.0
    jitter_s: float = 0.0
    rate_bps: float | None = None  # None: unlimited (no serialisation delay, no queue)
    queue_limit_bytes: int = 256 * 1024  # FIFO bound in front of the rate limiter
    loss: float = 0.0
    reorder: float = 0.0  # probability a frame is held back by reorder_delay_s
    reorder_delay_s: float = 0.002
    duplicate: float = 0.0
    corrupt: float = 0.0  # probability one random bit of the frame is flipped

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate", "corrupt"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"Impairments.{name}={value} is not a probability in [0, 1]")
        for name in ("delay_s", "jitter_s", "reorder_delay_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"Impairments.{name} must not be negative")
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise ValueError("Impairments.rate_bps must be positive (None for unlimited)")


@dataclass(slots=True)
class LinkStats:
    """Per link direction. ``frames_sent`` counts frames offered by the sender."""

    frames_sent: int = 0
    bytes_sent: int = 0
    frames_delivered: int = 0
    frames_dropped: int = 0  # random loss
    frames_tail_dropped: int = 0  # rate limiter queue full
    frames_duplicated: int = 0
    frames_corrupted: int = 0
    frames_reordered: int = 0
    frames_filtered: int = 0  # dropped by a test's drop_filter

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]


class LinkDirection:
    """One direction of a link: impairments, its own RNG, statistics, a rate queue."""

    def __init__(
        self,
        net: Network,
        name: str,
        impairments: Impairments,
        rng: random.Random,
        dst: Host | Switch,
        dst_port: int,
    ) -> None:
        self.net = net
        self.name = name
        self.impairments = impairments
        self.rng = rng
        self.dst = dst
        self.dst_port = dst_port
        self.stats = LinkStats()
        #: A test hook for scripted faults: ``drop_filter(frame, now) -> True`` drops the
        #: frame before any random impairment (and without drawing from the RNG).
        self.drop_filter: Callable[[bytes, float], bool] | None = None
        self._busy_until_s = 0.0
        self._queue: deque[tuple[float, int]] = deque()  # (departure time, bytes)
        self._queued_bytes = 0

    def send(self, frame: bytes, now: float) -> None:
        """Offer one frame to the link at ``now``."""
        imp = self.impairments
        stats = self.stats
        rng = self.rng
        stats.frames_sent += 1
        stats.bytes_sent += len(frame)
        if self.drop_filter is not None and self.drop_filter(frame, now):
            stats.frames_filtered += 1
            return
        if imp.loss and rng.random() < imp.loss:
            stats.frames_dropped += 1
            return
        copies = 1
        if imp.duplicate and rng.random() < imp.duplicate:
            stats.frames_duplicated += 1
            copies = 2
        for _ in range(copies):
            self._transmit(frame, now)

    def _transmit(self, frame: bytes, now: float) -> None:
        imp = self.impairments
        rng = self.rng
        if imp.corrupt and frame and rng.random() < imp.corrupt:
            bit = rng.randrange(len(frame) * 8)
            damaged = bytearray(frame)
            damaged[bit >> 3] ^= 1 << (bit & 7)
            frame = bytes(damaged)
            self.stats.frames_corrupted += 1
        depart = now
        if imp.rate_bps is not None:
            queue = self._queue
            while queue and queue[0][0] <= now:
                self._queued_bytes -= queue.popleft()[1]
            size = len(frame)
            if self._queued_bytes + size > imp.queue_limit_bytes:
                self.stats.frames_tail_dropped += 1
                return
            depart = max(now, self._busy_until_s) + size * 8 / imp.rate_bps
            self._busy_until_s = depart
            queue.append((depart, size))
            self._queued_bytes += size
        arrive = depart + imp.delay_s
        if imp.jitter_s:
            arrive += rng.uniform(0.0, imp.jitter_s)
        if imp.reorder and rng.random() < imp.reorder:
            arrive += imp.reorder_delay_s
            self.stats.frames_reordered += 1
        self.net._schedule_frame(arrive, self, frame)


class Link:
    """A full-duplex link between two nodes; ``forward`` carries a -> b."""

    def __init__(self, a: str, b: str, forward: LinkDirection, backward: LinkDirection) -> None:
        self.a = a
        self.b = b
        self.forward = forward
        self.backward = backward

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            self.forward.name: self.forward.stats.as_dict(),
            self.backward.name: self.backward.stats.as_dict(),
        }

    def __repr__(self) -> str:
        return f"Link({self.a} <-> {self.b})"


class Host:
    """A stack on the simulated network, with one interface (one link)."""

    def __init__(self, name: str, stack: InetStack) -> None:
        self.name = name
        self.stack = stack
        self.port: LinkDirection | None = None  # the direction leaving this host
        self.completions: list[Completion] = []
        self.completion_by_qt: dict[int, Completion] = {}
        self.callbacks: list[Callable[[Completion], Any]] = []
        self.timer_at: float | None = None
        self.timer_gen = 0
        self.timer_firings_now = 0
        self.timer_last_now = -1.0
        self.frames_unlinked = 0  # frames sent while not linked (lost)

    def __repr__(self) -> str:
        return f"Host({self.name}, {self.stack!r})"


class Switch:
    """A learning Ethernet switch with zero forwarding delay (links add the delays)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ports: list[LinkDirection] = []  # directions leaving the switch
        self.mac_table: dict[bytes, int] = {}
        self.frames_flooded = 0
        self.frames_dropped_runt = 0

    def receive(self, frame: bytes, in_port: int, now: float) -> None:
        if len(frame) < 14:
            self.frames_dropped_runt += 1
            return
        dst = frame[0:6]
        src = frame[6:12]
        if not src[0] & 1:
            self.mac_table[src] = in_port
        out = None if dst[0] & 1 else self.mac_table.get(dst)
        if out is None:
            self.frames_flooded += 1
            for index, port in enumerate(self.ports):
                if index != in_port:
                    port.send(frame, now)
        elif out != in_port:
            self.ports[out].send(frame, now)

    def __repr__(self) -> str:
        return f"Switch({self.name}, {len(self.ports)} ports)"


class Network:
    """Hosts, switches and links driven by virtual time from one seed."""

    def __init__(self, seed: int = 0, *, trace: bool = False, start_time_s: float = 0.0) -> None:
        self.seed = seed
        self.now = start_time_s
        self.hosts: dict[str, InetStack] = {}
        self.switches: dict[str, Switch] = {}
        self.links: list[Link] = []
        self.completions: dict[str, list[Completion]] = {}
        #: (arrival time, link direction name, frame) of every delivered frame when
        #: ``trace=True``: two runs with one seed must produce equal traces.
        self.trace: list[tuple[float, str, bytes]] | None = [] if trace else None
        self.events_processed = 0
        self._nodes: dict[str, Host] = {}
        self._heap: list[tuple[float, int, Any, int, bytes | None]] = []
        self._seq = 0
        self._dirty = False

    # ------------------------------------------------------------------ building
    def add_host(
        self,
        name: str,
        ip: str = "10.0.0.1/24",
        config: StackConfig | None = None,
        mac: bytes | None = None,
        gateway: str | None = None,
    ) -> InetStack:
        """A stack in owned-address mode; ``ip`` is ``"a.b.c.d/prefix"``."""
        if name in self._nodes or name in self.switches:
            raise ValueError(f"a node named {name!r} already exists")
        address, _, prefix = ip.partition("/")
        prefix_len = int(prefix) if prefix else 24
        index = len(self._nodes) + 1
        if mac is None:
            mac = bytes((0x02, 0, 0, 0, index >> 8 & 0xFF, index & 0xFF))  # locally administered
        digest = hashlib.sha256(f"xdpstack-simnet/{self.seed}/{name}".encode()).digest()
        stack = InetStack(
            config if config is not None else StackConfig(),
            mac=mac,
            ip=address,
            prefix_len=prefix_len,
            gateway=gateway,
            isn_secret=digest[:16],
            seed=int.from_bytes(digest[16:24], "big"),
        )
        stack.raise_internal_errors = True
        stack._now = self.now
        host = Host(name, stack)
        self._nodes[name] = host
        self.hosts[name] = stack
        self.completions[name] = host.completions
        return stack

    def add_switch(self, name: str) -> Switch:
        if name in self._nodes or name in self.switches:
            raise ValueError(f"a node named {name!r} already exists")
        switch = Switch(name)
        self.switches[name] = switch
        return switch

    def _node(self, ref: str | InetStack | Switch) -> Host | Switch:
        if isinstance(ref, Switch):
            return ref
        if isinstance(ref, InetStack):
            for host in self._nodes.values():
                if host.stack is ref:
                    return host
            raise ValueError(f"{ref!r} is not a host of this network")
        if ref in self._nodes:
            return self._nodes[ref]
        if ref in self.switches:
            return self.switches[ref]
        raise ValueError(f"no host or switch named {ref!r}")

    def link(
        self,
        a: str | InetStack | Switch,
        b: str | InetStack | Switch,
        forward: Impairments | None = None,
        backward: Impairments | None = None,
    ) -> Link:
        """Connect ``a`` and ``b``; ``backward`` defaults to ``forward`` (b -> a)."""
        node_a, node_b = self._node(a), self._node(b)
        if node_a is node_b:
            raise ValueError("cannot link a node to itself")
        forward = forward if forward is not None else Impairments()
        backward = backward if backward is not None else forward
        for node in (node_a, node_b):
            if isinstance(node, Host) and node.port is not None:
                raise ValueError(f"host {node.name!r} already has a link (one interface each)")
        index = len(self.links)
        fwd_name = f"{node_a.name}->{node_b.name}"
        bwd_name = f"{node_b.name}->{node_a.name}"
        fwd = self._direction(index, fwd_name, forward, node_a, node_b)
        bwd = self._direction(index, bwd_name, backward, node_b, node_a)
        link = Link(node_a.name, node_b.name, fwd, bwd)
        self.links.append(link)
        return link

    def _direction(
        self, index: int, name: str, imp: Impairments, src: Host | Switch, dst: Host | Switch
    ) -> LinkDirection:
        rng = random.Random(f"xdpstack-simnet/{self.seed}/{index}/{name}")
        dst_port = len(dst.ports) if isinstance(dst, Switch) else 0
        direction = LinkDirection(self, name, imp, rng, dst, dst_port)
        if isinstance(src, Switch):
            src.ports.append(direction)
        else:
            src.port = direction
        return direction

    # ------------------------------------------------------------- applications
    def on_completion(self, host: str | InetStack, callback: Callable[[Completion], Any]) -> None:
        """Call ``callback(completion)`` for each completion of ``host`` as it happens.

        Callbacks may issue commands on any host; their output is drained right after.
        """
        node = self._node(host)
        if not isinstance(node, Host):
            raise ValueError("completions belong to hosts, not switches")
        node.callbacks.append(callback)

    def remove_completion_callback(
        self, host: str | InetStack, callback: Callable[[Completion], Any]
    ) -> None:
        node = self._node(host)
        if isinstance(node, Host) and callback in node.callbacks:
            node.callbacks.remove(callback)

    def completion(self, host: str, qt: int) -> Completion | None:
        """The completion of queue token ``qt`` on ``host``, if it has completed."""
        return self._nodes[host].completion_by_qt.get(qt)

    def wait(self, host: str, qt: int, timeout_s: float = 10.0) -> Completion:
        """Run until ``qt`` completes on ``host``; ``TimeoutError`` after ``timeout_s``."""
        by_qt = self._nodes[host].completion_by_qt
        if not self.run_until(lambda: qt in by_qt, timeout_s):
            raise TimeoutError(f"qt {qt} on {host} not completed after {timeout_s} s (virtual)")
        return by_qt[qt]

    # ---------------------------------------------------------------- running
    def step(self) -> bool:
        """Process the next event (after draining pending commands); False when idle."""
        self._service_all()
        return self._step()

    def run_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Advance until ``predicate()`` holds (True) or ``timeout_s`` passes (False)."""
        end = self.now + timeout_s
        self._service_all()
        heap = self._heap
        while True:
            if predicate():
                return True
            if self._dirty:
                self._service_all()
            if not heap or heap[0][0] > end:
                self.now = max(self.now, end)
                return predicate()
            self._step()

    def run_for(self, duration_s: float) -> None:
        """Advance exactly ``duration_s`` of virtual time."""
        end = self.now + duration_s
        self._service_all()
        heap = self._heap
        while heap and heap[0][0] <= end:
            if self._dirty:
                self._service_all()
            self._step()
        self.now = max(self.now, end)

    def idle(self) -> bool:
        """No frame in flight and no timer pending anywhere."""
        return not self._heap

    def _step(self) -> bool:
        heap = self._heap
        if not heap:
            return False
        time_s, _seq, target, arg, frame = heapq.heappop(heap)
        if time_s > self.now:
            self.now = time_s
        now = self.now
        self.events_processed += 1
        if frame is None:
            self._fire_timer(target, arg, now)
            return True
        direction: LinkDirection = target
        direction.stats.frames_delivered += 1
        if self.trace is not None:
            self.trace.append((now, direction.name, frame))
        node = direction.dst
        if isinstance(node, Switch):
            node.receive(frame, direction.dst_port, now)
        else:
            node.stack.receive_frame(frame, now)
            self._service(node)
        return True

    def _fire_timer(self, host: Host, gen: int, now: float) -> None:
        if gen != host.timer_gen:
            return  # superseded by an earlier timer
        host.timer_at = None
        deadline = host.stack.next_deadline()
        if deadline is not None and deadline <= now:
            if now == host.timer_last_now:
                host.timer_firings_now += 1
                if host.timer_firings_now > MAX_TIMER_FIRINGS_AT_ONE_INSTANT:
                    raise RuntimeError(
                        f"{host.name}: next_deadline() stays at {deadline} <= now {now} after "
                        f"{MAX_TIMER_FIRINGS_AT_ONE_INSTANT} handle_timers calls (timer not "
                        f"cleared: a core bug)"
                    )
            else:
                host.timer_last_now = now
                host.timer_firings_now = 0
            host.stack.handle_timers(now)
        self._service(host)

    def _schedule_frame(self, time_s: float, direction: LinkDirection, frame: bytes) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (time_s, self._seq, direction, 0, frame))

    def _service_all(self) -> None:
        self._dirty = False
        for host in self._nodes.values():
            self._service(host)

    def _service(self, host: Host) -> None:
        """Drain a host's output: frames onto its link, completions, its next timer."""
        stack = host.stack
        now = self.now
        for _ in range(MAX_SERVICE_ROUNDS):
            frames = stack.poll_transmit()
            if frames:
                port = host.port
                if port is None:
                    host.frames_unlinked += len(frames)
                else:
                    for frame in frames:
                        port.send(frame, now)
            completions = stack.poll_completions()
            if not completions:
                break
            host.completions.extend(completions)
            by_qt = host.completion_by_qt
            for completion in completions:
                by_qt[completion.qt] = completion
            if host.callbacks:
                self._dirty = True
                for completion in completions:
                    for callback in host.callbacks:
                        callback(completion)
        else:
            raise RuntimeError(f"{host.name}: completions keep coming (callback loop?)")
        deadline = stack.next_deadline()
        if deadline is not None and (host.timer_at is None or deadline < host.timer_at):
            host.timer_at = deadline
            host.timer_gen += 1
            self._seq += 1
            heapq.heappush(self._heap, (max(deadline, now), self._seq, host, host.timer_gen, None))

    # --------------------------------------------------------------- inspection
    def link_stats(self) -> dict[str, dict[str, int]]:
        """Statistics of every link direction, keyed by ``"a->b"``."""
        out: dict[str, dict[str, int]] = {}
        for link in self.links:
            out.update(link.stats())
        return out
