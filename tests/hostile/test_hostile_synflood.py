"""SYN flood from the peer namespace at a real ``xdpstackd``.

SYNs from random source addresses of the namespace's subnet (addresses nobody answers ARP
for) and random ports, written on the veth as fast as the test can (a raw ``AF_PACKET``
socket in a tight loop in a forked, niced process: the attacker would be another machine;
here it takes the CPU the daemon and the transfer leave, ~100-600k frames a second), while
an xdpstack <-> kernel echo transfer runs alongside. What must hold: the SYN backlog stays at
``tcp.syn_backlog``, the daemon's memory does not grow with the flood, it stays up, the
transfer carries on (sha256-checked) at a quarter of its rate at least, and a legitimate
client connects while the flood lasts.

How: the flood's first SYNs reach the daemon and fill the listener's backlog; the daemon
answers SYNs past it with cookies (``tcp_syncookies_sent``), which marks the listener
flooded, and the engine tells the XDP program so. From then on the program lets
``daemon.xdp_syn_rate`` SYNs a second through to the daemon (which keep the listener
flooded) and answers the rest itself with SYN cookies (``syncookies_sent_xdp``), so the
flood stays out of the AF_XDP ring; both kinds of cookie open a connection when the ACK
returns one.

The cookie SYN-ACKs go back over the veth to the spoofed addresses, that is to the peer's
end: an XDP program there drops what is not for the peer's own address, as the network
would deliver it elsewhere, and makes the veth deliver native ``XDP_TX`` frames at all.

The module's daemon runs with ``tcp.synack_retries = 2`` (a half-open entry lives 1 + 2 +
4 = 7 s instead of Linux's 63 s with 5), so the backlog's recovery after the flood fits in
the test's time; nothing else depends on it.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hostile_wire import (
    EchoTransfer,
    counters_delta,
    netns_socket,
    rss_kib,
    syn_flood_frames,
    xdp_delta,
)
from netfixtures import kernel_tcp_server, xdp_attached
from xdpd_harness import DaemonLab, DaemonProcess, wait_until

pytestmark = pytest.mark.integration

PORT = 7500
SYN_BACKLOG = 256  # tcp.syn_backlog (the default)
SYNACK_RETRIES = 2
HALF_OPEN_LIFETIME_S = 1 + 2 + 4  # rto_initial_s, doubled per retry, then given up
FLOOD_S = 4.0
RSS_GROWTH_BOUND_KIB = 32 << 10
LEGIT_CONNECT_S = 3.0  # "a reasonable time": the kernel's first SYN retransmission is at 1 s
CONFIG = f'[daemon]\nlog_level = "info"\n[tcp]\nsynack_retries = {SYNACK_RETRIES}\n'


class RawSender:
    """Frames written on the peer's end of the veth. ``hostile_wire.Wire`` without its
    sniffer thread: that one would take in every cookie SYN-ACK the XDP program sends back
    (tens of thousands a second), in this process, whose GIL the echo transfer's thread
    needs too."""

    def __init__(self, netns: str, ifname: str) -> None:
        self.tx = netns_socket(netns, socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.tx.bind((ifname, 0))
        self.tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)

    def send_many(self, frames: list[bytes], rate: float | None = None) -> int:
        """Write the frames as fast as the socket takes them, or at about ``rate`` a second."""
        send = self.tx.send
        t0 = time.monotonic()
        for n, frame in enumerate(frames, 1):
            while True:
                try:
                    send(frame)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.ENOBUFS, errno.EAGAIN):
                        raise
                    time.sleep(0.0001)
            if rate and n % 50 == 0 and (ahead := t0 + n / rate - time.monotonic()) > 0:
                time.sleep(ahead)
        return len(frames)

    def close(self) -> None:
        self.tx.close()


class Flood:
    """SYN frames written until stopped (``rate`` None: as fast as it goes), by a forked
    process: a thread of this one would compete for its GIL with the echo transfer's."""

    def __init__(self, wire: RawSender, frames: list[bytes], rate: float | None = None) -> None:
        self.wire = wire
        self.frames = frames
        self.rate = rate
        ctx = multiprocessing.get_context("fork")
        self._sent = ctx.Value("q", 0)
        self._seconds = ctx.Value("d", 0.0)
        self._stop = ctx.Event()
        self._process = ctx.Process(target=self._run, name="syn-flood", daemon=True)

    def _run(self) -> None:
        # The attacker is another machine on a real network; here it shares the two CPUs
        # with the daemon under test and its peers. Niced, it floods with what they leave.
        os.nice(19)
        t0 = time.monotonic()
        frames, n = self.frames, len(self.frames)
        i = sent = 0
        while not self._stop.is_set():
            chunk = frames[i : i + 2000]
            sent += self.wire.send_many(chunk, rate=self.rate)
            i = (i + 2000) % n
        self._sent.value = sent
        self._seconds.value = time.monotonic() - t0

    def __enter__(self) -> Flood:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    @property
    def sent(self) -> int:
        return int(self._sent.value)

    @property
    def seconds(self) -> float:
        return float(self._seconds.value)

    @property
    def rate_achieved(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def legit_connect(d: DaemonProcess, timeout: float) -> float | None:
    """A kernel client in the peer namespace connects to the listener; seconds it took,
    None if it could not within ``timeout`` (the kernel retransmits its SYN meanwhile)."""
    sock = netns_socket(d.peer_ns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    t0 = time.monotonic()
    try:
        sock.connect((d.stack_ip, PORT))
    except OSError:
        return None
    finally:
        sock.close()
    return time.monotonic() - t0


def ring_lost(before: dict[str, Any], after: dict[str, Any]) -> int:
    """Frames the kernel dropped at the AF_XDP rx ring (or for want of a fill frame)."""
    dp_b, dp_a = before["datapath"], after["datapath"]
    return sum(int(dp_a[k]) - int(dp_b[k]) for k in ("kernel_rx_dropped", "kernel_rx_ring_full"))


def half_open(stats: dict[str, Any], established: int) -> int:
    return int(stats["connections"]) - established


# The spoofed addresses' end of the wire: frames for the peer's own address (and ARP) go
# on to its kernel, IPv4 for anyone else is dropped there. Real spoofed addresses are
# elsewhere on a real network; here the answers to them (the SYN-ACKs) would otherwise
# all be received by the peer's kernel, on the same two CPUs as the daemon under test.
_PEER_XDP = """
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
int peer_sink(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end || eth->h_proto != htons(ETH_P_IP))
        return XDP_PASS;
    return ip->daddr == PEER_ADDR ? XDP_PASS : XDP_DROP;
}
"""


@contextlib.contextmanager
def peer_xdp(ns: str, ifname: str, peer_ip: str) -> Iterator[None]:
    """``_PEER_XDP`` on the peer's veth end (native). It also makes the veth deliver the
    frames the daemon's XDP program sends back with ``XDP_TX`` (its SYN cookies): in
    native mode a veth hands those only to an end that runs XDP itself."""
    addr = int.from_bytes(socket.inet_aton(peer_ip), "little")  # __be32 as read on x86
    with xdp_attached(ns, ifname, _PEER_XDP, "peer_sink", [f"-DPEER_ADDR={addr}U"]):
        yield


@pytest.fixture(scope="module")
def lab(module_lab: DaemonLab) -> Any:
    d = module_lab.daemon(name="xdpstackd-synflood", config_text=CONFIG)
    with peer_xdp(d.peer_ns, d.peer_if, d.peer_ip):
        wire = RawSender(d.peer_ns, d.peer_if)
        lib = d.client()
        listener = lib.socket()
        lib.bind(listener, (d.stack_ip, PORT))
        lib.listen(listener, 128)
        hosts = [f"10.77.0.{i}" for i in range(10, 250)]  # nobody there: SYN-ACKs go nowhere
        frames = syn_flood_frames(
            d.pair.peer_mac, d.pair.host_mac, hosts, d.stack_ip, PORT, 100_000
        )
        try:
            yield d, wire, frames
        finally:
            wire.close()


def test_syn_flood_keeps_backlog_and_memory_bounded_and_the_transfer_going(lab: Any) -> None:
    d, wire, frames = lab
    echo = kernel_tcp_server(d.peer_ns, 0, "echo", io_timeout=120)
    transfer = EchoTransfer(str(d.socket_path), (d.peer_ip, echo.port)).start()
    transfer.wait_progress(256 << 10)
    established = 1  # the transfer
    rss_before = rss_kib(d.pid)
    before = d.stats()
    samples = []
    with Flood(wire, frames) as flood:
        t_end = time.monotonic() + FLOOD_S
        echoed_at_start = transfer.echoed
        while time.monotonic() < t_end:
            time.sleep(0.5)
            stats = d.stats()
            samples.append(
                (
                    half_open(stats, established),
                    rss_kib(d.pid) - rss_before,
                    ring_lost(before, stats),
                )
            )
            assert half_open(stats, established) <= SYN_BACKLOG, stats["connections"]
        echoed_during = transfer.echoed - echoed_at_start
    after = d.stats()
    rss_after = rss_kib(d.pid)
    delta = counters_delta(before, after)
    xdp_cookies = xdp_delta(before, after).get("syncookies_sent_xdp", 0)
    lost = ring_lost(before, after)
    print(
        f"\nSYN flood: {flood.sent} SYNs in {flood.seconds:.1f}s = {flood.rate_achieved:,.0f}/s "
        f"from {len(set(f[26:30] for f in frames))} addresses; the daemon took "
        f"{delta.get('tcp_segments_in', 0)} segments, {lost} frames lost in the AF_XDP "
        f"rx ring\n  half-open (max {SYN_BACKLOG}), RSS growth KiB and frames lost in the rx "
        f"ring so far, every 0.5 s: {samples}\n"
        f"  syncookies_sent_xdp +{xdp_cookies}, "
        f"tcp_syncookies_sent +{delta.get('tcp_syncookies_sent', 0)}, "
        f"tcp_drop_syn_backlog_full +{delta.get('tcp_drop_syn_backlog_full', 0)}, "
        f"tcp_synack_retransmits +{delta.get('tcp_synack_retransmits', 0)}, "
        f"arp_drop_unresolved +{delta.get('arp_drop_unresolved', 0)}\n"
        f"  RSS {rss_before} KiB -> {rss_after} KiB; transfer echoed {echoed_during} bytes "
        f"during the flood"
    )
    # every SYN past the rate, or past the full backlog, was answered with a cookie
    assert xdp_cookies + delta.get("tcp_syncookies_sent", 0) > 10 * SYN_BACKLOG, delta
    # and XDP took over once the backlog overflowed (the engine set the listener flooded)
    assert xdp_cookies > delta.get("tcp_syncookies_sent", 0), (xdp_cookies, delta)
    assert delta.get("tcp_drop_syn_backlog_full", 0) == 0, delta
    assert rss_after - rss_before < RSS_GROWTH_BOUND_KIB, (rss_before, rss_after)
    assert d.running
    assert after["stack"].get("stack_internal_errors", 0) == 0
    transfer.wait_progress(256 << 10, timeout=30)  # and after it
    # the half-open entries expire (SYN-ACK retries), then the listener takes clients again
    wait_until(
        lambda: half_open(d.stats(), established) == 0,
        HALF_OPEN_LIFETIME_S + 10,
        "the half-open connections to expire",
        0.25,
    )
    took = legit_connect(d, LEGIT_CONNECT_S)
    assert took is not None and took < 1.0, took
    total, digest = transfer.finish()
    (conn,) = echo.results(1, timeout=20)
    assert conn["rx_sha256"] == conn["tx_sha256"] == digest and conn["rx_bytes"] == total, conn
    print(
        f"  after the flood: backlog empty, a kernel client connected in {took * 1000:.1f} ms; "
        f"transfer {total} bytes sha256-equal on both ends"
    )
    echo.stop()


def test_legitimate_client_connects_during_a_syn_flood(lab: Any) -> None:
    """A flood at 20k SYNs/s (which the daemon reads in full: the question is the backlog,
    not the datapath's capacity) fills the backlog in milliseconds; a kernel client must
    still connect within a few seconds (with a SYN cookie)."""
    d, wire, frames = lab
    with Flood(wire, frames[::-1], rate=20_000) as flood:
        time.sleep(0.5)
        before = d.stats()
        took = legit_connect(d, LEGIT_CONNECT_S)
        after = d.stats()
    delta = counters_delta(before, after)
    print(
        f"\nSYN flood at {flood.rate_achieved:,.0f}/s: a kernel client "
        + ("did not connect" if took is None else f"connected in {took:.2f}s")
        + f" within {LEGIT_CONNECT_S}s; tcp_syncookies_sent "
        f"+{delta.get('tcp_syncookies_sent', 0)}, tcp_syncookies_recv "
        f"+{delta.get('tcp_syncookies_recv', 0)} meanwhile"
    )
    assert took is not None, "a legitimate client could not connect during the flood"
    assert delta.get("tcp_syncookies_recv", 0) >= 1, delta  # the backlog was full: a cookie


def test_established_transfer_keeps_a_quarter_of_its_rate_during_a_full_rate_flood(
    lab: Any,
) -> None:
    """The transfer's echo rate during a full-rate SYN flood against its rate just before."""
    d, wire, frames = lab
    echo = kernel_tcp_server(d.peer_ns, 0, "echo", io_timeout=120)
    transfer = EchoTransfer(str(d.socket_path), (d.peer_ip, echo.port)).start()
    try:
        transfer.wait_progress(128 << 10)
        start = transfer.echoed
        time.sleep(1.5)
        rate_before = (transfer.echoed - start) / 1.5
        with Flood(wire, frames) as flood:
            time.sleep(0.5)  # the flood under way
            start = transfer.echoed
            before = d.stats()
            time.sleep(2.0)

            rate_during = (transfer.echoed - start) / 2.0
            after = d.stats()
        xdp, stack = xdp_delta(before, after), counters_delta(before, after)
        dp_b, dp_a = before["datapath"], after["datapath"]
        ring_lost = sum(
            int(dp_a[k]) - int(dp_b[k]) for k in ("kernel_rx_dropped", "kernel_rx_ring_full")
        )
        print(
            f"\ntransfer: {rate_before / 1e6:.2f} MB/s before, {rate_during / 1e6:.2f} MB/s "
            f"during a {flood.rate_achieved:,.0f} SYN/s flood\n  in 2 s of it: XDP cookies "
            f"{xdp.get('syncookies_sent_xdp', 0)}, redirected {xdp.get('redirected', 0)}, "
            f"lost in the rx ring {ring_lost}; the core's cookies "
            f"{stack.get('tcp_syncookies_sent', 0)}, segments in {stack.get('tcp_segments_in', 0)}"
        )
        transfer.wait_progress(128 << 10, timeout=30)  # it recovers (the first test checks it)
        assert rate_during >= rate_before / 4, (rate_before, rate_during)
    finally:
        transfer.finish()
        echo.stop()
