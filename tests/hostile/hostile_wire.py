"""Tools for the hostile tests: raw frames from the peer namespace, a sniffer, kernel TCP
sockets in the peer namespace, a sha256-checked echo transfer that runs alongside an
attack, counter deltas and the daemon's RSS.

Raw frames: :class:`Wire` opens an ``AF_PACKET`` socket *inside the peer namespace* (a
short-lived thread does ``setns`` with :class:`xdpstackd.netns.InNetns`; the socket keeps
its namespace afterwards), bound to the peer's end of the veth. Frames written there arrive
on the daemon's end exactly as written: the XDP program sees them first, and steers those
for the daemon's ports into its AF_XDP socket. Frames are built with scapy
(:func:`tcp_frame`), or patched from a scapy-built template when thousands are needed
(:func:`syn_flood_frames`).

Imported as ``hostile_wire`` (``tests/hostile`` is on ``sys.path`` through its conftest;
the name is unique in the repository).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import logging
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import xdpstack
from xdpstackd.netns import InNetns

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
logging.getLogger("scapy.loading").setLevel(logging.ERROR)

from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80


# --------------------------------------------------------------------------- namespaces
def in_netns(netns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh thread switched into ``netns``; its result (or exception).
    Sockets made there stay in ``netns``."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with InNetns(netns):
                box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"in-{netns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def netns_socket(netns: str, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket that lives in network namespace ``netns``."""
    return in_netns(netns, lambda: socket.socket(family, type_, proto))


# --------------------------------------------------------------------------- checksums
def inet_checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 (written here, not taken from the daemon, so the two cannot share a bug)."""
    if len(data) % 2:
        data += b"\0"
    total = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_bytes(ip: str) -> bytes:
    return socket.inet_aton(ip)


# --------------------------------------------------------------------------- frames
def tcp_frame(
    src_mac: bytes,
    dst_mac: bytes,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    *,
    flags: int = ACK,
    seq: int = 0,
    ack: int = 0,
    window: int = 65535,
    options: list[Any] | None = None,
    payload: bytes = b"",
    ip_chksum: int | None = None,
    tcp_chksum: int | None = None,
    urgptr: int = 0,
    ip_kw: dict[str, Any] | None = None,
    tcp_kw: dict[str, Any] | None = None,
) -> bytes:
    """One Ethernet/IPv4/TCP frame built by scapy (checksums right unless given)."""
    ip = IP(src=src, dst=dst, **(ip_kw or {}))
    if ip_chksum is not None:
        ip.chksum = ip_chksum
    tcp = TCP(
        sport=sport,
        dport=dport,
        flags=flags,
        seq=seq & 0xFFFFFFFF,
        ack=ack & 0xFFFFFFFF,
        window=window,
        options=options or [],
        urgptr=urgptr,
        **(tcp_kw or {}),
    )
    if tcp_chksum is not None:
        tcp.chksum = tcp_chksum
    pkt = Ether(src=mac_str(src_mac), dst=mac_str(dst_mac)) / ip / tcp
    if payload:
        pkt = pkt / Raw(payload)
    return bytes(pkt)


_ETH_IP = struct.Struct("!6s6sHBBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")


def tcp_frame_fast(
    src_mac: bytes,
    dst_mac: bytes,
    src: str,
    dst: str,
    sport: int,
    dport: int,
    *,
    flags: int = ACK,
    seq: int = 0,
    ack: int = 0,
    window: int = 65535,
    payload: bytes = b"",
    urgptr: int = 0,
) -> bytes:
    """What :func:`tcp_frame` builds without options (byte for byte the same, a test
    checks), ~50 times faster: for storms of thousands of frames."""
    src_b, dst_b = ip_bytes(src), ip_bytes(dst)
    total = 40 + len(payload)
    ip = bytearray(
        _ETH_IP.pack(dst_mac, src_mac, 0x0800, 0x45, 0, total, 1, 0, 64, 6, 0, src_b, dst_b)
    )
    struct.pack_into("!H", ip, 24, inet_checksum(bytes(ip[14:34])))
    tcp = bytearray(
        _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, window, 0, urgptr)
    )
    pseudo = src_b + dst_b + struct.pack("!BBH", 0, 6, 20 + len(payload))
    struct.pack_into("!H", tcp, 16, inet_checksum(pseudo + bytes(tcp) + payload))
    return bytes(ip) + bytes(tcp) + payload


def mac_str(mac: bytes) -> str:
    return mac.hex(":")


def fix_tcp_checksum(frame: bytes | bytearray, ihl: int = 20) -> bytes:
    """Recompute the TCP checksum of an Ethernet/IPv4/TCP frame after patching it (the IPv4
    total length decides where the segment ends)."""
    buf = bytearray(frame)
    ip0 = 14
    total = struct.unpack_from("!H", buf, ip0 + 2)[0]
    seg0 = ip0 + ihl
    seg_len = total - ihl
    buf[seg0 + 16 : seg0 + 18] = b"\0\0"
    pseudo = buf[ip0 + 12 : ip0 + 20] + struct.pack("!BBH", 0, 6, seg_len)
    csum = inet_checksum(bytes(pseudo) + bytes(buf[seg0 : seg0 + seg_len]))
    struct.pack_into("!H", buf, seg0 + 16, csum)
    return bytes(buf)


def syn_flood_frames(
    src_mac: bytes,
    dst_mac: bytes,
    subnet_hosts: list[str],
    dst: str,
    dport: int,
    count: int,
    seed: int = 1,
) -> list[bytes]:
    """``count`` distinct SYNs (random source address from ``subnet_hosts``, random source
    port and ISN) with MSS and window-scale options, like a real flood tool sends. A
    scapy-built template patched with ``struct`` (scapy takes ~0.1 ms a packet)."""
    rng = random.Random(seed)
    template = bytearray(
        tcp_frame(
            src_mac,
            dst_mac,
            subnet_hosts[0],
            dst,
            1024,
            dport,
            flags=SYN,
            seq=0,
            options=[("MSS", 1460), ("NOP", None), ("WScale", 7)],
        )
    )
    ip0, seg0 = 14, 34
    seg_len = len(template) - seg0
    dst_b = ip_bytes(dst)
    hosts = [ip_bytes(h) for h in subnet_hosts]
    frames = []
    for i in range(count):
        buf = bytearray(template)
        src_b = rng.choice(hosts)
        buf[ip0 + 12 : ip0 + 16] = src_b
        struct.pack_into("!H", buf, ip0 + 4, i & 0xFFFF)  # IP id
        buf[ip0 + 10 : ip0 + 12] = b"\0\0"
        struct.pack_into("!H", buf, ip0 + 10, inet_checksum(bytes(buf[ip0 : ip0 + 20])))
        struct.pack_into("!HHI", buf, seg0, rng.randrange(1024, 65536), dport, rng.getrandbits(32))
        buf[seg0 + 16 : seg0 + 18] = b"\0\0"
        pseudo = src_b + dst_b + struct.pack("!BBH", 0, 6, seg_len)
        struct.pack_into("!H", buf, seg0 + 16, inet_checksum(pseudo + bytes(buf[seg0:])))
        frames.append(bytes(buf))
    return frames


# --------------------------------------------------------------------------- the wire
SO_ATTACH_FILTER = 26
SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE
#: Keep incoming (not PACKET_OUTGOING) IPv4 frames whose total length is at most 80 bytes:
#: the daemon's SYN-ACKs, RSTs and bare ACKs, not the data of the transfer alongside (so
#: the sniffer does not starve the sending thread of the GIL) nor the frames we send.
_SMALL_INCOMING_IPV4 = (
    (0x20, 0, 0, SKF_AD_PKTTYPE),  # ld pkttype
    (0x15, 5, 0, PACKET_OUTGOING),  # == outgoing -> drop
    (0x28, 0, 0, 12),  # ldh ethertype
    (0x15, 0, 3, 0x0800),  # != IPv4 -> drop
    (0x28, 0, 0, 16),  # ldh IPv4 total length
    (0x25, 1, 0, 80),  # > 80 -> drop
    (0x06, 0, 0, 0x40000),  # accept
    (0x06, 0, 0, 0),  # drop
)


def _attach_small_incoming_ipv4_filter(sock: socket.socket) -> Any:
    insns = b"".join(struct.pack("HBBI", *insn) for insn in _SMALL_INCOMING_IPV4)
    buf = ctypes.create_string_buffer(insns, len(insns))
    prog = struct.pack("HL", len(_SMALL_INCOMING_IPV4), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
    return buf  # the kernel copied it; kept anyway for the socket's lifetime


@dataclass
class Seen:
    """A TCP segment the daemon sent, as the sniffer saw it on the peer's end."""

    at: float
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload_len: int
    options: bytes = b""


class Wire:
    """Raw frames in and out on the peer's end of the veth (inside the peer namespace).

    ``send``/``send_many`` write frames; a sniffer thread records every TCP segment whose
    Ethernet source is the daemon's end (``seen``), so a test can see the challenge ACKs,
    RSTs and SYN-ACKs the daemon sent in answer."""

    def __init__(self, netns: str, ifname: str, peer_mac: bytes, stack_mac: bytes) -> None:
        self.netns = netns
        self.ifname = ifname
        self.peer_mac = peer_mac
        self.stack_mac = stack_mac
        self.tx = netns_socket(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.tx.bind((ifname, 0))
        self.tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.rx = netns_socket(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        self._filter = _attach_small_incoming_ipv4_filter(self.rx)
        self.rx.bind((ifname, 0))
        self.rx.settimeout(0.1)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sniff, name="wire-sniffer", daemon=True)
        self._thread.start()
        self.sent = 0

    def _sniff(self) -> None:
        rx = self.rx
        stack_mac = self.stack_mac
        while not self._stop.is_set():
            try:
                frame, addr = rx.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING or frame[6:12] != stack_mac or len(frame) < 54:
                continue
            if frame[12:14] != b"\x08\x00" or frame[23] != 6:
                continue
            ihl = (frame[14] & 0x0F) * 4
            total = struct.unpack_from("!H", frame, 16)[0]
            t0 = 14 + ihl
            sport, dport, seq, ack, off, flags, window = struct.unpack_from("!HHIIBBH", frame, t0)
            hlen = (off >> 4) * 4
            seen = Seen(
                time.monotonic(),
                socket.inet_ntoa(frame[26:30]),
                socket.inet_ntoa(frame[30:34]),
                sport,
                dport,
                seq,
                ack,
                flags,
                window,
                total - ihl - hlen,
                bytes(frame[t0 + 20 : t0 + hlen]),
            )
            with self._lock:
                self.seen.append(seen)

    def send(self, frame: bytes) -> None:
        self.tx.send(frame)
        self.sent += 1

    def send_many(self, frames: Iterable[bytes], rate: float | None = None) -> int:
        """Write frames as fast as the socket takes them (ENOBUFS: yield and retry), or at
        about ``rate`` frames a second. Faster than the daemon reads, frames are lost in
        the AF_XDP rx ring (the datapath's ``kernel_rx_*`` counters say how many), so tests
        that count every frame's fate pace themselves."""
        send = self.tx.send
        n = 0
        t0 = time.monotonic()
        for frame in frames:
            while True:
                try:
                    send(frame)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                        raise
                    time.sleep(0.0001)
            n += 1
            if rate and n % 50 == 0:
                ahead = t0 + n / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        self.sent += n
        return n

    def segments(
        self, since: float = 0.0, where: Callable[[Seen], bool] | None = None
    ) -> list[Seen]:
        with self._lock:
            out = [s for s in self.seen if s.at >= since]
        return [s for s in out if where is None or where(s)]

    def wait_segment(
        self, where: Callable[[Seen], bool], since: float, timeout: float = 5.0
    ) -> Seen:
        deadline = time.monotonic() + timeout
        while True:
            found = self.segments(since, where)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"the daemon sent no matching segment within {timeout}s")
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for sock in (self.tx, self.rx):
            with contextlib.suppress(OSError):
                sock.close()


# --------------------------------------------------------------------------- counters
def counters_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """``stack`` counters that changed between two STATS replies (after - before)."""
    b, a = before.get("stack", {}), after.get("stack", {})
    out = {}
    for key in set(a) | set(b):
        d = int(a.get(key, 0)) - int(b.get(key, 0))
        if d:
            out[key] = d
    return dict(sorted(out.items()))


def xdp_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    b, a = before.get("xdp") or {}, after.get("xdp") or {}
    return {k: int(a[k]) - int(b.get(k, 0)) for k in a if int(a[k]) - int(b.get(k, 0))}


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` (VmRSS, KiB)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------- transfer
@dataclass
class EchoTransfer:
    """xdpstack -> kernel echo server -> xdpstack, 64 KiB at a time, in a thread, until
    :meth:`finish`; every echo is compared with what was sent, and the kernel's hashes of
    the whole stream with ours at the end. ``local``/``remote``: the connection's
    addresses (``local`` on the daemon's side)."""

    socket_path: str
    remote: tuple[str, int]
    chunk: int = 64 << 10
    pause_s: float = 0.01  # between echoes: a steady stream that leaves the daemon room
    io_timeout: float = 30.0
    lib: xdpstack.Lib | None = None
    qd: int = -1
    local: tuple[str, int] = ("", 0)
    echoed: int = 0
    error: BaseException | None = None
    sent_hash: Any = field(default_factory=hashlib.sha256)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> EchoTransfer:
        self.lib = xdpstack.connect(self.socket_path)
        self.qd = self.lib.socket()
        self.lib.wait(self.lib.connect(self.qd, self.remote), timeout=20)
        self.local = self.lib.getsockname(self.qd)
        self._thread = threading.Thread(target=self._run, name="echo-transfer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        from xdpd_harness import echo_exchange

        assert self.lib is not None
        try:
            while not self._stop.is_set():
                data = os.urandom(self.chunk)
                back = echo_exchange(self.lib, self.qd, data, self.io_timeout)
                if back != data:
                    raise AssertionError(f"echo differs after {self.echoed} bytes")
                self.sent_hash.update(data)
                self.echoed += len(data)
                if self.pause_s:
                    time.sleep(self.pause_s)
        except BaseException as exc:
            self.error = exc

    def wait_progress(self, nbytes: int, timeout: float = 20.0) -> None:
        """Wait until ``nbytes`` more have been echoed."""
        target = self.echoed + nbytes
        deadline = time.monotonic() + timeout
        while self.echoed < target:
            if self.error is not None:
                raise AssertionError(f"the transfer failed: {self.error!r}") from self.error
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the transfer stalled: {self.echoed} bytes echoed, {target} awaited"
                )
            time.sleep(0.01)

    def finish(self) -> tuple[int, str]:
        """Stop, close (FIN), and return (bytes, sha256) of the whole stream."""
        self._stop.set()
        assert self._thread is not None and self.lib is not None
        self._thread.join(self.io_timeout + 10)
        assert not self._thread.is_alive(), "the transfer thread did not stop"
        if self.error is not None:
            raise AssertionError(f"the transfer failed: {self.error!r}") from self.error
        self.lib.close(self.qd)
        self.lib.disconnect()
        return self.echoed, self.sent_hash.hexdigest()


# --------------------------------------------------------------------------- kernel sockets
class KernelConn:
    """A kernel TCP client socket in the peer namespace, connected to the daemon."""

    def __init__(self, netns: str, addr: tuple[str, int], timeout: float = 10.0) -> None:
        self.sock = netns_socket(netns, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(addr)
        self.local = self.sock.getsockname()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError(f"EOF after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class LazySink:
    """A kernel TCP listener in the peer namespace that accepts connections and reads
    nothing until :meth:`drain` (a peer whose receive window closes). Small receive
    buffers, so the daemon's side fills up soon."""

    def __init__(self, netns: str, rcvbuf: int = 64 << 10) -> None:
        self.sock = netns_socket(netns, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="lazy-sink", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def wait_conns(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.conns) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"lazy sink: {len(self.conns)} of {n} connections")
            time.sleep(0.01)

    def drain(self, index: int = 0, timeout: float = 30.0) -> tuple[int, str, str]:
        """Read connection ``index`` to its end: (bytes, sha256, "eof" | "reset" | "timeout")."""
        conn = self.conns[index]
        conn.settimeout(timeout)
        digest = hashlib.sha256()
        total = 0
        end = "eof"
        try:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                digest.update(data)
                total += len(data)
        except ConnectionResetError:
            end = "reset"
        except TimeoutError:
            end = "timeout"
        return total, digest.hexdigest(), end

    def close(self) -> None:
        for sock in (self.sock, *self.conns):
            with contextlib.suppress(OSError):
                sock.close()
