"""Helpers shared by the ``xdpstackctl`` tests (a module outside any package, like the
API tests' ``harness``; its name is unique in the repository)."""

from __future__ import annotations

import json
import re
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import FAR_IP, FAR_MAC, OUR_IP, OUR_MAC, Daemon, pattern

import xdpstack
from xdpstack.ctl_pcap import LINKTYPE_ETHERNET, PcapRecord, read_pcap, tcp_ports
from xdpstack.protocol import Op

WAIT = 10.0


def established(daemon: Daemon, lib: xdpstack.Lib, port: int) -> tuple[int, int]:
    """A connection from our stack to the far end's ``port``: (our qd, far end's qd)."""
    lqd = daemon.far.listen(port)
    aqt = daemon.far.accept(lqd)
    qd = lib.socket()
    lib.wait(lib.connect(qd, (FAR_IP, port)), WAIT)
    return qd, daemon.far.wait_ok(aqt).new_qd


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def control(daemon: Daemon, op: Op, args: dict[str, Any] | None = None) -> Any:
    with daemon.connect() as lib:
        return lib.control(op, args)


def conn_by_qd(daemon: Daemon, lib: xdpstack.Lib, qd: int) -> dict[str, Any]:
    for conn in control(daemon, Op.CONNECTIONS):
        cm = conn["connection_management"]
        if cm["qd"] == qd and (conn.get("owner") or {}).get("client") == lib.client_id:
            return conn
    raise AssertionError(f"no connection with qd {qd}")


def steady_connections(daemon: Daemon, check: Callable[[list[dict[str, Any]]], bool]) -> Any:
    """CONNECTIONS once two reads in a row are equal (queues stopped moving) and
    ``check`` holds."""
    previous: list[Any] = [None]

    def stable() -> Any:
        now = control(daemon, Op.CONNECTIONS)
        key = json.dumps(
            [
                (
                    c["connection_management"],
                    {
                        k: v
                        for k, v in (c.get("ordered_delivery") or {}).items()
                        if "deadline" not in k
                    },
                )
                for c in now
            ],
            sort_keys=True,
        )
        ok = key == previous[0] and check(now)
        previous[0] = key
        time.sleep(0.05)
        return now if ok else None

    return wait_for(stable, "the connections to settle")


def table_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """A table printed by xdpstackctl -> (headers, rows of whitespace-split cells).
    Headers are separated by two or more spaces; no cell holds a space."""
    lines = [line for line in text.splitlines() if line.strip()]
    headers = re.split(r"\s{2,}", lines[0].strip())
    return headers, [line.split() for line in lines[1:]]


class Mover:
    """A thread moving data on its own client connection (a Lib is not thread-safe):
    our stack pushes to the far end, which reads it all, until :meth:`stop`."""

    def __init__(self, daemon: Daemon, ports: tuple[int, ...], chunk: int = 32 << 10) -> None:
        self.daemon = daemon
        self.lib = daemon.connect()
        self.conns = [established(daemon, self.lib, port) for port in ports]
        self.chunk = chunk
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Mover:
        self._thread.start()
        return self

    def _run(self) -> None:
        data = pattern(self.chunk)
        try:
            while not self._stop.is_set():
                for qd, far_qd in self.conns:
                    self.lib.wait(self.lib.push(qd, data), WAIT)
                    self.daemon.far.recv_exactly(far_qd, len(data), WAIT)
                    self.sent += len(data)
                time.sleep(0.002)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self.lib.close_all()
        assert self.error is None, f"the data mover failed: {self.error!r}"


def read_capture(path: Path) -> list[PcapRecord]:
    with open(path, "rb") as f:
        linktype, snaplen, records = read_pcap(f)
        assert linktype == LINKTYPE_ETHERNET
        assert snaplen >= 1514
        return list(records)


def check_frames(records: list[PcapRecord], port: int | None = None) -> None:
    """Every record is an Ethernet/IPv4 frame between our two stacks (ARP aside); with
    ``port``, every one is TCP to or from it; timestamps are recent and in order."""
    now = time.time()
    last = 0.0
    for rec in records:
        assert len(rec.data) == rec.original_length >= 42
        assert rec.data[:6] in (OUR_MAC, FAR_MAC, b"\xff" * 6)
        assert now - 120 < rec.stamp <= now + 1
        assert rec.stamp >= last - 0.001  # one wall clock stamp per batch, in order
        last = rec.stamp
        if port is not None:
            ports = tcp_ports(rec.data)
            assert ports is not None and port in ports, ports


# -- hand-made frames for the drop counters ----------------------------------------------
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ip(addr: str) -> bytes:
    return bytes(int(x) for x in addr.split("."))


def tcp_frame(*, bad_ip_checksum: bool = False, bad_tcp_checksum: bool = False) -> bytes:
    """A far-end -> us TCP segment (ACK to port 9) with one checksum broken as asked."""
    src, dst = _ip(FAR_IP), _ip(OUR_IP)
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 9, 1, 1, 5 << 4, 0x10, 1000, 0, 0))
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    csum = _checksum(pseudo + bytes(tcp))
    struct.pack_into("!H", tcp, 16, csum ^ 0x5555 if bad_tcp_checksum else csum)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst))
    csum = _checksum(bytes(ip))
    struct.pack_into("!H", ip, 10, csum ^ 0x5555 if bad_ip_checksum else csum)
    return OUR_MAC + FAR_MAC + b"\x08\x00" + bytes(ip) + bytes(tcp)


def truncated_ipv4_frame() -> bytes:
    return OUR_MAC + FAR_MAC + b"\x08\x00" + b"\x45\x00\x00"


def inject(daemon: Daemon, frames: list[bytes]) -> None:
    """Hand ``frames`` to the engine as if the far end had sent them."""
    assert daemon.datapath is not None
    daemon.call(daemon.datapath._deliver_to_engine, frames)
