"""Packet capture for ``xdpstackctl capture``: the daemon's side of the CAPTURE stream.

A :class:`CaptureStream` is one client's capture. It hangs a tap on the engine
(``engine.add_tap``) that sees every frame the daemon receives and sends, keeps those
that pass the port filter, and writes each to the client as a ready-made classic pcap
record (the stream format is described in :mod:`xdpstack.ctl_pcap`; the client only
prepends the global header and appends the records to its file).

The tap runs inside the engine's receive and transmit paths, so it never blocks and never
raises: when the client's output buffer is above ``max_queued`` bytes (the client does
not read fast enough) a frame is counted in ``dropped`` instead of queued. The capture
ends, and the tap is removed, when ``count`` frames have been written, when the client
asks (``CAPTURE {"stop": true}``), or when the client goes away; the END frame reports
the totals.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from xdpstack import protocol as P
from xdpstack.ctl_pcap import (
    DEFAULT_SNAPLEN,
    F_END,
    F_STREAM,
    LINKTYPE_ETHERNET,
    RECORD_HEADER,
    record_header,
    tcp_ports,
)

log = logging.getLogger(__name__)

__all__ = ["CaptureStream", "parse_capture_args", "tcp_ports"]


def parse_capture_args(
    args: dict[str, Any], max_snaplen: int
) -> tuple[int | None, int | None, int]:
    """A CAPTURE request's ``(count, port, snaplen)``; ValueError if one is bad. Count 0
    or absent: no limit; port absent: every frame; snaplen absent: 65535 (or less if a
    frame cannot carry that much)."""

    def int_arg(name: str, low: int, high: int) -> int | None:
        value = args.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"CAPTURE: {name} must be an integer in {low}..{high}")
        return value

    unknown = set(args) - {"count", "port", "snaplen", "stop"}
    if unknown:
        raise ValueError(f"CAPTURE: unknown argument(s) {', '.join(sorted(unknown))}")
    count = int_arg("count", 0, 1 << 62) or None
    port = int_arg("port", 0, 0xFFFF)
    snaplen = int_arg("snaplen", 64, max_snaplen) or min(DEFAULT_SNAPLEN, max_snaplen)
    return count, port, snaplen


class CaptureStream:
    """One client's capture. ``session`` needs ``writelines``, ``write``, ``closed`` and
    ``transport``; ``engine`` needs ``add_tap`` / ``remove_tap``."""

    def __init__(
        self,
        engine: Any,
        session: Any,
        op: int,
        request_id: int,
        *,
        count: int | None = None,
        port: int | None = None,
        snaplen: int = DEFAULT_SNAPLEN,
        max_queued: int = 4 << 20,
        on_end: Callable[[CaptureStream], None] | None = None,
    ) -> None:
        self.engine = engine
        self.session = session
        self.op = op
        self.request_id = request_id
        self.count = count
        self.port = port
        self.snaplen = snaplen
        self.max_queued = max_queued
        self.on_end = on_end
        self.frames = 0
        self.bytes = 0
        self.dropped = 0
        self.seen = 0
        self.started_at = time.time()
        self.active = False
        self.reason: str | None = None
        # One bound method for add_tap and remove_tap: the engine removes a tap by
        # identity, and every ``self.tap`` lookup makes a new bound-method object.
        self._tap = self.tap

    def describe(self) -> dict[str, Any]:
        return {
            "linktype": LINKTYPE_ETHERNET,
            "snaplen": self.snaplen,
            "count": self.count,
            "port": self.port,
        }

    def summary(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "dropped": self.dropped,
            "seen": self.seen,
            "reason": self.reason,
            "duration_s": round(time.time() - self.started_at, 3),
        }

    def start(self) -> None:
        self.active = True
        self.started_at = time.time()
        self.engine.add_tap(self._tap)

    def tap(self, direction: str, frame: bytes, stamp: float) -> None:
        """The engine's tap: called for every frame in (``"in"``) and out (``"out"``)."""
        if not self.active:
            return
        session = self.session
        if session.closed:
            self.stop("client gone")
            return
        self.seen += 1
        if self.port is not None:
            ports = tcp_ports(frame)
            if ports is None or self.port not in ports:
                return
        transport = session.transport
        if transport is not None and transport.get_write_buffer_size() > self.max_queued:
            self.dropped += 1
            return
        data = frame[: self.snaplen]
        head = record_header(stamp, len(data), len(frame))
        frame_head = P.HEADER.pack(
            P.LENGTH_REST + RECORD_HEADER.size + len(data),
            P.FrameType.REPLY,
            self.op,
            F_STREAM,
            self.request_id,
        )
        session.writelines([frame_head + head, bytes(data)])
        self.frames += 1
        self.bytes += len(data)
        if self.count is not None and self.frames >= self.count:
            self.stop("count")

    def stop(self, reason: str) -> dict[str, Any]:
        """End the capture (idempotent): remove the tap, send the END frame if the client
        is still there, and return the summary."""
        if not self.active:
            return self.summary()
        self.active = False
        self.reason = reason
        try:
            self.engine.remove_tap(self._tap)
        except Exception:  # never let a capture's end disturb the daemon
            log.exception("removing a capture tap")
        summary = self.summary()
        if not self.session.closed:
            self.session.write(
                P.encode_frame(
                    P.FrameType.REPLY,
                    self.op,
                    self.request_id,
                    P.encode_value(summary),
                    flags=F_STREAM | F_END,
                )
            )
        if self.on_end is not None:
            self.on_end(self)
        return summary
