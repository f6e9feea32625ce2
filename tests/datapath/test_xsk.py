"""The AF_XDP datapath: ``XskSocket`` (xdpstackd.datapath.xsk) and its C rings (``_xsk.c``).

Integration tests build their own pair of network namespaces with a single-queue veth
between them: ``xskt-<pid>-<n>-x`` holds the XSK end ``xk<pid>-<n>x`` (10.98.0.1), and
``xskt-<pid>-<n>-p`` holds the peer end ``xk<pid>-<n>p`` (10.98.0.2, tx checksum offload
off). The test body opens the socket and attaches the real XDP program
(``XdpProgram``, steering TCP port ``PORT`` into the XSKMAP) with this thread inside the XSK
namespace; the peer sends and captures raw frames with AF_PACKET sockets made inside the
peer namespace. Both namespaces are deleted afterwards, whatever happened.

IPv6 is off in both namespaces so that the only frames on the veth are the tests' own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import select
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from integration_support import require_integration

from xdpstackd.datapath import xsk as xsk_module
from xdpstackd.datapath.xsk import (
    XDP_PACKET_HEADROOM,
    XskError,
    XskSocket,
    check_mtu,
    interface_mtu,
    max_mtu,
)

PORT = 7777  # steered TCP port
OTHER_PORT = 7778  # not steered: the kernel's
IP_X = "10.98.0.1"
IP_P = "10.98.0.2"
ETH_P_ALL = 0x0003
ETH_P_TEST = 0x88B5  # IEEE local experimental EtherType: frames the XSK transmits
PACKET_OUTGOING = 4
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()


# -- unit tests (no root) --------------------------------------------------------------------


def test_check_mtu_message_names_mtu_maximum_and_command() -> None:
    assert max_mtu() == 4096 - XDP_PACKET_HEADROOM - 14 == 3826
    check_mtu(1500, ifname="eth9")
    check_mtu(3826, ifname="eth9")
    with pytest.raises(ValueError) as info:
        check_mtu(9000, ifname="eth9")
    message = str(info.value)
    for text in ("eth9: MTU 9000", "at most 3826", "`ip link set eth9 mtu 3826`"):
        assert text in message
    with pytest.raises(ValueError, match=r"at most 1778.*ip link set eth9 mtu 1778"):
        check_mtu(1779, 2048, ifname="eth9")
    check_mtu(1778, frame_size=2048)
    with pytest.raises(ValueError, match=r"interface MTU 3827 .*`ip link set DEV mtu 3826`"):
        check_mtu(3827)
    with pytest.raises(ValueError, match=r"at most 3570"):
        check_mtu(3600, headroom=512, ifname="eth9")


def test_bad_arguments_are_refused_before_any_syscall() -> None:
    for kwargs in (
        {"mode": "fast"},
        {"frame_size": 3000},
        {"frame_size": 256},
        {"ring_size": 1000},
        {"frames": 1},
    ):
        with pytest.raises(ValueError):
            XskSocket("lo", **kwargs)


def test_c_module_is_built() -> None:
    assert xsk_module._xsk is not None, xsk_module._IMPORT_ERROR
    assert xsk_module._xsk.lib.XDP_PACKET_HEADROOM == XDP_PACKET_HEADROOM


# -- namespaces ------------------------------------------------------------------------------


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with this thread in network namespace ``name``; always switch back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def sh(*argv: str) -> None:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip() or res.returncode}")


def mac_of(ns: str, ifname: str) -> bytes:
    out = subprocess.run(
        ["ip", "-n", ns, "-o", "link", "show", ifname], capture_output=True, text=True, check=True
    ).stdout
    words = out.split()
    return bytes.fromhex(words[words.index("link/ether") + 1].replace(":", ""))


@dataclass
class Link:
    ns_x: str
    ns_p: str
    if_x: str
    if_p: str
    mac_x: bytes = b""
    mac_p: bytes = b""

    def x(self) -> contextlib.AbstractContextManager[None]:
        return in_netns(self.ns_x)

    def p(self) -> contextlib.AbstractContextManager[None]:
        return in_netns(self.ns_p)


@pytest.fixture
def link() -> Iterator[Link]:
    if subprocess.run(["which", "ethtool"], capture_output=True).returncode != 0:
        require_integration("ethtool is not installed (tx checksum offload off on the peer)")
    n = next(_counter)
    pid = os.getpid()
    base = f"xskt-{pid}-{n}"
    lk = Link(ns_x=f"{base}-x", ns_p=f"{base}-p", if_x=f"xk{pid}-{n}x", if_p=f"xk{pid}-{n}p")
    try:
        sh("ip", "netns", "add", lk.ns_x)
        sh("ip", "netns", "add", lk.ns_p)
        for ns in (lk.ns_x, lk.ns_p):
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        sh(
            "ip", "link", "add", lk.if_x, "netns", lk.ns_x, "type", "veth",
            "peer", "name", lk.if_p, "netns", lk.ns_p,
        )  # fmt: skip
        sh("ip", "-n", lk.ns_x, "addr", "add", f"{IP_X}/24", "dev", lk.if_x)
        sh("ip", "-n", lk.ns_p, "addr", "add", f"{IP_P}/24", "dev", lk.if_p)
        sh("ip", "-n", lk.ns_x, "link", "set", lk.if_x, "up")
        sh("ip", "-n", lk.ns_p, "link", "set", lk.if_p, "up")
        sh("ip", "netns", "exec", lk.ns_p, "ethtool", "-K", lk.if_p, "tx", "off")
        lk.mac_x = mac_of(lk.ns_x, lk.if_x)
        lk.mac_p = mac_of(lk.ns_p, lk.if_p)
        yield lk
    finally:
        for ns in (lk.ns_x, lk.ns_p):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def attach_program(lk: Link, mode: str = "native"):
    """The real XDP program on the XSK end, steering TCP port PORT (call inside ``lk.x()``)."""
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        require_integration(f"bcc is not importable: {exc}")
    from xdpstackd.datapath import xdp_program

    problem = xdp_program.kernel_headers_problem()
    if problem is not None:
        require_integration(f"bcc cannot compile the XDP program: {problem}")
    prog = xdp_program.XdpProgram(lk.if_x, mode=mode)
    prog.attach()
    prog.steer_add(0, PORT)
    return prog


@contextlib.contextmanager
def xsk_with_program(lk: Link, xdp_mode: str = "native", **kwargs) -> Iterator[XskSocket]:
    """An XskSocket on queue 0 of the XSK end, in the XSKMAP of the XDP program."""
    with lk.x():
        sock = XskSocket(lk.if_x, 0, **kwargs)
        prog = None
        try:
            prog = attach_program(lk, xdp_mode)
            prog.set_xsk(0, sock.fileno())
            yield sock
        finally:
            if prog is not None:
                prog.detach()
            sock.close()


# -- frames ----------------------------------------------------------------------------------


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_frame(lk: Link, seq: int, payload: bytes = b"", dport: int = PORT) -> bytes:
    """Ethernet/IPv4/TCP from the peer to the XSK end, checksums right."""
    src, dst = socket.inet_aton(IP_P), socket.inet_aton(IP_X)
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, seq, 0, 0x50, 0x18, 65535, 0, 0) + payload
    pseudo = src + dst + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), seq & 0xFFFF, 0x4000, 64, 6, 0, src, dst
    )
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return lk.mac_x + lk.mac_p + b"\x08\x00" + ip + tcp


def xsk_frame(lk: Link, seq: int, size: int = 64) -> bytes:
    """A frame the XSK end transmits to the peer: EtherType ETH_P_TEST, seq, padding."""
    head = lk.mac_p + lk.mac_x + struct.pack("!HI", ETH_P_TEST, seq)
    return head + bytes((seq + i) & 0xFF for i in range(max(0, size - len(head))))


def seq_of_tcp(frame: bytes) -> int:
    return struct.unpack_from("!I", frame, 14 + 20 + 4)[0]


class Peer:
    """AF_PACKET sender and capture on the peer end (sockets made in the peer namespace)."""

    def __init__(self, lk: Link) -> None:
        with lk.p():
            self.tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.tx.bind((lk.if_p, 0))
            self.rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_TEST))
            self.rx.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
            self.rx.bind((lk.if_p, ETH_P_TEST))
            self.rx.setblocking(False)

    def send(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.tx.send(frame)

    def capture(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """Frames of type ETH_P_TEST arriving at the peer, until ``count`` or ``timeout``."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            select.select([self.rx], [], [], min(left, 0.2))
            while len(got) < count:
                try:
                    data, addr = self.rx.recvfrom(65536)
                except BlockingIOError:
                    break
                if addr[2] != PACKET_OUTGOING:
                    got.append(data)
        return got

    def close(self) -> None:
        self.tx.close()
        self.rx.close()


def receive_n(sock: XskSocket, count: int, timeout: float = 5.0, batch: int = 64) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while len(got) < count:
        frames = sock.receive(min(batch, count - len(got)))
        if frames:
            got.extend(frames)
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            break
        poller.poll(min(left, 0.2) * 1000)
    return got


def wait_quiet(sock: XskSocket, timeout: float = 5.0) -> dict[str, int]:
    """stats() once every transmitted frame came back from the completion ring."""
    deadline = time.monotonic() + timeout
    while True:
        stats = sock.stats()
        if stats["tx_outstanding"] == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.01)


# -- integration -----------------------------------------------------------------------------

integration = pytest.mark.integration


@integration
@pytest.mark.parametrize("xdp_mode", ["native", "generic"])
def test_frames_from_the_peer_arrive_via_receive(link: Link, xdp_mode: str) -> None:
    with xsk_with_program(link, xdp_mode, mode="copy") as sock:
        assert sock.mode == "copy"
        start = sock.stats()
        peer = Peer(link)
        try:
            sent = [tcp_frame(link, i, b"hello %d" % i) for i in range(10)]
            peer.send(sent[:5])
            peer.send([tcp_frame(link, 99, dport=OTHER_PORT)])  # not steered: the kernel's
            peer.send(sent[5:])
            got = receive_n(sock, 10)
            assert got == sent  # byte for byte, in order, nothing else
            time.sleep(0.05)
            assert sock.receive() == []
        finally:
            peer.close()
        stats = sock.stats()
        assert stats["rx"] == 10
        assert stats["rx_bytes"] == sum(map(len, sent))
        assert stats["free_frames"] == start["free_frames"]  # recycled into the fill ring
        assert stats["rx_outstanding"] == stats["fill_target"]
        assert stats["kernel_rx_dropped"] == 0
        sock.audit()


@integration
def test_transmit_arrives_at_the_peer(link: Link) -> None:
    with link.x():
        sock = XskSocket(link.if_x, 0, mode="copy")  # tx needs no XDP program
    try:
        peer = Peer(link)
        try:
            frames = [xsk_frame(link, i, size) for i, size in enumerate((60, 64, 200, 1514))]
            frames.append(xsk_frame(link, 4, sock.max_frame_bytes))  # too big for the MTU
            assert sock.transmit(frames[:4]) == 4
            assert sock.transmit([frames[4]]) == 1  # fits the UMEM frame; veth drops it
            assert peer.capture(5, timeout=1.0) == frames[:4]
            # Any bytes-like frame will do.
            assert sock.transmit([bytearray(frames[0])]) == 1
            assert sock.transmit([memoryview(frames[1]), bytearray(frames[2])]) == 2
            assert peer.capture(3) == frames[:3]
        finally:
            peer.close()
        stats = wait_quiet(sock)
        assert stats["tx"] == 8
        assert stats["tx_completed"] == 8  # the one veth dropped came back too: no leak
        assert stats["tx_dropped"] == 0
        assert stats["free_frames"] == stats["total_frames"] - stats["fill_target"]
        # Larger than max_frame_bytes, or empty: dropped and counted, nothing queued.
        assert sock.max_frame_bytes == 4096 - XDP_PACKET_HEADROOM
        assert sock.transmit([b"x" * (sock.max_frame_bytes + 1), b""]) == 0
        stats = sock.stats()
        assert stats["tx_oversize"] == 2 and stats["tx_dropped"] == 2
        sock.audit()
    finally:
        sock.close()


@integration
def test_bulk_both_ways_returns_every_frame(link: Link) -> None:
    total, window = 20000, 256
    with xsk_with_program(link, "native", mode="copy") as sock:
        start = sock.stats()
        peer = Peer(link)
        try:
            # Peer -> XSK, in windows the rings can hold.
            frames = [tcp_frame(link, i, bytes(18 + i % 64)) for i in range(total)]
            got: list[bytes] = []
            busy = 0.0
            t0 = time.perf_counter()
            for off in range(0, total, window):
                peer.send(frames[off : off + window])
                t1 = time.perf_counter()
                got.extend(receive_n(sock, min(window, total - off)))
                busy += time.perf_counter() - t1
            rx_time = time.perf_counter() - t0
            assert len(got) == total
            assert [seq_of_tcp(f) for f in got] == list(range(total))
            assert got == frames

            # XSK -> peer, in batches of 64.
            out = [xsk_frame(link, i, 60 + i % 256) for i in range(total)]
            captured: list[bytes] = []
            tx_busy = 0.0
            t0 = time.perf_counter()
            for off in range(0, total, window):
                t1 = time.perf_counter()
                for b in range(off, min(off + window, total), 64):
                    assert sock.transmit(out[b : min(b + 64, off + window, total)]) == min(
                        64, off + window - b, total - b
                    )
                tx_busy += time.perf_counter() - t1
                captured.extend(peer.capture(min(window, total - off)))
            tx_time = time.perf_counter() - t0
            assert len(captured) == total
            assert captured == out
        finally:
            peer.close()
        stats = wait_quiet(sock)
        print(
            f"\nbulk {total} frames each way (copy mode, veth): "
            f"rx {total / rx_time:,.0f} frames/s end to end ({total / busy:,.0f}/s in receive), "
            f"tx {total / tx_time:,.0f} frames/s end to end ({total / tx_busy:,.0f}/s in transmit); "
            f"wakeups rx {stats['rx_wakeups']} tx {stats['tx_wakeups']}"
        )
        assert stats["rx"] == total and stats["tx"] == total
        assert stats["tx_completed"] == total
        assert stats["tx_dropped"] == 0
        assert stats["kernel_rx_dropped"] == 0
        assert stats["free_frames"] == start["free_frames"]
        assert stats["rx_outstanding"] == start["rx_outstanding"]
        assert stats["tx_outstanding"] == 0
        sock.audit()


@integration
def test_overload_drops_are_counted_and_leak_nothing(link: Link) -> None:
    """More frames than the rings hold, in both directions, without draining: reception
    drops in the kernel (counted); transmission drops nothing (kicks and reclaims make
    room as the kernel sends)."""
    with xsk_with_program(link, "native", mode="copy", frames=256, ring_size=64) as sock:
        start = sock.stats()
        # reception may hold 128 (fill + rx ring, 256 less a ring for tx); the fill ring
        # holds 64 of them now
        assert start["fill_target"] == 128 and start["rx_outstanding"] == 64
        assert start["free_frames"] == 192
        peer = Peer(link)
        try:
            peer.send([tcp_frame(link, i) for i in range(300)])
            got = receive_n(sock, 300, timeout=0.5)
            assert 0 < len(got) < 300
            out = [xsk_frame(link, i) for i in range(500)]
            assert sock.transmit(out) == 500
            assert sock.tx_pending() == 500 - sock.tx_burst_frames  # one burst per call
            while sock.flush():
                pass
            assert peer.capture(500, timeout=2.0) == out
        finally:
            peer.close()
        stats = wait_quiet(sock)
        assert stats["kernel_rx_dropped"] + stats["kernel_rx_ring_full"] > 0
        assert stats["tx_dropped"] == 0 and stats["tx_queue_dropped"] == 0
        assert stats["tx"] == 500
        assert stats["free_frames"] + stats["rx_outstanding"] == 256
        assert stats["rx_outstanding"] <= stats["fill_target"]
        sock.audit()


@integration
def test_frames_without_room_wait_in_the_transmit_queue_and_all_go_out_later(
    link: Link,
) -> None:
    """The kernel takes nothing while the link is down: 64 frames fill the tx ring, the
    other 536 wait in the transmit queue instead of being dropped; once the link is up,
    flush() sends every one, in order."""
    with link.x(), XskSocket(link.if_x, 0, mode="copy", frames=256, ring_size=64) as sock:
        peer = Peer(link)
        try:
            out = [bytearray(xsk_frame(link, i, 60 + i % 200)) for i in range(600)]
            sh("ip", "link", "set", link.if_x, "down")
            assert sock.transmit(out[:300]) == 300
            assert sock.transmit(out[300:]) == 600 - 300  # behind the first ones
            stats = sock.stats()
            assert stats["tx_queue_len"] == sock.tx_pending() == 600 - 64
            assert stats["tx_queue_peak"] == 600 - 64
            assert stats["tx_dropped"] == 0 and stats["tx_queue_dropped"] == 0
            assert sock.flush() == 600 - 64  # still down: nothing moves, nothing lost
            sh("ip", "link", "set", link.if_x, "up")
            deadline = time.monotonic() + 5
            while sock.flush() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert sock.tx_pending() == 0
            sock.kick()
            captured = peer.capture(600, timeout=5.0)
        finally:
            peer.close()
        assert captured == [bytes(f) for f in out]
        stats = wait_quiet(sock)
        assert stats["tx"] == stats["tx_completed"] == 600
        assert stats["tx_dropped"] == 0
        sock.audit()


@integration
def test_the_transmit_queue_is_bounded_and_counts_what_it_drops(link: Link) -> None:
    with (
        link.x(),
        XskSocket(link.if_x, 0, mode="copy", frames=256, ring_size=64, tx_queue_frames=100) as sock,
    ):
        sh("ip", "link", "set", link.if_x, "down")
        frames = [xsk_frame(link, i) for i in range(300)]
        assert sock.transmit(frames) == 64 + 100
        stats = sock.stats()
        assert stats["tx_queue_len"] == 100 and stats["tx_queue_dropped"] == 300 - 164
        sh("ip", "link", "set", link.if_x, "up")
        deadline = time.monotonic() + 5
        while sock.flush() and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = wait_quiet(sock)
        assert stats["tx"] == 164 and stats["tx_queue_len"] == 0
        sock.audit()


@integration
def test_transmit_takes_bytes_bytearray_and_memoryview_frames(link: Link) -> None:
    with link.x(), XskSocket(link.if_x, 0, mode="copy") as sock:
        peer = Peer(link)
        try:
            frames = [xsk_frame(link, i, 100 + i) for i in range(6)]
            mixed: list[object] = [
                frames[0], bytearray(frames[1]), memoryview(frames[2]),
                memoryview(bytearray(frames[3])), frames[4], bytearray(frames[5]),
            ]  # fmt: skip
            assert sock.transmit(mixed) == 6  # type: ignore[arg-type]
            assert peer.capture(6) == frames
            # not a buffer, or empty: dropped and counted as oversize, the rest goes out
            assert sock.transmit([object(), b"", frames[0]]) == 1  # type: ignore[list-item]
            assert peer.capture(1) == [frames[0]]
        finally:
            peer.close()
        stats = wait_quiet(sock)
        assert stats["tx_oversize"] == 2 and stats["tx"] == 7
        sock.audit()


@integration
def test_the_fill_ring_is_refilled_while_frames_still_wait_in_the_rx_ring(link: Link) -> None:
    """A burst as large as the fill ring is received whole; one rx batch of a few frames
    then tops the fill ring up to full again although most of the burst still waits in
    the rx ring (a burst's second wave finds room)."""
    ring = 1024
    with xsk_with_program(link, "native", mode="copy", frames=4 * ring, ring_size=ring) as sock:
        start = sock.stats()
        assert start["fill_ring_pending"] == ring and start["fill_target"] == 2 * ring
        peer = Peer(link)
        try:
            sent = [tcp_frame(link, i) for i in range(ring)]
            for off in range(0, ring, 128):  # the veth's own queue holds 256
                peer.send(sent[off : off + 128])
                time.sleep(0.005)
            deadline = time.monotonic() + 5
            while sock.stats()["rx_ring_pending"] < ring and time.monotonic() < deadline:
                time.sleep(0.01)
            assert sock.stats()["fill_ring_pending"] == 0  # the burst took every frame
            got = sock.receive(8)
            stats = sock.stats()
            assert stats["fill_ring_pending"] == ring  # full again: not just the 8
            assert stats["rx_ring_pending"] == ring - 8
            got += receive_n(sock, ring - 8)
        finally:
            peer.close()
        assert got == sent
        stats = sock.stats()
        assert stats["kernel_rx_dropped"] == 0
        assert stats["kernel_rx_fill_ring_empty_descs"] == 0
        sock.audit()


@integration
def test_need_wakeup_tx(link: Link) -> None:
    with link.x():
        with XskSocket(link.if_x, 0, mode="copy", need_wakeup=True) as sock:
            stats = sock.stats()
            # Copy mode: the kernel asks for a wakeup on the tx ring, always (it transmits in
            # sendto()); never on the fill ring.
            assert stats["need_wakeup"] == 1 and stats["tx_need_wakeup"] == 1
            assert stats["fill_need_wakeup"] == 0
            peer = Peer(link)
            try:
                frames = [xsk_frame(link, i) for i in range(100)]
                assert sock.transmit(frames) == 100
                assert peer.capture(100) == frames
            finally:
                peer.close()
            assert sock.stats()["tx_wakeups"] >= 1
        # need_wakeup off: every transmit kicks, and frames still go out.
        with XskSocket(link.if_x, 0, mode="copy", need_wakeup=False) as sock:
            assert sock.stats()["need_wakeup"] == 0
            peer = Peer(link)
            try:
                assert sock.transmit([xsk_frame(link, 7)]) == 1
                assert peer.capture(1) == [xsk_frame(link, 7)]
            finally:
                peer.close()
            assert sock.stats()["tx_wakeups"] == 1


@integration
def test_need_wakeup_rx(link: Link) -> None:
    """The kernel sets need_wakeup on the fill ring only in zero-copy mode (veth has none),
    so the flag is set by hand to drive the rx side: an empty receive() then wakes the
    kernel with recvfrom(), and frames keep flowing."""
    lib = xsk_module._xsk.lib
    with xsk_with_program(link, "native", mode="copy") as sock:
        assert sock.receive() == []
        assert sock.stats()["rx_wakeups"] == 0
        lib.xsk_debug_set_ring_flags(sock._ctx, lib.XSK_RING_FILL, lib.XDP_RING_NEED_WAKEUP)
        assert sock.stats()["fill_need_wakeup"] == 1
        assert sock.receive() == []
        assert sock.receive() == []
        assert sock.stats()["rx_wakeups"] == 2
        peer = Peer(link)
        try:
            sent = [tcp_frame(link, i) for i in range(5)]
            peer.send(sent)
            assert receive_n(sock, 5) == sent
        finally:
            peer.close()
        assert sock.stats()["rx_wakeups"] >= 3  # also after recycling into the fill ring
        lib.xsk_debug_set_ring_flags(sock._ctx, lib.XSK_RING_FILL, 0)
        before = sock.stats()["rx_wakeups"]
        assert sock.receive() == []
        assert sock.stats()["rx_wakeups"] == before
        sock.audit()
    with link.x(), XskSocket(link.if_x, 0, mode="copy", need_wakeup=False) as sock:
        lib.xsk_debug_set_ring_flags(sock._ctx, lib.XSK_RING_FILL, lib.XDP_RING_NEED_WAKEUP)
        assert sock.receive() == []
        assert sock.stats()["rx_wakeups"] == 0  # need_wakeup off: the flag means nothing


@integration
def test_interface_mtu_check(link: Link) -> None:
    with link.x():
        assert interface_mtu(link.if_x) == 1500
        check_mtu(interface_mtu(link.if_x), ifname=link.if_x)
        sh("ip", "link", "set", link.if_x, "mtu", "4000")
        assert interface_mtu(link.if_x) == 4000
        with pytest.raises(ValueError) as info:
            check_mtu(interface_mtu(link.if_x), ifname=link.if_x)
        message = str(info.value)
        assert f"{link.if_x}: MTU 4000" in message
        assert "at most 3826" in message
        assert f"`ip link set {link.if_x} mtu 3826`" in message
        sh("ip", "link", "set", link.if_x, "mtu", "3826")
        check_mtu(interface_mtu(link.if_x), ifname=link.if_x)
        with pytest.raises(OSError) as err:
            interface_mtu("xk-no-such")
        assert err.value.errno == errno.ENODEV


@integration
def test_close_twice_and_context_manager(link: Link) -> None:
    with link.x():
        sock = XskSocket(link.if_x, 0, mode="copy")
        fd = sock.fileno()
        assert fd >= 0
        assert not sock.closed
        sock.close()
        sock.close()
        assert sock.closed and sock.fileno() == -1
        assert sock.stats() == {"total_frames": 8192, "closed": 1}
        with pytest.raises(ValueError, match="closed"):
            sock.receive()
        with pytest.raises(ValueError, match="closed"):
            sock.transmit([b"x" * 60])
        with XskSocket(link.if_x, 0, mode="copy") as again:  # the queue is free again
            assert again.fileno() >= 0
        assert again.closed
        again.close()


@integration
def test_copy_mode_on_veth(link: Link) -> None:
    with link.x(), XskSocket(link.if_x, 0, mode="copy") as sock:
        assert sock.mode == "copy" and sock.requested_mode == "copy"
        stats = sock.stats()
        assert stats["zerocopy"] == 0
        assert stats["total_frames"] == 8192
        assert stats["free_frames"] + stats["rx_outstanding"] + stats["tx_outstanding"] == 8192
        assert stats["fill_ring_pending"] == stats["fill_target"] == 4096
        assert sock.max_frame_bytes == 3840


@integration
def test_zerocopy_on_veth_is_refused_clearly_and_auto_falls_back(link: Link) -> None:
    with link.x():
        try:
            sock = XskSocket(link.if_x, 0, mode="zerocopy")
        except XskError as exc:
            assert exc.errno == errno.EOPNOTSUPP
            message = str(exc)
            assert link.if_x in message
            assert "EOPNOTSUPP" in message and "zero-copy" in message
            assert "mode='copy'" in message
        else:  # a kernel whose veth does zero-copy: then it must say so
            with sock:
                assert sock.mode == "zerocopy"
    with xsk_with_program(link, "native", mode="auto") as sock:
        assert sock.requested_mode == "auto"
        assert sock.mode in ("copy", "zerocopy")
        assert sock.stats()["zerocopy"] == (sock.mode == "zerocopy")
        peer = Peer(link)
        try:
            sent = [tcp_frame(link, i) for i in range(3)]
            peer.send(sent)
            assert receive_n(sock, 3) == sent
            assert sock.transmit([xsk_frame(link, 1)]) == 1
            assert peer.capture(1) == [xsk_frame(link, 1)]
        finally:
            peer.close()


@integration
def test_errors_name_the_interface_and_the_cause(link: Link) -> None:
    with link.x():
        with pytest.raises(XskError) as info:
            XskSocket("xk-no-such", 0)
        assert info.value.errno == errno.ENODEV
        assert "xk-no-such" in str(info.value) and "no such interface" in str(info.value)

        with pytest.raises(XskError) as info:
            XskSocket(link.if_x, 3)
        assert info.value.errno == errno.EINVAL
        assert f"{link.if_x} has 1 rx queue(s), so queue 3 does not exist" in str(info.value)

        with XskSocket(link.if_x, 0, mode="copy"):
            t0 = time.monotonic()
            with pytest.raises(XskError) as info:
                XskSocket(link.if_x, 0, mode="copy", busy_timeout=0.1)
            assert time.monotonic() - t0 < 2
            assert info.value.errno == errno.EBUSY
            message = str(info.value)
            assert link.if_x in message and "EBUSY" in message
            assert "another AF_XDP socket is bound to queue 0" in message


@integration
def test_receive_batches_respect_max_frames(link: Link) -> None:
    with xsk_with_program(link, "generic", mode="copy", frames=64, ring_size=32) as sock:
        peer = Peer(link)
        try:
            sent = [tcp_frame(link, i, bytes(i)) for i in range(20)]
            peer.send(sent)
            time.sleep(0.1)
            got: list[bytes] = []
            for _ in range(4):
                batch = sock.receive(3)
                assert len(batch) == 3
                got.extend(batch)
            assert sock.receive(0) == []
            got.extend(receive_n(sock, 8, batch=100))
            assert got == sent
        finally:
            peer.close()
        assert sock.stats()["free_frames"] == 32
        sock.audit()
