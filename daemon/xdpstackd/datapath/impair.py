"""An impairment stage for the daemon's datapath: loss, reordering, duplication,
corruption and delay, per direction, deterministic from a seed. Off by default.

Why: a veth pair is a perfect link and these machines have no netem, so the retransmission,
reordering and checksum paths of the stack would otherwise never meet a real kernel peer.
:class:`ImpairedDatapath` wraps any ``Datapath`` (an ``XskSocket``, a
``MultiQueueDatapath``, a ``SimulatedDatapath``) and the engine does not know it is there.

Per frame, in this order (the model of ``simnet/network.py``'s link directions): loss;
duplication (the copy goes through everything below independently); corruption (one
random bit of the frame flipped: the stack's IPv4/TCP checksums, or the kernel peer's,
must catch it); then delay: ``delay_s`` plus uniform jitter in ``[0, jitter_s]``, plus
``reorder_delay_s`` for the frames picked by ``reorder`` (held back while later frames
overtake them). A frame with no delay goes through at once.

rx (peer -> stack) is applied to what ``receive`` takes from the inner datapath; tx
(stack -> peer) to what the engine hands ``transmit``. Capture taps (``xdpstackctl
capture``) sit in the engine, so they see frames as the stack does: after rx impairment and
before tx impairment.

Delayed frames wait in a :class:`_DelayLine` (a heap ordered by due time, then arrival)
bounded to ``max_held_frames`` per direction (beyond it they are dropped and counted as
``overflow``). A loop timer releases them when due: tx frames go to the inner datapath's
``transmit``; rx frames move to a ready queue and an eventfd is signalled. The engine
waits on one descriptor, an epoll instance watching both the inner datapath's descriptor
and that eventfd (as ``multiqueue.py`` does for several queues), so a released frame wakes
the engine's reader as a received one does.

Randomness comes from one ``random.Random`` per direction seeded from ``seed`` and the
direction's name: the same seed and the same frames in the same order make the same
decisions. (On a real link the frames' order and timing vary from run to run; the
decisions for a given sequence do not.)

``stats()`` is the inner datapath's dictionary plus ``impair_<dir>_<counter>`` entries:
``frames`` (offered), ``dropped``, ``duplicated``, ``corrupted``, ``reordered``,
``delayed``, ``overflow``, ``held`` (waiting now), and ``impair_seed``.
"""

from __future__ import annotations

import asyncio
import heapq
import os
import random
import select
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

#: uvloop's timers have millisecond steps: a frame due within this much of the timer's
#: firing is released with it, instead of arming another timer for a fraction of a ms.
TIMER_SLACK_S = 0.001
#: Frames one direction may hold back at once (delay, jitter, reordering).
DEFAULT_MAX_HELD_FRAMES = 8192

DIRECTIONS = ("rx", "tx")
COUNTERS = ("frames", "dropped", "duplicated", "corrupted", "reordered", "delayed", "overflow")
PROBABILITIES = ("loss", "reorder", "duplicate", "corrupt")
DURATIONS = ("delay_s", "jitter_s", "reorder_delay_s")


@dataclass(frozen=True, slots=True)
class Impairments:
    """What one direction does to frames. Probabilities are per frame, in [0, 1];
    durations in seconds."""

    loss: float = 0.0
    reorder: float = 0.0  # probability a frame is held back by an extra reorder_delay_s
    reorder_delay_s: float = 0.002
    duplicate: float = 0.0
    corrupt: float = 0.0  # probability one random bit of the frame is flipped
    delay_s: float = 0.0
    jitter_s: float = 0.0  # uniform in [0, jitter_s] on top of delay_s (reorders too)

    def __post_init__(self) -> None:
        for name in PROBABILITIES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: must be a probability in [0, 1], got {value}")
        for name in DURATIONS:
            value = getattr(self, name)
            if not 0.0 <= value <= 60.0:
                raise ValueError(f"{name}: must be 0..60 seconds, got {value}")

    @property
    def active(self) -> bool:
        """Whether this direction does anything at all."""
        return bool(
            self.loss
            or self.duplicate
            or self.corrupt
            or self.delay_s
            or self.jitter_s
            or (self.reorder and self.reorder_delay_s)
        )

    @property
    def delays(self) -> bool:
        """Whether some frames may be held back (needs an event loop)."""
        return bool(self.delay_s or self.jitter_s or (self.reorder and self.reorder_delay_s))

    def describe(self) -> str:
        """``loss=0.02 reorder=0.02/2ms`` style: the settings that are not off."""
        parts = []
        if self.loss:
            parts.append(f"loss={self.loss:g}")
        if self.reorder and self.reorder_delay_s:
            parts.append(f"reorder={self.reorder:g}/{self.reorder_delay_s * 1e3:g}ms")
        if self.duplicate:
            parts.append(f"duplicate={self.duplicate:g}")
        if self.corrupt:
            parts.append(f"corrupt={self.corrupt:g}")
        if self.delay_s:
            parts.append(f"delay={self.delay_s * 1e3:g}ms")
        if self.jitter_s:
            parts.append(f"jitter={self.jitter_s * 1e3:g}ms")
        return " ".join(parts) or "off"

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def parse_spec(text: str) -> tuple[tuple[str, ...], dict[str, float]]:
    """``[rx:|tx:]key=value,key=value`` (the ``--impair`` option) -> (directions, values).

    Without a prefix the values apply to both directions. Keys are :class:`Impairments`'
    fields; ``delay``, ``jitter`` and ``reorder_delay`` may leave out the ``_s``.
    Raises ``ValueError`` naming what is wrong.
    """
    head, sep, body = text.partition(":")
    if sep and head in DIRECTIONS:
        directions: tuple[str, ...] = (head,)
    elif sep and head in ("both", "all"):
        directions = DIRECTIONS
    elif sep and "=" not in head:
        raise ValueError(f"{head!r} is not a direction (rx, tx or both)")
    else:
        directions, body = DIRECTIONS, text
    names = Impairments.field_names()
    values: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in body.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in names and f"{key}_s" in names:
            key = f"{key}_s"
        if not eq or key not in names:
            raise ValueError(f"{item!r}: expected KEY=VALUE with KEY one of {', '.join(names)}")
        try:
            values[key] = float(raw)
        except ValueError:
            raise ValueError(f"{key}: {raw.strip()!r} is not a number") from None
    if not values:
        raise ValueError(f"{text!r}: no KEY=VALUE given")
    return directions, values


class _DelayLine:
    """Frames held until their due time; ``release(frames)`` gets them, in due order,
    from a loop timer armed at the earliest due time."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
        release: Callable[[list[bytes]], None],
        limit: int,
    ) -> None:
        self.loop = loop
        self.clock = clock
        self.release = release
        self.limit = limit
        self._heap: list[tuple[float, int, bytes]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def hold(self, due: float, frame: bytes) -> bool:
        """Hold ``frame`` until ``due``; False (not held) when the line is full."""
        if len(self._heap) >= self.limit:
            return False
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, frame))
        if self._timer_due is None or due < self._timer_due:
            self._arm(due)
        return True

    def take_all(self) -> list[bytes]:
        """Everything held, in due order (closing time)."""
        self.cancel()
        heap = self._heap
        out = [heapq.heappop(heap)[2] for _ in range(len(heap))]
        return out

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_due = None

    def _arm(self, due: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_due = due
        self._timer = self.loop.call_later(max(due - self.clock(), 0.0), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_due = None
        heap = self._heap
        horizon = self.clock() + TIMER_SLACK_S
        out = []
        while heap and heap[0][0] <= horizon:
            out.append(heapq.heappop(heap)[2])
        if heap:
            self._arm(heap[0][0])
        if out:
            self.release(out)


class _Direction:
    """One direction's settings, random stream and counters."""

    __slots__ = ("counters", "imp", "line", "name", "rng")

    def __init__(self, name: str, imp: Impairments, seed: int) -> None:
        self.name = name
        self.imp = imp
        self.rng = random.Random(f"xdpstack-impair/{seed}/{name}")
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.line: _DelayLine | None = None

    def apply(self, frames: list[bytes], now: float, out: list[bytes]) -> None:
        """Impair ``frames`` offered at ``now``: the ones that go through at once are
        appended to ``out``; the delayed ones go to the delay line."""
        imp = self.imp
        rng = self.rng
        c = self.counters
        c["frames"] += len(frames)
        loss, duplicate = imp.loss, imp.duplicate
        for frame in frames:
            if loss and rng.random() < loss:
                c["dropped"] += 1
                continue
            if duplicate and rng.random() < duplicate:
                c["duplicated"] += 1
                self._one(frame, now, out)
            self._one(frame, now, out)

    def _one(self, frame: bytes, now: float, out: list[bytes]) -> None:
        imp = self.imp
        rng = self.rng
        c = self.counters
        if imp.corrupt and frame and rng.random() < imp.corrupt:
            bit = rng.randrange(len(frame) * 8)
            damaged = bytearray(frame)
            damaged[bit >> 3] ^= 1 << (bit & 7)
            frame = bytes(damaged)
            c["corrupted"] += 1
        delay = imp.delay_s
        if imp.jitter_s:
            delay += rng.uniform(0.0, imp.jitter_s)
        if imp.reorder and imp.reorder_delay_s and rng.random() < imp.reorder:
            delay += imp.reorder_delay_s
            c["reordered"] += 1
        if delay <= 0.0:
            out.append(frame)
            return
        assert self.line is not None  # ImpairedDatapath makes one whenever delays are on
        if self.line.hold(now + delay, frame):
            c["delayed"] += 1
        else:
            c["overflow"] += 1


class ImpairedDatapath:
    """``inner`` with :class:`Impairments` on its rx and tx directions; a ``Datapath``.

    ``loop`` is needed when a direction delays frames (delay, jitter or reordering).
    ``clock`` must be the engine's (``time.monotonic`` in the daemon).
    """

    def __init__(
        self,
        inner: Any,
        rx: Impairments | None = None,
        tx: Impairments | None = None,
        seed: int = 0,
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_held_frames: int = DEFAULT_MAX_HELD_FRAMES,
    ) -> None:
        self.inner = inner
        self.seed = seed
        self.clock = clock
        self.rx = _Direction("rx", rx if rx is not None else Impairments(), seed)
        self.tx = _Direction("tx", tx if tx is not None else Impairments(), seed)
        if (self.rx.imp.delays or self.tx.imp.delays) and loop is None:
            raise ValueError("delay, jitter and reordering need the event loop (loop=...)")
        if max_held_frames < 1:
            raise ValueError(f"max_held_frames must be at least 1, got {max_held_frames}")
        self._ready: deque[bytes] = deque()  # released rx frames, for the next receive
        self._closed = False
        self._event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._signalled = False
        self._epoll = select.epoll()
        self._epoll.register(inner.fileno(), select.EPOLLIN)
        self._epoll.register(self._event_fd, select.EPOLLIN)
        if loop is not None:
            if self.rx.imp.delays:
                self.rx.line = _DelayLine(loop, clock, self._rx_released, max_held_frames)
            if self.tx.imp.delays:
                self.tx.line = _DelayLine(loop, clock, self._tx_released, max_held_frames)

    def describe(self) -> str:
        return f"rx {self.rx.imp.describe()}; tx {self.tx.imp.describe()}; seed {self.seed}"

    # -- Datapath ------------------------------------------------------------------------
    def fileno(self) -> int:
        """An epoll instance: readable when the inner datapath is, or a held rx frame is
        due."""
        return self._epoll.fileno()

    def receive(self, max_frames: int = 64) -> list[bytes]:
        out: list[bytes] = []
        ready = self._ready
        while ready and len(out) < max_frames:
            out.append(ready.popleft())
        if self._signalled and not ready:
            self._clear_signal()
        direction = self.rx
        if not direction.imp.active:
            if len(out) < max_frames:
                out.extend(self.inner.receive(max_frames - len(out)))
            return out
        now = self.clock()
        # keep taking from the inner datapath while it has more: a batch thinned by loss
        # or delay must not look like "nothing more waits" to the engine
        while len(out) < max_frames:
            want = max_frames - len(out)
            frames = self.inner.receive(want)
            if frames:
                direction.apply(frames, now, out)
            if len(frames) < want:
                break
        return out

    def transmit(self, frames: list[bytes]) -> int:
        direction = self.tx
        if not direction.imp.active or not frames:
            return self.inner.transmit(frames)
        now_out: list[bytes] = []
        direction.apply(frames, self.clock(), now_out)
        if not now_out:
            return len(frames)
        queued = self.inner.transmit(now_out)
        return len(frames) - (len(now_out) - queued)

    def flush(self) -> int:
        """The inner datapath's transmit queue (``XskSocket.flush``): frames that found no
        room wait there, and the engine sends them on only through this."""
        flush = getattr(self.inner, "flush", None)
        return flush() if flush is not None else 0

    def tx_pending(self) -> int:
        pending = getattr(self.inner, "tx_pending", None)
        return pending() if pending is not None else 0

    def stats(self) -> dict[str, int]:
        out = dict(self.inner.stats())
        for direction in (self.rx, self.tx):
            prefix = f"impair_{direction.name}_"
            for name, value in direction.counters.items():
                out[prefix + name] = value
            held = len(direction.line) if direction.line is not None else 0
            if direction is self.rx:
                held += len(self._ready)
            out[prefix + "held"] = held
        out["impair_seed"] = self.seed
        return out

    def close(self) -> None:
        """Send the tx frames still held (a shutdown's RSTs among them), drop the rx ones,
        close the inner datapath. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.rx.line is not None:
            self.rx.line.take_all()
        self._ready.clear()
        if self.tx.line is not None:
            held = self.tx.line.take_all()
            if held:
                try:
                    self.inner.transmit(held)
                except Exception:
                    pass  # the inner datapath may be gone already
        self._epoll.close()
        os.close(self._event_fd)
        self.inner.close()

    # -- internals -------------------------------------------------------------------------
    def _rx_released(self, frames: list[bytes]) -> None:
        if self._closed:
            return
        self._ready.extend(frames)
        if not self._signalled:
            self._signalled = True
            os.eventfd_write(self._event_fd, 1)

    def _tx_released(self, frames: list[bytes]) -> None:
        if self._closed:
            return
        self.inner.transmit(frames)

    def _clear_signal(self) -> None:
        try:
            os.eventfd_read(self._event_fd)
        except BlockingIOError:
            pass
        self._signalled = False
