"""Classic pcap files and the CAPTURE stream of ``xdpstackctl capture``.

pcap (the libpcap "classic" format every tool reads: tcpdump, tshark, Wireshark, scapy):
a 24-byte global header (magic ``0xa1b2c3d4`` in the writer's byte order, version 2.4,
microsecond timestamps, snaplen, link type), then one record per frame: a 16-byte header
(seconds, microseconds, captured length, original length) and the captured bytes. The
link type is always ``LINKTYPE_ETHERNET`` (1): the daemon sees whole Ethernet frames.

The CAPTURE stream (daemon -> ``xdpstackctl``), on the ordinary protocol:

* the client sends ``CAPTURE {"count": N, "port": P, "snaplen": S}`` (all optional; count
  0 or absent: no limit; port: keep only TCP frames with that source or destination port);
* the daemon answers with a normal REPLY (JSON: ``{"linktype": 1, "snaplen": S, ...}``),
  or an ERROR (EBUSY: this connection already captures);
* then REPLY frames with the same op and request id and header flag :data:`F_STREAM` follow,
  one per frame seen (received or sent), each payload one whole pcap record (record header
  + captured bytes), so the client appends payloads to the file as they come;
* the stream ends with a REPLY flagged ``F_STREAM | F_END`` whose payload is an ordinary
  tagged JSON value ``{"frames": n, "dropped": d, "reason": "count" | "stopped" | ...}``
  (``dropped``: frames skipped because the client did not read fast enough);
* the client ends a capture early with ``CAPTURE {"stop": true}`` on the same connection:
  the daemon sends the END frame of the capture, then the REPLY to the stop request.
  Closing the connection also ends it (the daemon removes its tap).

A capture connection does nothing else; ``xdpstack.Lib`` does not read these streams (it
would take the second REPLY for a protocol error), so ``xdpstackctl`` uses its own small
reader (:mod:`xdpstack.ctl_capture`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

# CAPTURE stream: header flags of the REPLY frames after the first (the protocol's own,
# which also mark a reply split over several frames)
from xdpstack.protocol import F_END as F_END
from xdpstack.protocol import F_STREAM as F_STREAM

MAGIC_US = 0xA1B2C3D4  # microsecond timestamps
MAGIC_NS = 0xA1B23C4D  # nanosecond timestamps (read, never written)
VERSION = (2, 4)
LINKTYPE_ETHERNET = 1
DEFAULT_SNAPLEN = 65535

GLOBAL_HEADER = struct.Struct("<IHHiIII")  # magic, major, minor, thiszone, sigfigs, snaplen, lt
RECORD_HEADER = struct.Struct("<IIII")  # ts_sec, ts_usec, incl_len, orig_len


def global_header(snaplen: int = DEFAULT_SNAPLEN, linktype: int = LINKTYPE_ETHERNET) -> bytes:
    return GLOBAL_HEADER.pack(MAGIC_US, *VERSION, 0, 0, snaplen, linktype)


def record_header(stamp: float, captured: int, original: int) -> bytes:
    """The 16-byte record header for a frame seen at wall time ``stamp`` (seconds)."""
    sec = int(stamp)
    usec = round((stamp - sec) * 1_000_000)
    if usec >= 1_000_000:
        sec, usec = sec + 1, usec - 1_000_000
    return RECORD_HEADER.pack(sec & 0xFFFFFFFF, usec, captured, original)


def record(stamp: float, frame: bytes, snaplen: int = DEFAULT_SNAPLEN) -> bytes:
    data = frame[:snaplen]
    return record_header(stamp, len(data), len(frame)) + bytes(data)


class PcapWriter:
    """Writes a classic pcap file: ``write_frame`` or, for ready-made records (the
    CAPTURE stream's payloads), ``write_record``."""

    def __init__(
        self, file: BinaryIO, snaplen: int = DEFAULT_SNAPLEN, linktype: int = LINKTYPE_ETHERNET
    ) -> None:
        self.file = file
        self.snaplen = snaplen
        self.frames = 0
        self.bytes = 0
        file.write(global_header(snaplen, linktype))

    def write_frame(self, stamp: float, frame: bytes) -> None:
        self.write_record(record(stamp, frame, self.snaplen))

    def write_record(self, data: bytes | memoryview) -> None:
        self.file.write(data)
        self.frames += 1
        self.bytes += len(data) - RECORD_HEADER.size

    def flush(self) -> None:
        self.file.flush()


class PcapRecord(NamedTuple):
    stamp: float
    data: bytes
    original_length: int


class PcapError(ValueError):
    pass


def read_pcap(file: BinaryIO) -> tuple[int, int, Iterator[PcapRecord]]:
    """``(linktype, snaplen, records)`` of a classic pcap file (either byte order, µs or
    ns timestamps). A truncated or foreign file raises :class:`PcapError`."""
    head = file.read(GLOBAL_HEADER.size)
    if len(head) < GLOBAL_HEADER.size:
        raise PcapError("shorter than a pcap global header")
    for order in "<>":
        magic = struct.unpack(order + "I", head[:4])[0]
        if magic in (MAGIC_US, MAGIC_NS):
            break
    else:
        raise PcapError(f"not a classic pcap file (magic {head[:4].hex()})")
    scale = 1e-6 if magic == MAGIC_US else 1e-9
    _, major, _minor, _, _, snaplen, linktype = struct.unpack(order + "IHHiIII", head)
    if major != 2:
        raise PcapError(f"pcap version {major} is not 2")
    rec = struct.Struct(order + "IIII")

    def records() -> Iterator[PcapRecord]:
        while True:
            raw = file.read(rec.size)
            if not raw:
                return
            if len(raw) < rec.size:
                raise PcapError("truncated record header")
            sec, frac, incl, orig = rec.unpack(raw)
            data = file.read(incl)
            if len(data) < incl:
                raise PcapError("truncated record")
            yield PcapRecord(sec + frac * scale, data, orig)

    return linktype, snaplen, records()


def tcp_ports(frame: bytes | memoryview) -> tuple[int, int] | None:
    """``(source port, destination port)`` of an Ethernet/IPv4/TCP frame (one 802.1Q tag
    allowed), else None (not TCP, a non-first fragment, or too short)."""
    n = len(frame)
    if n < 14:
        return None
    off = 12
    ethertype = (frame[off] << 8) | frame[off + 1]
    if ethertype == 0x8100 and n >= 18:
        off += 4
        ethertype = (frame[off] << 8) | frame[off + 1]
    ip = off + 2
    if ethertype != 0x0800 or n < ip + 20 or frame[ip] >> 4 != 4:
        return None
    ihl = (frame[ip] & 0x0F) * 4
    if frame[ip + 9] != 6 or ihl < 20 or ((frame[ip + 6] & 0x1F) | frame[ip + 7]):
        return None
    tcp = ip + ihl
    if n < tcp + 4:
        return None
    return (frame[tcp] << 8) | frame[tcp + 1], (frame[tcp + 2] << 8) | frame[tcp + 3]
