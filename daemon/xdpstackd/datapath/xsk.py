"""AF_XDP datapath: ``XskSocket``, one AF_XDP socket with its UMEM and four rings.

The rings live in a small C module (``_xsk.c``, built by cffi at install as
``xdpstackd.datapath._xsk``) written against the kernel UAPI; this module wraps it in the
engine's ``Datapath`` interface (docs/DAEMON.md)::

    with XskSocket("veth0", 0, mode="copy") as xsk:
        program.set_xsk(0, xsk.fileno())  # the XDP program redirects into the XSKMAP
        frames = xsk.receive(64)  # list[bytes], copied out; frames recycled at once
        xsk.transmit(frames)  # a burst on the tx ring, the rest in the transmit queue
        xsk.flush()  # later (next loop iteration, a timer): the next burst; returns what waits

Frames are Ethernet frames without FCS. Without multi-buffer AF_XDP one frame must fit one
UMEM frame less the kernel's XDP headroom: ``max_frame_bytes`` (3840 for 4096-byte
frames); :func:`check_mtu` turns that into the largest interface MTU.

Modes: ``"copy"`` works on every driver (veth included), ``"zerocopy"`` needs driver
support (veth has none: ``EOPNOTSUPP``), ``"auto"`` lets the kernel try zero-copy and fall
back to copy; ``.mode`` says which one it got.

Transmission never drops a frame for want of a UMEM frame or a tx slot, and sends at
most ``tx_burst_frames`` per call: the frames beyond the burst, or that find no room even
after the kernel has been kicked and the completions reclaimed, wait in the transmit
queue (at most ``tx_queue_frames``; beyond it they are dropped and counted in
``tx_queue_dropped``) and go out first, a burst at a time, at the next ``transmit`` or
``flush``. The burst bound paces a mass close: 6,000 FINs sent back to back in copy mode
make the peer answer faster than a veth's 256-frame ring towards us drains, and the
answers are lost. The queue holds the frame objects themselves: a frame handed to
``transmit`` must not change afterwards.

Not thread-safe: one thread (the daemon's event loop) drives a socket.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct
from types import TracebackType
from typing import Any

__all__ = [
    "DEFAULT_FRAMES",
    "DEFAULT_FRAME_SIZE",
    "DEFAULT_RING_SIZE",
    "DEFAULT_TX_BURST_FRAMES",
    "DEFAULT_TX_QUEUE_FRAMES",
    "ETH_HEADER_BYTES",
    "XDP_PACKET_HEADROOM",
    "XskError",
    "XskSocket",
    "check_mtu",
    "interface_mtu",
    "max_mtu",
]

#: Bytes the kernel keeps in front of every received frame (XDP_PACKET_HEADROOM).
XDP_PACKET_HEADROOM = 256
#: Default UMEM frame (chunk) size: one page.
DEFAULT_FRAME_SIZE = 4096
#: Ethernet header bytes that come on top of the MTU (no VLAN tag, no FCS).
ETH_HEADER_BYTES = 14
#: Default UMEM frames and ring entries: 32 MiB of UMEM, of which reception may hold
#: 4096 frames (fill ring + rx ring) and transmission at least 4096. A burst that outruns
#: the daemon is absorbed by the fill ring (4096 between two rx batches; the engine drains
#: the rx ring into memory on every batch), not dropped by the kernel.
DEFAULT_FRAMES = 8192
DEFAULT_RING_SIZE = 4096
#: Default bound of the transmit queue (frames that found no UMEM frame or tx slot).
DEFAULT_TX_QUEUE_FRAMES = 65536
#: Default most frames put on the tx ring per transmit or flush call (half a veth ring).
DEFAULT_TX_BURST_FRAMES = 128

_MODES = {"auto": 0, "copy": 1, "zerocopy": 2}
_SIOCGIFMTU = 0x8921
_SIOCETHTOOL = 0x8946
_ETHTOOL_GCHANNELS = 0x3C

try:  # the cffi extension, built at install (pip install -e . / scripts/setup.sh)
    from xdpstackd.datapath import _xsk  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - depends on the build
    _xsk = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


class XskError(OSError):
    """An AF_XDP socket could not be set up; ``errno`` is the kernel's, the message names
    the interface, the step and the likely cause."""


def max_mtu(frame_size: int = DEFAULT_FRAME_SIZE, headroom: int = XDP_PACKET_HEADROOM) -> int:
    """The largest interface MTU whose frames fit one UMEM frame of ``frame_size`` bytes
    less ``headroom`` (the kernel's XDP headroom by default)."""
    return frame_size - headroom - ETH_HEADER_BYTES


def interface_mtu(ifname: str) -> int:
    """The MTU of ``ifname`` in the calling thread's network namespace (SIOCGIFMTU; sysfs
    shows the namespace it was mounted in, which need not be the thread's)."""
    ifreq = struct.pack("16si20x", ifname.encode()[:15], 0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            res = fcntl.ioctl(sock.fileno(), _SIOCGIFMTU, ifreq)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise XskError(errno.ENODEV, f"{ifname}: no such interface") from None
            raise
    return struct.unpack_from("16si", res)[1]


def check_mtu(
    mtu: int,
    frame_size: int = DEFAULT_FRAME_SIZE,
    headroom: int = XDP_PACKET_HEADROOM,
    *,
    ifname: str | None = None,
) -> None:
    """Refuse an interface MTU whose frames would not fit one UMEM frame.

    Raises ``ValueError`` naming the interface (``ifname``, when given), its MTU, the
    maximum and the ``ip link set DEV mtu N`` command that fixes it. ``mtu`` is the
    interface's MTU (:func:`interface_mtu` reads it).
    """
    limit = max_mtu(frame_size, headroom)
    if mtu > limit:
        dev = ifname or "DEV"
        who = f"{ifname}: MTU" if ifname else "interface MTU"
        raise ValueError(
            f"{who} {mtu} is too large for AF_XDP without multi-buffer: a frame "
            f"(MTU + {ETH_HEADER_BYTES}-byte Ethernet header) must fit one {frame_size}-byte "
            f"UMEM frame less {headroom} bytes of headroom, so the MTU can be at most {limit}; "
            f"lower it with `ip link set {dev} mtu {limit}`"
        )


def _rx_queue_count(ifname: str) -> int | None:
    """The interface's queue count (ETHTOOL_GCHANNELS, in the calling thread's namespace),
    or None when the driver does not say."""
    req = bytearray(struct.pack("9I", _ETHTOOL_GCHANNELS, *([0] * 8)))
    buf = ctypes.create_string_buffer(bytes(req))
    ifreq = struct.pack("16sP16x", ifname.encode()[:15], ctypes.addressof(buf))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
    except OSError:
        return None
    _cmd, _mrx, _mtx, _mother, _mcomb, rx, tx, _other, combined = struct.unpack_from("9I", buf.raw)
    return combined + max(rx, tx) or None


def _explain(
    ifname: str, queue_id: int, mode: str, stage: str, err: int, busy_timeout: float
) -> str:
    name = "EOPNOTSUPP" if err == errno.EOPNOTSUPP else errno.errorcode.get(err, str(err))
    what = f"{ifname}: AF_XDP socket on queue {queue_id} ({mode} mode): {stage} failed: {name}"
    hint = os.strerror(err)
    if stage == "if_nametoindex" or err == errno.ENODEV:
        hint = "no such interface (in this network namespace)"
    elif stage.startswith("socket") and err == errno.EAFNOSUPPORT:
        hint = "this kernel has no AF_XDP sockets (CONFIG_XDP_SOCKETS)"
    elif stage.startswith("socket") and err in (errno.EPERM, errno.EACCES):
        hint = "AF_XDP sockets need CAP_NET_RAW (run as root)"
    elif stage == "setsockopt XDP_UMEM_REG" and err in (errno.ENOMEM, errno.ENOBUFS, errno.EPERM):
        hint = (
            "the UMEM could not be pinned: raise RLIMIT_MEMLOCK (ulimit -l) or run with "
            "CAP_IPC_LOCK, or use fewer frames"
        )
    elif stage == "setsockopt XDP_UMEM_REG" and err == errno.EINVAL:
        hint = "the kernel refused the UMEM layout (frame size must be a power of two, 2048..4096)"
    elif stage == "bind" and err == errno.EBUSY:
        hint = (
            f"another AF_XDP socket is bound to queue {queue_id} of {ifname} (another "
            f"xdpstackd, or a process still running; retried for {busy_timeout:g} s)"
        )
    elif stage == "bind" and err == errno.EOPNOTSUPP:
        hint = (
            f"the driver of {ifname} does not support AF_XDP zero-copy (veth never does); "
            "use mode='copy' or mode='auto'"
        )
    elif stage == "bind" and err == errno.EINVAL:
        count = _rx_queue_count(ifname)
        if count is not None and queue_id >= count:
            hint = f"{ifname} has {count} rx queue(s), so queue {queue_id} does not exist"
        else:
            hint = "the kernel refused the bind (queue id, flags or ring setup)"
    elif stage == "bind" and err == errno.ENETDOWN:
        hint = f"{ifname} is down: `ip link set {ifname} up`"
    elif stage == "arguments":
        hint = "frame_size and ring_size must be powers of two, frame_size > 256, frames > 0"
    return f"{what}: {hint}"


class XskSocket:
    """One AF_XDP socket bound to ``ifname`` queue ``queue_id``: the engine's Datapath.

    ``frames`` UMEM frames of ``frame_size`` bytes; all four rings have ``ring_size``
    entries. Reception holds at most ``fill_target`` frames (in the fill and rx rings:
    ``min(2 * ring_size, frames - min(ring_size, frames // 2))``), topped up on every rx
    batch; the others serve transmission. ``tx_queue_frames`` bounds the transmit queue,
    ``tx_burst_frames`` the frames put on the tx ring per call (0: no bound).
    """

    def __init__(
        self,
        ifname: str,
        queue_id: int = 0,
        *,
        frames: int = DEFAULT_FRAMES,
        frame_size: int = DEFAULT_FRAME_SIZE,
        ring_size: int = DEFAULT_RING_SIZE,
        mode: str = "copy",
        need_wakeup: bool = True,
        busy_timeout: float = 0.5,
        tx_queue_frames: int = DEFAULT_TX_QUEUE_FRAMES,
        tx_burst_frames: int = DEFAULT_TX_BURST_FRAMES,
    ) -> None:
        self._ctx: Any = None
        if _xsk is None:
            raise ImportError(
                "xdpstackd.datapath._xsk is not built: run `bash scripts/setup.sh` "
                f"(pip install -e .) ({_IMPORT_ERROR})"
            )
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {sorted(_MODES)}, not {mode!r}")
        for name, value in (("frame_size", frame_size), ("ring_size", ring_size)):
            if value <= 0 or value & (value - 1):
                raise ValueError(f"{name} must be a power of two, not {value}")
        if frame_size <= XDP_PACKET_HEADROOM:
            raise ValueError(f"frame_size must exceed {XDP_PACKET_HEADROOM}, not {frame_size}")
        if frames < 2:
            raise ValueError(f"frames must be at least 2, not {frames}")
        self.ifname = ifname
        self.queue_id = queue_id
        self.frame_size = frame_size
        self.ring_size = ring_size
        self.total_frames = frames
        self.need_wakeup = need_wakeup
        self.max_frame_bytes = frame_size - XDP_PACKET_HEADROOM
        ffi, lib = _xsk.ffi, _xsk.lib
        self._ffi, self._lib = ffi, lib
        out = ffi.new("struct xsk_ctx **")
        stage = ffi.new("char[]", 128)
        rc = lib.xsk_open(
            ifname.encode(), queue_id, frames, frame_size, ring_size, _MODES[mode],
            1 if need_wakeup else 0, max(0, int(busy_timeout * 1000)), out, stage, 128,
        )  # fmt: skip
        if rc < 0:
            step = ffi.string(stage).decode()
            raise XskError(-rc, _explain(ifname, queue_id, mode, step, -rc, busy_timeout))
        self._ctx = out[0]
        self._fd = lib.xsk_fd(self._ctx)
        state = self._state()
        #: The mode in force: "zerocopy" or "copy" (what "auto" settled on).
        self.mode = "zerocopy" if state.zerocopy else "copy"
        self.requested_mode = mode
        self._rx_cap = 0
        self._rx_buf: Any = None
        self._rx_lens: Any = None
        # the transmit queue: frames that found no room yet, oldest first
        self._txq: list[Any] = []
        self._queued = ffi.new("uint32_t *")  # xsk_tx_list's out-parameter
        self.tx_queue_frames = tx_queue_frames
        self.tx_burst_frames = max(0, tx_burst_frames)
        self._txq_counts = {"tx_queued": 0, "tx_queue_dropped": 0, "tx_queue_peak": 0}
        self._counters = ffi.new("struct xsk_counters *")
        self._kstats = ffi.new("struct xsk_kernel_stats *")

    # -- Datapath ------------------------------------------------------------------------

    def fileno(self) -> int:
        """The AF_XDP socket: readable (poll/epoll) when received frames wait; -1 once
        closed."""
        return self._fd if self._ctx is not None else -1

    def receive(self, max_frames: int = 64) -> list[bytes]:
        """Up to ``max_frames`` received frames, copied out; their UMEM frames go back to
        the fill ring at once. Empty when nothing waits (never blocks)."""
        ctx = self._live()
        if max_frames <= 0:
            return []
        if max_frames > self._rx_cap:
            self._rx_cap = max_frames
            self._rx_buf = self._ffi.new("char[]", max_frames * self.max_frame_bytes)
            self._rx_lens = self._ffi.new("uint32_t[]", max_frames)
        buf, lens = self._rx_buf, self._rx_lens
        n = self._lib.xsk_rx_batch(ctx, buf, lens, max_frames)
        if n <= 0:
            return []
        unpack = self._ffi.unpack
        out = []
        off = 0
        for i in range(n):
            length = lens[i]
            out.append(unpack(buf + off, length))
            off += length
        return out

    def transmit(self, frames: list[Any]) -> int:
        """Queue ``frames`` (bytes, bytearray or any contiguous buffer; each is copied once,
        into its UMEM frame) on the tx ring, at most ``tx_burst_frames`` of them, and wake
        the kernel if it asks. The others wait in the transmit queue, behind any already
        waiting. Returns how many were taken: put on the ring, or into the queue. The rest
        are dropped and counted: empty, longer than ``max_frame_bytes`` or not a buffer
        (``tx_oversize``; one that waited in the queue is counted when its turn comes), or
        beyond the queue's bound (``tx_queue_dropped``)."""
        ctx = self._live()
        if not frames:
            return 0
        if type(frames) is not list:
            frames = list(frames)
        if self._txq:
            taken = self._enqueue(frames)
            self._flush(ctx)
            return taken
        # the list itself goes to C (CPython: id() is its address; it lives through the call)
        done = self._lib.xsk_tx_list(
            ctx, self._ffi.cast("void *", id(frames)), 0, self.tx_burst_frames, self._queued
        )
        if done < 0:
            raise OSError(-done, "xsk_tx_list")
        queued = int(self._queued[0])
        if done == len(frames):
            return queued
        return queued + self._enqueue(frames[done:])

    def flush(self) -> int:
        """Move the next burst of the transmit queue onto the tx ring, as far as frames
        and slots allow (call on the next loop iteration, or when completions may have
        returned frames). Returns how many frames still wait."""
        if self._txq:
            self._flush(self._live())
        return len(self._txq)

    def tx_pending(self) -> int:
        """Frames waiting in the transmit queue."""
        return len(self._txq)

    def _enqueue(self, frames: list[Any]) -> int:
        """Append to the transmit queue up to its bound; returns how many fit."""
        q = self._txq
        counts = self._txq_counts
        room = max(self.tx_queue_frames - len(q), 0)
        if len(frames) > room:
            counts["tx_queue_dropped"] += len(frames) - room
            frames = frames[:room]
        q.extend(frames)
        counts["tx_queued"] += len(frames)
        if len(q) > counts["tx_queue_peak"]:
            counts["tx_queue_peak"] = len(q)
        return len(frames)

    def _flush(self, ctx: Any) -> None:
        q = self._txq
        done = self._lib.xsk_tx_list(
            ctx, self._ffi.cast("void *", id(q)), 0, self.tx_burst_frames, self._queued
        )
        if done < 0:
            raise OSError(-done, "xsk_tx_list")
        del q[:done]

    def stats(self) -> dict[str, int]:
        """Counters and frame accounting. Reclaims finished transmissions first, so
        ``free_frames`` is current. ``free_frames + rx_outstanding + tx_outstanding ==
        total_frames`` always; ``kernel_*`` are the socket's XDP_STATISTICS."""
        if self._ctx is None:
            return {"total_frames": self.total_frames, "closed": 1}
        lib = self._lib
        lib.xsk_reclaim(self._ctx)
        lib.xsk_get_counters(self._ctx, self._counters)
        c = self._counters
        out = {
            name: int(getattr(c, name))
            for name in (
                "rx_frames", "rx_bytes", "rx_truncated", "tx_frames", "tx_bytes",
                "tx_completed", "tx_dropped", "tx_oversize", "tx_no_frame", "tx_ring_full",
                "fill_starved", "rx_wakeups", "tx_wakeups", "tx_kick_errors",
                "last_kick_errno",
            )
        }  # fmt: skip
        out.update(self._txq_counts)
        out["tx_queue_len"] = len(self._txq)
        out["tx_queue_limit"] = self.tx_queue_frames
        out["rx"] = out["rx_frames"]
        out["tx"] = out["tx_frames"]
        out["wakeups"] = out["rx_wakeups"] + out["tx_wakeups"]
        s = self._state()
        for name in (
            "total_frames", "free_frames", "rx_outstanding", "tx_outstanding", "fill_target",
            "fill_ring_pending", "rx_ring_pending", "tx_ring_pending", "comp_ring_pending",
        ):  # fmt: skip
            out[name] = int(getattr(s, name))
        out["fill_need_wakeup"] = int(bool(s.fill_flags & lib.XDP_RING_NEED_WAKEUP))
        out["tx_need_wakeup"] = int(bool(s.tx_flags & lib.XDP_RING_NEED_WAKEUP))
        out["zerocopy"] = int(s.zerocopy)
        out["need_wakeup"] = int(s.need_wakeup)
        if lib.xsk_get_kernel_stats(self._ctx, self._kstats) == 0:
            k = self._kstats
            for name in (
                "rx_dropped", "rx_invalid_descs", "tx_invalid_descs", "rx_ring_full",
                "rx_fill_ring_empty_descs", "tx_ring_empty_descs",
            ):  # fmt: skip
                out[f"kernel_{name}"] = int(getattr(k, name))
        return out

    def close(self) -> None:
        """Unmap the rings and the UMEM and close the socket (which also takes it out of
        any XSKMAP). Idempotent."""
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            self._lib.xsk_close(ctx)

    # -- extras ----------------------------------------------------------------------------

    def reclaim(self) -> int:
        """Take finished transmissions back from the completion ring; returns how many."""
        return int(self._lib.xsk_reclaim(self._live()))

    def kick(self) -> None:
        """Wake the kernel for the tx ring if it asks (transmit() does this itself)."""
        self._lib.xsk_kick_tx(self._live())

    def audit(self) -> None:
        """Check the frame accounting (tests, debugging); raises AssertionError on a leak
        or a double-listed frame."""
        rc = self._lib.xsk_audit(self._live())
        if rc != 0:
            reasons = {
                -1: "free + rx_outstanding + tx_outstanding != total_frames",
                -2: "a free frame address is out of range or misaligned",
                -3: "a frame is on the free stack twice",
                -4: "the fill ring holds more frames than rx_outstanding",
                -5: "the tx ring holds more frames than tx_outstanding",
                -6: "out of memory",
            }
            raise AssertionError(f"{self.ifname}: XSK frame audit failed: {reasons.get(rc, rc)}")

    @property
    def closed(self) -> bool:
        return self._ctx is None

    def __enter__(self) -> XskSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._ctx is None else f"fd={self._fd} {self.mode}"
        return f"<XskSocket {self.ifname} queue {self.queue_id} {state}>"

    # -- internals -------------------------------------------------------------------------

    def _live(self) -> Any:
        if self._ctx is None:
            raise ValueError(f"XskSocket on {self.ifname} queue {self.queue_id} is closed")
        return self._ctx

    def _state(self) -> Any:
        s = self._ffi.new("struct xsk_state *")
        self._lib.xsk_get_state(self._ctx, s)
        return s
