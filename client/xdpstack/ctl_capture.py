"""``xdpstackctl capture``: stream the daemon's frames into a pcap file.

The stream format is in :mod:`xdpstack.ctl_pcap`. The capture ends when the daemon has
sent ``count`` frames, or when :func:`run_capture`'s ``should_stop`` says so (the CLI sets
it on SIGINT/SIGTERM): then the client asks the daemon to stop, waits briefly for the END
frame (which carries the daemon's totals) and closes. Closing alone would also end the
capture: the daemon removes its tap when a client goes away.

The file is written through a buffer that is flushed after every batch read from the
daemon, so a capture killed outright still leaves a readable pcap of what was flushed.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from time import monotonic
from typing import Any, BinaryIO

from xdpstack import protocol as P
from xdpstack.ctl_client import ControlClient, DaemonError, decode_reply
from xdpstack.ctl_pcap import F_END, F_STREAM, LINKTYPE_ETHERNET, PcapWriter

POLL_S = 0.1  # how often should_stop is looked at
STOP_GRACE_S = 3.0  # after asking the daemon to stop, how long to wait for its END


def run_capture(
    client: ControlClient,
    file: BinaryIO,
    *,
    count: int | None = None,
    port: int | None = None,
    snaplen: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Capture into ``file`` (a binary file open for writing) over the connected
    ``client``. Returns the summary: frames and bytes written, frames the daemon
    dropped, and why the capture ended."""
    args: dict[str, Any] = {}
    if count:
        args["count"] = count
    if port is not None:
        args["port"] = port
    if snaplen is not None:
        args["snaplen"] = snaplen
    rid = client.send(P.Op.CAPTURE, args)
    start = _first_reply(client, rid)
    writer = PcapWriter(file, int(start.get("snaplen") or 65535), LINKTYPE_ETHERNET)
    file.flush()
    if on_start is not None:
        on_start(start)
    end: dict[str, Any] | None = None
    stop_rid: int | None = None
    stop_deadline = 0.0
    reason = "stopped"
    while end is None:
        if stop_rid is None and should_stop():
            try:
                stop_rid = client.send(P.Op.CAPTURE, {"stop": True})
            except OSError:
                reason = "stopped (daemon did not answer)"
                break
            stop_deadline = monotonic() + STOP_GRACE_S
        timeout = POLL_S
        if stop_rid is not None:
            timeout = stop_deadline - monotonic()
            if timeout <= 0:
                reason = "stopped (no END from the daemon)"
                break
        try:
            frame = client.read_frame(timeout)
        except ConnectionError:
            reason = "daemon closed the connection"
            break
        wrote = False
        while frame is not None:
            if frame.request_id == rid and frame.flags & F_STREAM:
                if frame.flags & F_END:
                    end = _value(frame)
                    break
                writer.write_record(frame.payload)
                wrote = True
            elif frame.request_id == stop_rid:
                pass  # the stop's own reply: the END frame came before it
            else:
                raise P.ProtocolError(f"unexpected frame (request {frame.request_id})")
            frame = client.read_frame(0)  # the rest of what has arrived
        if wrote:
            file.flush()
    file.flush()
    summary: dict[str, Any] = {
        "frames": writer.frames,
        "bytes": writer.bytes,
        "dropped": 0,
        "reason": reason,
    }
    if end is not None:
        summary["dropped"] = int(end.get("dropped") or 0)
        summary["reason"] = str(end.get("reason") or reason)
        summary["daemon_frames"] = end.get("frames")
    return summary


def _first_reply(client: ControlClient, rid: int) -> dict[str, Any]:
    deadline = monotonic() + client.timeout
    while True:
        frame = client.read_frame(max(0.0, deadline - monotonic()))
        if frame is None:
            raise TimeoutError(errno.ETIMEDOUT, "xdpstackd did not answer CAPTURE")
        if frame.request_id == rid:
            value = decode_reply(frame)
            if not isinstance(value, dict):
                raise P.ProtocolError("CAPTURE: the reply is not an object")
            return value


def _value(frame: P.Frame) -> dict[str, Any]:
    with contextlib.suppress(P.ProtocolError, DaemonError):
        value = P.decode_value(frame.payload)
        if isinstance(value, dict):
            return value
    return {}
