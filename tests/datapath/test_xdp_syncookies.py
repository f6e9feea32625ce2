"""SYN cookies in the XDP program: SYNs to a steered port that the daemon says is flooded
(``set_flooded``) and over the rate are answered by the program itself (``XDP_TX``) with a
cookie SYN-ACK that the TCP core accepts, because both compute it with
``inetstack/layer4/tcp/syncookie.h`` and the same key. SYNs to a port not flooded go to the
daemon whatever their rate.

The namespaces, veth and frame helpers are ``test_xdp_program``'s. B's veth end runs an
XDP program that passes everything: a veth delivers the ``XDP_TX`` frames of native mode
only to a peer end that runs XDP.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import test_xdp_program
from netfixtures import xdp_attached
from test_xdp_program import (
    IP_A,
    IP_B,
    Pair,
    connect_from_b,
    delta,
    in_netns,
    inet_checksum,
    ip_int,
    ipv4,
    run,
    settle,
    unbound_xsk,
)

from xdpstackd.datapath.xdp_program import COUNTER_NAMES
from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer4.tcp import syncookie
from xdpstackd.inetstack.layer4.tcp.header import ACK, RST, SYN, TcpHeader, parse_tcp
from xdpstackd.inetstack.layer4.tcp.peer import TcpPeer

PORT = 80
ETH_P_ALL = 0x0003
OUR_MSS = 1400

pair = test_xdp_program.pair  # the fixtures
program = test_xdp_program.program


def test_the_counters_include_the_xdp_tx_verdict_and_syncookies() -> None:
    assert COUNTER_NAMES[-3:] == ("tx", "syncookies_sent_xdp", "syn_dropped")


def test_the_programs_period_is_the_cores() -> None:
    text = Path(syncookie.__file__).with_name("syncookie.h").read_text()
    assert f"#define XDPS_SYNCOOKIE_PERIOD_SHIFT {syncookie.PERIOD_SHIFT}\n" in text


def syn(sport: int, isn: int, options: bytes = b"") -> bytes:
    doff = 5 + len(options) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, PORT, isn, 0, doff << 4, SYN, 64240, 0, 0) + options
    pseudo = socket.inet_aton(IP_B) + socket.inet_aton(IP_A) + struct.pack("!HH", 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", inet_checksum(pseudo + tcp)) + tcp[18:]
    return ipv4(IP_B, IP_A, 6, tcp)


MSS_1460_WSCALE_7 = b"\x02\x04\x05\xb4" + b"\x01\x03\x03\x07"  # MSS, NOP, window scale


@contextlib.contextmanager
def capture_on_b(pair: Pair) -> Iterator[socket.socket]:
    """An AF_PACKET socket on B's veth end: every frame in or out of it (ETH_P_ALL: only
    those taps see outgoing frames)."""
    with in_netns(pair.ns_b):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with sock:
        sock.bind((pair.if_b, ETH_P_ALL))  # host order here, unlike socket()
        sock.settimeout(0.5)
        yield sock


def tcp_frames(sock: socket.socket, want: int, timeout: float = 3.0) -> list[bytes]:
    """IPv4/TCP frames captured until ``want`` SYN-ACKs from A:PORT (or the timeout)."""
    frames: list[bytes] = []
    deadline = time.monotonic() + timeout
    synacks = 0
    while synacks < want and time.monotonic() < deadline:
        try:
            frame = sock.recv(2048)
        except TimeoutError:
            continue
        if frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        frames.append(frame)
        if frame[26:30] == socket.inet_aton(IP_A) and frame[47] & (SYN | ACK) == SYN | ACK:
            synacks += 1
    return frames


def from_a(frame: bytes) -> bool:
    return frame[26:30] == socket.inet_aton(IP_A)


def check_synack(pair: Pair, frame: bytes) -> TcpHeader:
    """The frame is a well-formed SYN-ACK from A: addresses swapped, checksums right."""
    assert frame[:6] == pair.mac_b and frame[6:12] == pair.mac_a
    ip = frame[14:34]
    assert inet_checksum(ip) == 0, ip.hex()
    total = struct.unpack("!H", ip[2:4])[0]
    assert ip[8] == 64 and len(frame) == 14 + total
    hdr, payload = parse_tcp(frame[34:], ip_int(IP_A), ip_int(IP_B))  # checks the checksum
    assert hdr.flags == SYN | ACK and not payload and hdr.src_port == PORT
    return hdr


@contextlib.contextmanager
def xdp_pass_on(ns: str, ifname: str) -> Iterator[None]:
    """An XDP program that passes everything, native, on ``ifname`` in ``ns``: a veth
    hands the frames its peer sends with ``XDP_TX`` (native mode) only to an end that runs
    XDP itself (veth_xdp_flush() wakes the peer's NAPI only then)."""
    with xdp_attached(
        ns, ifname, "int xdp_pass(struct xdp_md *ctx) { return XDP_PASS; }", "xdp_pass"
    ):
        yield


@pytest.fixture(autouse=True)
def one_cpu() -> Iterator[None]:
    """The SYN bucket is per CPU, and a veth runs XDP on the CPU that sent the frame: the
    tests spend a bucket with one SYN and expect the next to be over the rate, which holds
    only if both are sent from the same CPU. So the test runs on one."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@pytest.fixture
def peer_xdp_pass(pair: Pair) -> Iterator[Callable[[], None]]:
    """Call it to run ``xdp_pass_on`` B's end for the rest of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda: stack.enter_context(xdp_pass_on(pair.ns_b, pair.if_b))


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["native", "generic"])
def test_syns_over_the_rate_get_cookie_synacks_from_xdp_that_the_core_accepts(
    pair: Pair, program, peer_xdp_pass, mode: str
) -> None:
    if mode == "native":
        peer_xdp_pass()
    prog = program(mode=mode)
    prog.steer_add(0, PORT)
    cookies = syncookie.SynCookies(os.urandom(16))
    prog.set_syncookies(cookies.key_words, rate=1, burst=1, mss=OUR_MSS)
    prog.set_flooded([PORT])
    isns = {40000 + i: 0x10000000 * i + 12345 for i in range(6)}
    before = prog.counters()
    with capture_on_b(pair) as sock:
        pair.send_raw(
            *(pair.eth(0x0800, syn(p, isn, MSS_1460_WSCALE_7)) for p, isn in isns.items())
        )
        frames = tcp_frames(sock, want=5)
    d = settle(prog, before, lambda d: d.get("syncookies_sent_xdp", 0) >= 5)
    assert d["syncookies_sent_xdp"] == d["tx"] == 5, d
    synacks = [check_synack(pair, f) for f in frames if from_a(f) and f[47] & SYN]
    # the first SYN fits the bucket: to the daemon (no AF_XDP socket here: the kernel)
    assert sorted(h.dst_port for h in synacks) == sorted(isns)[1:]
    now = time.monotonic()
    for hdr in synacks:
        isn = isns[hdr.dst_port]
        assert hdr.ack_num.value == isn + 1
        assert hdr.options is not None and hdr.options.mss == OUR_MSS
        assert hdr.options.window_scale is None and hdr.window == 0xFFFF
        mss = cookies.check(
            ip_int(IP_B), ip_int(IP_A), hdr.dst_port, PORT, isn, hdr.seq_num.value, now
        )
        assert mss == 1460


@pytest.mark.integration
def test_a_syn_without_options_gets_a_synack_without_options_and_a_536_cookie(
    pair: Pair, program
) -> None:
    prog = program(mode="generic")
    prog.steer_add(0, PORT)
    cookies = syncookie.SynCookies(os.urandom(16))
    prog.set_syncookies(cookies.key_words, rate=1, burst=1, mss=OUR_MSS)
    prog.set_flooded([PORT])
    with capture_on_b(pair) as sock:
        pair.send_raw(*(pair.eth(0x0800, syn(41000 + i, 777)) for i in range(3)))
        frames = tcp_frames(sock, want=2)
    synacks = [check_synack(pair, f) for f in frames if from_a(f) and f[47] & SYN]
    assert len(synacks) == 2
    for hdr in synacks:
        assert hdr.options is None or hdr.options.mss is None
        got = cookies.check(
            ip_int(IP_B), ip_int(IP_A), hdr.dst_port, PORT, 777, hdr.seq_num.value, time.monotonic()
        )
        assert got == 536


@pytest.mark.integration
def test_syns_within_the_rate_and_with_cookies_off_go_to_the_daemon(pair: Pair, program) -> None:
    prog = program(mode="generic")
    prog.steer_add(0, PORT)
    key = syncookie.SynCookies(os.urandom(16)).key_words
    prog.set_syncookies(key, rate=100_000, burst=100, mss=OUR_MSS)
    prog.set_flooded([PORT])
    before = prog.counters()
    pair.send_raw(*(pair.eth(0x0800, syn(42000 + i, 1)) for i in range(20)))
    d = settle(prog, before, lambda d: d.get("no_xsk", 0) >= 20)
    assert d.get("tx", 0) == 0 and d.get("syncookies_sent_xdp", 0) == 0, d
    prog.set_syncookies(key, rate=0, mss=OUR_MSS)  # off
    before = prog.counters()
    pair.send_raw(*(pair.eth(0x0800, syn(43000 + i, 1)) for i in range(20)))
    d = settle(prog, before, lambda d: d.get("no_xsk", 0) >= 20)
    assert d.get("tx", 0) == 0, d


@pytest.mark.integration
def test_syns_over_the_rate_to_a_port_not_flooded_go_to_the_daemon(pair: Pair, program) -> None:
    """The bench's case: a burst of legitimate connects over the rate, no backlog overflow.
    Only while the daemon says the port is flooded does XDP answer with cookies."""
    prog = program(mode="generic")
    prog.steer_add(0, PORT)
    key = syncookie.SynCookies(os.urandom(16)).key_words
    prog.set_syncookies(key, rate=1, burst=1, mss=OUR_MSS)

    def send_syns(first_sport: int) -> dict[str, int]:
        before = prog.counters()
        pair.send_raw(*(pair.eth(0x0800, syn(first_sport + i, 1)) for i in range(10)))
        return settle(prog, before, lambda d: d.get("no_xsk", 0) + d.get("tx", 0) >= 10)

    d = send_syns(47000)  # nothing flooded
    assert d["no_xsk"] == 10 and d.get("tx", 0) == 0, d
    prog.set_flooded([PORT + 1])  # a neighbour in the same word of the bitmap
    d = send_syns(47100)
    assert d["no_xsk"] == 10 and d.get("tx", 0) == 0, d
    prog.set_flooded([PORT])
    d = send_syns(47200)
    assert d.get("syncookies_sent_xdp", 0) == d.get("tx", 0) >= 9, d  # the bucket's 1 passes
    prog.set_flooded([])  # the flood is over
    d = send_syns(47300)
    assert d["no_xsk"] == 10 and d.get("tx", 0) == 0, d


@pytest.mark.integration
def test_the_flooded_map_holds_exactly_the_ports_set(pair: Pair, program) -> None:
    prog = program(mode="generic")
    assert prog.flooded() == []
    prog.set_flooded([1, 80, 81, 127, 128, 50000, 65535])
    assert prog.flooded() == [1, 80, 81, 127, 128, 50000, 65535]
    prog.set_flooded({81, 443})
    assert prog.flooded() == [81, 443]
    prog.set_flooded(())
    assert prog.flooded() == []
    for bad in (0, 65536, -1):
        with pytest.raises(ValueError):
            prog.set_flooded([bad])


@pytest.mark.integration
def test_syns_to_the_daemons_ephemeral_ports_always_go_to_the_daemon(pair: Pair, program) -> None:
    """Its own connections' ports: a SYN there is the daemon's to answer (challenge ACK)."""
    prog = program(mode="generic")
    prog.steer_add(0, 50000)
    key = syncookie.SynCookies(os.urandom(16)).key_words
    prog.set_syncookies(key, rate=1, burst=1, mss=OUR_MSS, skip_ports=(49152, 65535))
    prog.set_flooded([50000])  # even flooded
    before = prog.counters()
    frames = [
        ipv4(IP_B, IP_A, 6, struct.pack("!HHIIBBHHH", 46000 + i, 50000, 1, 0, 0x50, SYN, 512, 0, 0))
        for i in range(5)
    ]
    pair.send_raw(*(pair.eth(0x0800, f) for f in frames))
    d = settle(prog, before, lambda d: d.get("no_xsk", 0) >= 5)
    assert d.get("tx", 0) == 0 and d.get("syncookies_sent_xdp", 0) == 0, d


@pytest.mark.integration
def test_syns_over_both_the_daemons_and_the_cookie_rate_are_dropped(pair: Pair, program) -> None:
    prog = program(mode="generic")
    prog.steer_add(0, PORT)
    key = syncookie.SynCookies(os.urandom(16)).key_words
    prog.set_syncookies(key, rate=1, burst=1, mss=OUR_MSS, cookie_rate=1)
    prog.set_flooded([PORT])
    before = prog.counters()
    pair.send_raw(*(pair.eth(0x0800, syn(45000 + i, 1)) for i in range(5)))
    d = settle(prog, before, lambda d: d.get("syn_dropped", 0) >= 3)
    assert d["syncookies_sent_xdp"] == d["tx"] == 1, d
    assert d["syn_dropped"] == d["dropped"] == 3, d


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["native", "generic"])
def test_a_kernel_clients_ack_of_an_xdp_cookie_opens_a_connection_in_the_core(
    pair: Pair, program, peer_xdp_pass, mode: str
) -> None:
    """B's kernel connects; XDP answers its SYN with a cookie; B's ACK (captured) is fed
    to a TCP core with the program's key: it opens the connection, data included."""
    if mode == "native":
        peer_xdp_pass()
    prog = program(mode=mode)
    prog.steer_add(0, PORT)
    core = TcpPeer(TcpConfig(), ip_int(IP_A))
    core.isn.cookies.external = True
    lqd = core.socket()
    core.bind(lqd, (IP_A, PORT))
    core.listen(lqd)
    prog.set_syncookies(core.isn.cookies.key_words, rate=1, burst=1, mss=OUR_MSS)
    prog.set_flooded([PORT])
    # B's segments are captured on their way out: with their checksums filled in, please
    run("ip", "netns", "exec", pair.ns_b, "ethtool", "-K", pair.if_b, "tx", "off")
    with unbound_xsk() as xsk:  # A's kernel must not see (and reset) B's ACK and data
        prog.set_xsk(0, xsk.fileno())
        pair.send_raw(pair.eth(0x0800, syn(44000, 1)))  # takes the bucket's one SYN
        with capture_on_b(pair) as sock:
            with connect_from_b(pair, PORT) as client:
                client.sendall(b"through a cookie")
            frames = tcp_frames(sock, want=1)
            frames += tcp_frames(sock, want=1, timeout=0.5)  # and what followed
    from_b = [f for f in frames if not from_a(f)]
    ack = next(f for f in from_b if f[47] & (SYN | ACK | RST) == ACK)
    total = struct.unpack("!H", ack[16:18])[0]
    core.receive(ip_int(IP_B), ip_int(IP_A), ack[34 : 14 + total], time.monotonic())
    assert core.counters["tcp_syncookies_recv"] == 1, core.counters
    data = next(f for f in from_b if not f[47] & SYN and struct.unpack("!H", f[16:18])[0] > 40)
    total = struct.unpack("!H", data[16:18])[0]
    core.receive(ip_int(IP_B), ip_int(IP_A), data[34 : 14 + total], time.monotonic())
    core.accept(lqd)
    (accepted,) = core.poll_completions()
    qd = accepted.new_qd
    assert core.snapshot(qd)["flow_control"]["mss"] == 1460  # B's, through the cookie
    core.pop(qd, None, time.monotonic())
    (popped,) = core.poll_completions()
    assert popped.data == b"through a cookie"
    assert delta(prog, dict.fromkeys(COUNTER_NAMES, 0))["syncookies_sent_xdp"] >= 1
