"""Hostile frames on the wire: raw Ethernet frames built with scapy and written from the
peer namespace onto the veth, at a real ``xdpstackd``.

One daemon serves the whole module. Throughout it an xdpstack <-> kernel echo transfer
runs (:class:`~hostile_wire.EchoTransfer`, every echo compared, the kernel's sha256 of the
stream checked at the end), and after every attack it must still make progress. Idle
"victim" connections (a kernel socket in the peer namespace connected to an xdpstack
listener) take the attacks that need exact sequence numbers, read from the daemon's
CONNECTIONS control reply, and must still carry data both ways afterwards.

For every input: the daemon drops it and counts it under a reason (``STATS``; the XDP
program's counters for what it hands to the kernel), answers only as RFC 9293 / RFC 5961
say (never a RST for a RST: no RST loop; challenge ACKs rate-limited), and stays up with no
internal error. Each test prints its rows of the table of inputs and outcomes
(``pytest -s``).
"""

from __future__ import annotations

import errno
import json
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hostile_wire import (
    ACK,
    PSH,
    RST,
    SYN,
    URG,
    EchoTransfer,
    KernelConn,
    Wire,
    counters_delta,
    fix_tcp_checksum,
    inet_checksum,
    mac_str,
    tcp_frame,
    tcp_frame_fast,
    xdp_delta,
)
from netfixtures import kernel_tcp_server
from scapy.layers.inet import IP, TCP, UDP, IPOption_EOL, IPOption_NOP
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw
from xdpd_harness import REPO, DaemonLab, DaemonProcess, wait_until

import xdpstack
from xdpstack.protocol import Op

pytestmark = pytest.mark.integration

LISTEN_PORT = 7400  # wildcard listener (0.0.0.0): the XDP program steers {0, 7400}
VICTIM_PORT = 7401  # listener on the stack address: idle victims connect here
CHALLENGE_ACK_PER_S = 1000  # tcp.challenge_ack_per_s (the default)
INVALID_ACK_INTERVAL_S = 0.5  # one ACK per half second for bare out-of-window segments
IO_TIMEOUT = 20.0
#: Frames a second for storms whose every frame is accounted for: the daemon keeps up
#: (faster, frames are lost in the AF_XDP rx ring before it sees them).
PACED = 8000

CONFIG = '[daemon]\nlog_level = "info"\n'

FAST_KW = {"flags", "seq", "ack", "window", "payload", "urgptr"}

#: The table of inputs and outcomes, printed by the last test of the module.
TABLE: list[tuple[str, str, str]] = []


def row(what: str, outcome: str, answer: str) -> None:
    TABLE.append((what, outcome, answer))
    print(f"  {what:<58} | {outcome:<60} | {answer}")


def fmt(delta: dict[str, int], keys: tuple[str, ...] | None = None) -> str:
    keep = {k: v for k, v in delta.items() if keys is None or k in keys}
    return ", ".join(f"{k}+{v}" for k, v in keep.items()) or "-"


# =================================================================================== arena
@dataclass
class Arena:
    d: DaemonProcess
    wire: Wire
    lib: xdpstack.Lib
    transfer: EchoTransfer
    victims_listener: int
    listener: int
    rng: random.Random = field(default_factory=lambda: random.Random(5961))

    @property
    def peer_mac(self) -> bytes:
        return self.d.pair.peer_mac

    @property
    def stack_mac(self) -> bytes:
        return self.d.pair.host_mac

    def frame(self, sport: int, dport: int = LISTEN_PORT, **kw: Any) -> bytes:
        """An Ethernet/IPv4/TCP frame from the peer to the stack (scapy builds it; plain
        ones, as storms need thousands, come from a template built the same way)."""
        src = kw.pop("src", self.d.peer_ip)
        dst = kw.pop("dst", self.d.stack_ip)
        build = tcp_frame if set(kw) - FAST_KW else tcp_frame_fast
        return build(self.peer_mac, self.stack_mac, src, dst, sport, dport, **kw)

    def ether(self, **kw: Any) -> Ether:
        return Ether(src=mac_str(self.peer_mac), dst=mac_str(self.stack_mac), **kw)

    def ip(self, **kw: Any) -> IP:
        kw.setdefault("src", self.d.peer_ip)
        kw.setdefault("dst", self.d.stack_ip)
        return IP(**kw)

    def stats(self) -> dict[str, Any]:
        return self.d.stats()

    def transfer_conn(self) -> tuple[int, int]:
        """(daemon-side port, kernel-side port) of the running transfer."""
        return self.transfer.local[1], self.transfer.remote[1]

    def settle(
        self, before: dict[str, Any], want: dict[str, int], timeout: float = 5.0
    ) -> tuple[dict[str, Any], dict[str, int], dict[str, int]]:
        """Poll STATS until every ``want`` counter (``xdp.NAME`` for the XDP program's)
        grew by at least its value; (stats, stack delta, xdp delta). Raises on timeout."""
        latest: dict[str, Any] = {}

        def reached() -> bool:
            latest.clear()
            latest.update(self.stats())
            sd, xd = counters_delta(before, latest), xdp_delta(before, latest)
            return all(
                (xd if k.startswith("xdp.") else sd).get(k.removeprefix("xdp."), 0) >= v
                for k, v in want.items()
            )

        wait_until(
            reached,
            timeout,
            f"counters {want}",
            0.02,
            lambda: (
                f"stack delta: {counters_delta(before, latest)}\n"
                f"xdp delta: {xdp_delta(before, latest)}"
            ),
        )
        return latest, counters_delta(before, latest), xdp_delta(before, latest)

    def settle_stable(self, before: dict[str, Any], key: str, timeout: float = 15.0) -> None:
        """Wait until stack counter ``key`` stops growing (0.5 s without change)."""
        last, since = -1, time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            value = counters_delta(before, self.stats()).get(key, 0)
            if value != last:
                last, since = value, time.monotonic()
            elif time.monotonic() - since >= 0.5:
                return
            time.sleep(0.05)

    def ring_losses(self, before: dict[str, Any], after: dict[str, Any]) -> int:
        """Frames the kernel could not put in the AF_XDP rx ring between two STATS."""
        b, a = before.get("datapath", {}), after.get("datapath", {})
        return sum(
            int(a.get(k, 0)) - int(b.get(k, 0))
            for k in ("kernel_rx_dropped", "kernel_rx_ring_full")
        )

    def quiet(self, seconds: float = 0.3) -> None:
        time.sleep(seconds)

    def healthy(self, progress: int = 128 << 10) -> None:
        """The daemon runs, counted no internal error, and the transfer moves on."""
        assert self.d.running, self.d.describe()
        stats = self.stats()
        assert stats["stack"].get("stack_internal_errors", 0) == 0, stats["stack"]
        assert stats["api"]["internal_errors"] == 0, stats["api"]
        self.transfer.wait_progress(progress, timeout=IO_TIMEOUT)

    def victim(self) -> Victim:
        return Victim(self)


class Victim:
    """An idle established connection: kernel client (peer namespace) -> xdpstack."""

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
        lib = arena.lib
        qt = lib.accept(arena.victims_listener)
        self.kernel = KernelConn(arena.d.peer_ns, (arena.d.stack_ip, VICTIM_PORT))
        self.qd = lib.wait(qt, timeout=IO_TIMEOUT).new_qd
        self.kport = self.kernel.local[1]
        self.rounds = 0

    def conn(self) -> dict[str, Any]:
        for c in self.arena.d.connections():
            cm = c["connection_management"]
            if tuple(cm["remote"]) == (self.arena.d.peer_ip, self.kport):
                return c
        raise AssertionError(f"no connection from port {self.kport} in CONNECTIONS")

    def seqs(self) -> tuple[int, int, int]:
        """(RCV.NXT, SND.UNA, SND.NXT) as the daemon has them."""
        od = self.conn()["ordered_delivery"]
        return od["rcv_nxt"], od["snd_una"], od["snd_nxt"]

    def frame(self, **kw: Any) -> bytes:
        return self.arena.frame(self.kport, VICTIM_PORT, **kw)

    def answers(self, since: float) -> list[Any]:
        return self.arena.wire.segments(
            since, lambda s: s.dport == self.kport and s.sport == VICTIM_PORT
        )

    def alive(self) -> int:
        """Data both ways, and the daemon's state still ESTABLISHED; bytes received."""
        self.rounds += 1
        lib = self.arena.lib
        ping = f"ping {self.rounds} ".encode() * 50
        self.kernel.send(ping)
        got = bytearray()
        while len(got) < len(ping):
            data = lib.wait(lib.pop(self.qd, len(ping) - len(got)), timeout=IO_TIMEOUT).data
            assert data, "victim: EOF"
            got += data
        assert bytes(got) == ping, "victim: the daemon delivered other bytes than were sent"
        pong = b"pong " + ping
        lib.wait(lib.push(self.qd, pong), timeout=IO_TIMEOUT)
        assert self.kernel.recv_exactly(len(pong)) == pong
        assert self.conn()["connection_management"]["state"] == "ESTABLISHED"
        return len(ping)

    def close(self) -> None:
        try:
            self.arena.lib.abort(self.qd)
        except OSError:
            pass
        self.kernel.close()


@pytest.fixture(scope="module")
def arena(module_lab: DaemonLab) -> Any:
    d = module_lab.daemon(name="xdpstackd-wire", config_text=CONFIG)
    echo = kernel_tcp_server(d.peer_ns, 0, "echo", io_timeout=300)
    wire = Wire(d.peer_ns, d.peer_if, d.pair.peer_mac, d.pair.host_mac)
    lib = d.client()
    listener = lib.socket()
    lib.bind(listener, ("0.0.0.0", LISTEN_PORT))
    lib.listen(listener, 64)
    victims = lib.socket()
    lib.bind(victims, (d.stack_ip, VICTIM_PORT))
    lib.listen(victims, 64)
    transfer = EchoTransfer(str(d.socket_path), (d.peer_ip, echo.port)).start()
    a = Arena(d, wire, lib, transfer, victims, listener)
    try:
        a.transfer.wait_progress(256 << 10)
        print(
            f"\ntransfer {transfer.local} <-> {transfer.remote}; listeners {LISTEN_PORT}, "
            f"{VICTIM_PORT}"
        )
        yield a
        # the transfer ran through every attack: all of it arrived, in order, unchanged
        total, digest = transfer.finish()
        (conn,) = echo.results(1, timeout=IO_TIMEOUT)
        assert conn["error"] is None and conn["eof"], conn
        assert conn["rx_bytes"] == conn["tx_bytes"] == total, (conn, total)
        assert conn["rx_sha256"] == conn["tx_sha256"] == digest, conn
        print(
            f"\ntransfer alongside every attack: {total} bytes echoed, sha256 {digest[:16]}..."
            " equal on both ends"
        )
    finally:
        wire.close()
        echo.stop()


def test_fast_frames_are_the_frames_scapy_builds() -> None:
    rng = random.Random(1)
    macs = (bytes.fromhex("020000000002"), bytes.fromhex("020000000001"))
    for _ in range(50):
        kw = {
            "flags": rng.getrandbits(8),
            "seq": rng.getrandbits(32),
            "ack": rng.getrandbits(32),
            "window": rng.getrandbits(16),
            "urgptr": rng.getrandbits(16),
            "payload": rng.randbytes(rng.randrange(3)),
        }
        args = (*macs, "10.77.0.2", "10.77.0.1", rng.randrange(65536), rng.randrange(65536))
        assert tcp_frame_fast(*args, **kw) == tcp_frame(*args, **kw), kw


# =================================================================== malformed frames
@dataclass
class Case:
    name: str
    build: Callable[[Arena, int], bytes | None]  # (arena, source port) -> frame
    want: dict[str, int]  # counters that must grow by >= copies * value
    answer: str | None = None  # "R": RST, "SA": SYN-ACK, None: no answer at all
    note: str = ""


def _stray_ack(a: Arena, sport: int, **kw: Any) -> bytes:
    return a.frame(sport, flags=ACK, seq=1000, ack=2000, **kw)


def _with_options(a: Arena, sport: int, opts: bytes, flags: int = ACK) -> bytes:
    assert len(opts) % 4 == 0
    return a.frame(
        sport, flags=flags, seq=1000, ack=2000, payload=opts, tcp_kw={"dataofs": 5 + len(opts) // 4}
    )


def _truncate_tcp(a: Arena, sport: int) -> bytes:
    frame = bytearray(_stray_ack(a, sport)[: 14 + 20 + 12])
    frame[16:18] = (32).to_bytes(2, "big")
    frame[24:26] = b"\0\0"
    frame[24:26] = inet_checksum(bytes(frame[14:34])).to_bytes(2, "big")
    return bytes(frame)


def _version6(a: Arena, sport: int) -> bytes:
    frame = bytearray(_stray_ack(a, sport))
    frame[14] = 0x65
    return bytes(frame)


def _tcp_zero_checksum(a: Arena, sport: int) -> bytes:
    frame = bytearray(_stray_ack(a, sport))
    if frame[50:52] == b"\0\0":  # the right sum happens to be 0: make it wrong
        frame[48] ^= 1
    frame[50:52] = b"\0\0"
    return bytes(frame)


def _send_or_refused(a: Arena, frame: bytes) -> str | None:
    try:
        a.wire.send(frame)
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return None


XDP_M = {"xdp.malformed": 1}
CASES: list[Case] = [
    # ---- frames the XDP program hands to the kernel (never reach the daemon)
    Case("eth: header only (14 bytes), IPv4 type", lambda a, p: bytes(a.ether(type=0x0800)), XDP_M),
    Case("ipv4: truncated, 10 of 20 header bytes", lambda a, p: _stray_ack(a, p)[:24], XDP_M),
    Case("ipv4: version 6 in an IPv4 frame", _version6, XDP_M),
    Case("ipv4: IHL 3 (< 5)", lambda a, p: _stray_ack(a, p, ip_kw={"ihl": 3}), XDP_M),
    Case(
        "ipv4: IHL 15, header past the frame end",
        lambda a, p: _stray_ack(a, p, ip_kw={"ihl": 15}),
        XDP_M,
    ),
    Case(
        "ipv4: total length 1000 > frame", lambda a, p: _stray_ack(a, p, ip_kw={"len": 1000}), XDP_M
    ),
    Case("ipv4: total length 10 < header", lambda a, p: _stray_ack(a, p, ip_kw={"len": 10}), XDP_M),
    Case("tcp: header cut at 12 bytes", _truncate_tcp, XDP_M),
    Case("tcp: data offset 4 (< 5)", lambda a, p: _stray_ack(a, p, tcp_kw={"dataofs": 4}), XDP_M),
    Case(
        "ipv4: fragment, MF set, to a steered port",
        lambda a, p: _stray_ack(a, p, ip_kw={"flags": "MF"}),
        {"xdp.fragments": 1},
    ),
    Case(
        "ipv4: fragment, offset 8, to a steered port",
        lambda a, p: _stray_ack(a, p, ip_kw={"frag": 1}),
        {"xdp.fragments": 1},
    ),
    Case(
        "eth: 802.1Q-tagged TCP to a steered port",
        lambda a, p: bytes(
            a.ether() / Dot1Q(vlan=5) / a.ip() / TCP(sport=p, dport=LISTEN_PORT, flags="A")
        ),
        {"xdp.vlan": 1},
    ),
    Case(
        "eth: unknown ethertype 0x88b5",
        lambda a, p: bytes(a.ether(type=0x88B5) / Raw(b"\xa5" * 46)),
        {"xdp.passed": 1},
    ),
    Case("eth: 60 zero bytes", lambda a, p: b"\0" * 60, {"xdp.passed": 1}),
    Case(
        "ipv4: destination another address, steered port number",
        lambda a, p: _stray_ack(a, p, dst="10.77.0.99"),
        {"xdp.passed": 1},
    ),
    Case(
        "ipv4: UDP to the steered port number",
        lambda a, p: bytes(a.ether() / a.ip() / UDP(sport=p, dport=LISTEN_PORT) / b"x"),
        {"xdp.passed": 1},
    ),
    # ---- frames that reach the daemon and are dropped there
    Case(
        "eth: destination MAC not ours (unicast)",
        lambda a, p: bytes(
            Ether(src=mac_str(a.peer_mac), dst="02:00:00:00:00:99")
            / a.ip()
            / TCP(sport=p, dport=LISTEN_PORT, flags="A")
        ),
        {"eth_drop_not_for_us": 1},
    ),
    Case(
        "ipv4: header checksum wrong",
        lambda a, p: _stray_ack(a, p, ip_chksum=0x1234),
        {"ipv4_drop_bad_checksum": 1},
    ),
    Case(
        "ipv4: LAND (source = destination = our address:port, SYN)",
        lambda a, p: a.frame(LISTEN_PORT, src=a.d.stack_ip, flags=SYN, seq=1),
        {"ipv4_drop_bad_source": 1},
    ),
    Case(
        "ipv4: source 0.0.0.0",
        lambda a, p: a.frame(p, src="0.0.0.0", flags=SYN),
        {"ipv4_drop_bad_source": 1},
    ),
    Case(
        "ipv4: source 255.255.255.255",
        lambda a, p: a.frame(p, src="255.255.255.255", flags=SYN),
        {"ipv4_drop_bad_source": 1},
    ),
    Case(
        "ipv4: source 127.0.0.1",
        lambda a, p: a.frame(p, src="127.0.0.1", flags=SYN),
        {"ipv4_drop_bad_source": 1},
    ),
    Case(
        "ipv4: source 224.0.0.1 (multicast)",
        lambda a, p: a.frame(p, src="224.0.0.1", flags=SYN),
        {"ipv4_drop_bad_source": 1},
    ),
    Case(
        "ipv4: source the subnet broadcast 10.77.0.255",
        lambda a, p: a.frame(p, src="10.77.0.255", flags=SYN),
        {"ipv4_drop_bad_source": 1},
    ),
    Case(
        "tcp: checksum wrong",
        lambda a, p: _stray_ack(a, p, tcp_chksum=0xBEEF),
        {"tcp_drop_bad_checksum": 1},
    ),
    Case("tcp: checksum zero", _tcp_zero_checksum, {"tcp_drop_bad_checksum": 1}),
    Case(
        "tcp: data offset 15, past the segment end",
        lambda a, p: _stray_ack(a, p, tcp_kw={"dataofs": 15}),
        {"tcp_drop_bad_data_offset": 1},
    ),
    Case("tcp: source port 0", lambda a, p: _stray_ack(a, 0), {"tcp_drop_port_zero": 1}),
    Case(
        "tcp option: kind 0x22, length 0",
        lambda a, p: _with_options(a, p, b"\x22\x00\x00\x00"),
        {"tcp_drop_bad_option_length": 1},
    ),
    Case(
        "tcp option: MSS, length 0",
        lambda a, p: _with_options(a, p, b"\x02\x00\x05\xb4"),
        {"tcp_drop_bad_option_length": 1},
    ),
    Case(
        "tcp option: kind 0x22, length 1",
        lambda a, p: _with_options(a, p, b"\x22\x01\x01\x01"),
        {"tcp_drop_bad_option_length": 1},
    ),
    Case(
        "tcp option: MSS, length 3",
        lambda a, p: _with_options(a, p, b"\x02\x03\x05\x01"),
        {"tcp_drop_bad_option_length": 1},
    ),
    Case(
        "tcp option: window scale, length 4",
        lambda a, p: _with_options(a, p, b"\x03\x04\x07\x00"),
        {"tcp_drop_bad_option_length": 1},
    ),
    Case(
        "tcp option: SACK-permitted, length 3",
        lambda a, p: _with_options(a, p, b"\x04\x03\x00\x01"),
        {"tcp_drop_bad_option_length": 1},
    ),
    Case(
        "tcp option: SACK, length 3",
        lambda a, p: _with_options(a, p, b"\x05\x03\x00\x01"),
        {"tcp_drop_bad_option_length": 1},
    ),
    Case(
        "tcp option: SACK, length 11",
        lambda a, p: _with_options(a, p, b"\x05\x0b" + b"\0" * 9 + b"\x01"),
        {"tcp_drop_bad_option_length": 1},
    ),
    Case(
        "tcp option: timestamps, length 9",
        lambda a, p: _with_options(a, p, b"\x08\x09" + b"\0" * 7 + b"\x01\x01\x01"),
        {"tcp_drop_bad_option_length": 1},
    ),
    Case(
        "tcp option: length 30 in an 8-byte option area",
        lambda a, p: _with_options(a, p, b"\x22\x1e" + b"\0" * 6),
        {"tcp_drop_bad_option_length": 1},
    ),
    Case(
        "tcp option: kind in the last byte, no length byte",
        lambda a, p: _with_options(a, p, b"\x01\x01\x01\x22"),
        {"tcp_drop_bad_option_length": 1},
    ),
    # ---- unusual but valid: processed (a stray ACK to a listener is answered with RST)
    Case(
        "tcp option: unknown kind 0xfe, length 4 (skipped)",
        lambda a, p: _with_options(a, p, b"\xfe\x04\xab\xcd"),
        {"tcp_resets_out": 1},
        "R",
    ),
    Case(
        "tcp options: 40 NOPs",
        lambda a, p: _with_options(a, p, b"\x01" * 40),
        {"tcp_resets_out": 1},
        "R",
    ),
    Case(
        "tcp options: EOL, then garbage",
        lambda a, p: _with_options(a, p, b"\x00\xff\xff\xff"),
        {"tcp_resets_out": 1},
        "R",
    ),
    Case(
        "ipv4: options (IHL 6, NOPs + EOL)",
        lambda a, p: _stray_ack(a, p, ip_kw={"options": [IPOption_NOP()] * 3 + [IPOption_EOL()]}),
        {"tcp_resets_out": 1},
        "R",
    ),
    Case(
        "ipv4: 30 bytes of trailer past the total length",
        lambda a, p: _stray_ack(a, p) + b"\xee" * 30,
        {"tcp_resets_out": 1},
        "R",
    ),
    Case(
        "tcp: URG with urgent pointer past the data",
        lambda a, p: a.frame(p, flags=ACK | URG, seq=1, ack=2, urgptr=60000, payload=b"u"),
        {"tcp_resets_out": 1},
        "R",
    ),
    Case(
        "tcp: SYN, window scale 200 (> 14), MSS 0",
        lambda a, p: a.frame(p, flags=SYN, seq=7, options=[("MSS", 0), ("WScale", 200)]),
        {"tcp_segments_out": 1},
        "SA",
    ),
    Case(
        "tcp: SYN carrying 1000 bytes of data",
        lambda a, p: a.frame(p, flags=SYN, seq=7, payload=b"d" * 1000),
        {"tcp_segments_out": 1},
        "SA",
    ),
    Case(
        "eth: jumbo frame, 9000 bytes on a 1500 MTU link",
        lambda a, p: _stray_ack(a, p, payload=b"j" * 8946),
        {},
        None,
        "refused by the sending kernel",
    ),
]


def test_malformed_and_odd_frames_are_dropped_and_counted(arena: Arena) -> None:
    """Each bad frame 5 times; the drop counter of its reason grows (the XDP program's
    for frames it hands to the kernel), and a dropped frame draws no answer."""
    a = arena
    copies = 5
    print("\nmalformed frames (x5 each):")
    checks: list[tuple[Case, int, float]] = []
    for i, case in enumerate(CASES):
        sport = 20000 + i
        frame = case.build(a, sport)
        assert frame is not None
        before = a.stats()
        t0 = time.monotonic()
        refused = None
        for _ in range(copies):
            refused = _send_or_refused(a, frame)
            if refused:
                break
        if refused:
            row(case.name, f"not sent: {refused} ({case.note})", "-")
            assert case.note, f"{case.name}: the frame could not be sent ({refused})"
            continue
        want = {k: v * copies for k, v in case.want.items()}
        _, sd, xd = a.settle(before, want)
        shown = (*(k.removeprefix("xdp.") for k in case.want), "tcp_resets_out")
        outcome = "; ".join(
            part
            for part in (
                fmt(sd, shown) if any(not k.startswith("xdp.") for k in case.want) else "",
                ("xdp: " + fmt(xd, shown)) if any(k.startswith("xdp.") for k in case.want) else "",
            )
            if part
        )
        checks.append((case, sport, t0))
        row(case.name, outcome or "-", case.answer or "none")
    a.quiet(0.5)
    for case, sport, t0 in checks:
        answers = a.wire.segments(t0, lambda s, p=sport: s.dport == p)
        kinds = {("SA" if s.flags & SYN else "R" if s.flags & RST else "A") for s in answers}
        if case.answer is None:
            assert not answers, f"{case.name}: a dropped frame was answered: {answers}"
        else:
            assert kinds == {case.answer}, f"{case.name}: answers {answers}"
    a.healthy()


# =================================================================== all 256 flag combinations
def _flag_name(flags: int) -> str:
    names = "FSRPAUEC"
    return "".join(n for i, n in enumerate(names) if flags & (1 << i)) or "none"


def test_all_256_flag_combinations_to_a_listener(arena: Arena) -> None:
    """RFC 9293 3.10.7.2 (LISTEN): RST -> ignored; ACK -> RST; SYN -> SYN-ACK; anything
    else dropped. The SYN-ACKs go to ports the kernel peer does not use, so the kernel
    resets those half-open connections again."""
    a = arena
    base = 31000
    before = a.stats()
    t0 = time.monotonic()
    rng = a.rng
    frames = [
        a.frame(
            base + f,
            flags=f,
            seq=rng.getrandbits(32),
            ack=rng.getrandbits(32),
            payload=b"flags" if f & 0x0F == PSH else b"",
        )
        for f in range(256)
    ]
    a.wire.send_many(frames, rate=PACED)
    expect = {"R": 0, "SA": 0, "none": 0}
    for f in range(256):
        expect["none" if f & RST else "R" if f & ACK else "SA" if f & SYN else "none"] += 1
    _, sd, _ = a.settle(
        before,
        {"tcp_resets_out": expect["R"], "tcp_drop_listen_no_syn": 32, "tcp_segments_in": 256},
    )
    a.quiet(0.5)
    got: dict[int, set[str]] = {}
    for s in a.wire.segments(t0, lambda s: base <= s.dport < base + 256 and s.sport == LISTEN_PORT):
        got.setdefault(s.dport - base, set()).add(
            "SA" if s.flags & SYN else "R" if s.flags & RST else "A"
        )
    wrong = []
    for f in range(256):
        want = "none" if f & RST else "R" if f & ACK else "SA" if f & SYN else "none"
        have = got.get(f, {"none"})
        if have != {want}:
            wrong.append(f"{_flag_name(f)}: {have} (want {want})")
    assert not wrong, "answers not as RFC 9293 3.10.7.2 says:\n" + "\n".join(wrong)
    stats = a.stats()
    assert counters_delta(before, stats).get("tcp_resets_out", 0) == expect["R"]
    row(
        "256 flag combinations -> listener (random seq/ack)",
        fmt(sd, ("tcp_resets_out", "tcp_drop_listen_no_syn", "tcp_segments_in")),
        f"RST x{expect['R']} (ACK), SYN-ACK x{expect['SA']} (SYN), none x{expect['none']}",
    )
    a.healthy()


def test_all_256_flag_combinations_blind_at_the_running_transfer(arena: Arena) -> None:
    """Every flag combination with random sequence and acknowledgment numbers (and with
    data for half of them), four times over, on the running transfer's 4-tuple: nothing
    gets in (the transfer's sha256 is checked at the end), only challenge ACKs and
    duplicate ACKs come back, never a RST."""
    a = arena
    lport, rport = a.transfer_conn()
    rng = a.rng
    before = a.stats()
    t0 = time.monotonic()
    frames = [
        a.frame(
            rport,
            lport,
            flags=f,
            seq=rng.getrandbits(32),
            ack=rng.getrandbits(32),
            payload=rng.randbytes(100) if (f + rep) % 2 else b"",
        )
        for rep in range(4)
        for f in range(256)
    ]
    a.wire.send_many(frames, rate=PACED)
    _, sd, _ = a.settle(before, {"tcp_segments_in": len(frames)})
    a.quiet(0.3)
    sd = counters_delta(before, a.stats())
    assert sd.get("tcp_resets_out", 0) == 0, sd
    assert sd.get("tcp_resets_in", 0) == 0, sd
    rsts = a.wire.segments(t0, lambda s: s.sport == lport and s.dport == rport and s.flags & RST)
    assert not rsts
    shown = (
        "tcp_drop_out_of_window",
        "tcp_drop_rst_out_of_window",
        "tcp_syn_challenged",
        "tcp_rst_in_window_challenged",
        "tcp_challenge_acks",
        "tcp_challenge_acks_suppressed",
        "tcp_invalid_acks_suppressed",
        "tcp_resets_out",
    )
    row(
        "256 flags x4, random seq/ack (+data) -> running transfer",
        fmt(sd, shown),
        "challenge and duplicate ACKs, no RST; stream intact",
    )
    a.healthy()


def test_all_256_flag_combinations_in_window_with_blind_ack_at_an_idle_connection(
    arena: Arena,
) -> None:
    """Every flag combination with a sequence number inside the receive window (not at
    RCV.NXT) and an acknowledgment number the attacker cannot know (2**30 ahead, 2**30
    behind): RST and SYN draw challenge ACKs (RFC 5961 3, 4), the rest is dropped at the
    ACK check (RFC 5961 5) or for lack of ACK; no data or FIN gets in, no state moves."""
    a = arena
    v = a.victim()
    try:
        v.alive()
        rcv_nxt, snd_una, snd_nxt = v.seqs()
        before = a.stats()
        t0 = time.monotonic()
        frames = [
            v.frame(
                flags=f,
                seq=rcv_nxt + 1000,
                ack=snd_una + shift,
                payload=b"EVIL" if f & 1 == 0 else b"",
            )
            for shift in (1 << 30, -(1 << 30))
            for f in range(256)
        ]
        a.wire.send_many(frames, rate=PACED)
        _, sd, _ = a.settle(before, {"tcp_segments_in": len(frames)})
        a.quiet(0.3)
        sd = counters_delta(before, a.stats())
        assert sd.get("tcp_resets_out", 0) == 0 and sd.get("tcp_resets_in", 0) == 0, sd
        # 2 x 128 with RST: challenged; 2 x 64 SYN without RST: challenged
        assert sd.get("tcp_rst_in_window_challenged", 0) == 256, sd
        assert sd.get("tcp_syn_challenged", 0) == 128, sd
        assert sd.get("tcp_drop_no_ack_flag", 0) == 64, sd  # neither SYN, RST nor ACK
        assert sd.get("tcp_drop_ack_too_old", 0) == 32, sd
        assert sd.get("tcp_drop_ack_of_unsent", 0) == 32, sd
        assert v.seqs() == (rcv_nxt, snd_una, snd_nxt), "the victim's state moved"
        answers = v.answers(t0)
        assert not [s for s in answers if s.flags & RST]
        v.alive()
        shown = (
            "tcp_rst_in_window_challenged",
            "tcp_syn_challenged",
            "tcp_drop_no_ack_flag",
            "tcp_drop_ack_too_old",
            "tcp_drop_ack_of_unsent",
            "tcp_challenge_acks",
            "tcp_challenge_acks_suppressed",
        )
        row(
            "256 flags x2, in-window seq, blind ack -> idle connection",
            fmt(sd, shown),
            f"{len(answers)} ACKs, no RST; state unchanged; data both ways after",
        )
    finally:
        v.close()
    a.healthy()


# =================================================================== RST, SYN, data injection
def test_rst_exact_only_resets_and_bad_checksums_never_do(arena: Arena) -> None:
    """An RST exactly at RCV.NXT resets (RFC 5961 3.2), but not with a bad TCP or IPv4
    checksum, and never draws a RST back."""
    a = arena
    v = a.victim()
    try:
        rcv_nxt, snd_una, _ = v.seqs()
        before = a.stats()
        a.wire.send(v.frame(flags=RST, seq=rcv_nxt, tcp_chksum=0x0BAD))
        a.wire.send(v.frame(flags=RST | ACK, seq=rcv_nxt, ack=snd_una, ip_chksum=0x0BAD))
        _, sd, _ = a.settle(before, {"tcp_drop_bad_checksum": 1, "ipv4_drop_bad_checksum": 1})
        v.alive()
        row(
            "RST at RCV.NXT, bad TCP / IPv4 checksum -> idle connection",
            fmt(sd, ("tcp_drop_bad_checksum", "ipv4_drop_bad_checksum")),
            "none; connection unharmed",
        )
        rcv_nxt, snd_una, _ = v.seqs()
        before = a.stats()
        t0 = time.monotonic()
        qt = a.lib.pop(v.qd)
        a.wire.send(v.frame(flags=RST, seq=rcv_nxt))
        _, sd, _ = a.settle(before, {"tcp_resets_in": 1})
        with pytest.raises(ConnectionResetError):
            a.lib.wait(qt, timeout=IO_TIMEOUT)
        a.quiet(0.2)
        sd = counters_delta(before, a.stats())
        assert sd.get("tcp_resets_out", 0) == 0, sd
        assert not v.answers(t0), v.answers(t0)
        row(
            "RST exactly at RCV.NXT (control: the attacker knows it)",
            fmt(sd, ("tcp_resets_in", "tcp_resets_out")),
            "none (reset; ECONNRESET to the app)",
        )
    finally:
        v.close()
    a.healthy()


def test_in_window_rst_storm_gets_rate_limited_challenge_acks(arena: Arena) -> None:
    """5000 RSTs inside the window but not at RCV.NXT, as fast as they go: each is
    challenged (RFC 5961 3.2), at most ``challenge_ack_per_s`` ACKs a second go out, the
    rest are counted as suppressed; the connection lives and no RST goes out."""
    a = arena
    v = a.victim()
    try:
        time.sleep(1.05)  # a fresh challenge-ACK second
        rcv_nxt, _, _ = v.seqs()
        n = 5000
        frames = [v.frame(flags=RST, seq=rcv_nxt + 1 + i * 7) for i in range(n)]
        before = a.stats()
        t0 = time.monotonic()
        a.wire.send_many(frames, rate=PACED)
        _, sd, _ = a.settle(before, {"tcp_rst_in_window_challenged": n}, timeout=15)
        elapsed = time.monotonic() - t0
        a.quiet(0.2)
        sd = counters_delta(before, a.stats())
        acks = sd.get("tcp_challenge_acks", 0)
        assert acks + sd.get("tcp_challenge_acks_suppressed", 0) == n, sd
        assert acks <= CHALLENGE_ACK_PER_S * (int(elapsed) + 1), (acks, elapsed)
        assert sd.get("tcp_resets_out", 0) == 0 and sd.get("tcp_resets_in", 0) == 0, sd
        seen = len(v.answers(t0))
        assert seen <= CHALLENGE_ACK_PER_S * (int(elapsed) + 1)
        v.alive()
        row(
            f"RST storm: {n} in-window RSTs (not at RCV.NXT) -> idle connection",
            fmt(
                sd,
                (
                    "tcp_rst_in_window_challenged",
                    "tcp_challenge_acks",
                    "tcp_challenge_acks_suppressed",
                    "tcp_resets_out",
                ),
            ),
            f"{seen} challenge ACKs in {elapsed:.2f}s; connection unharmed",
        )
    finally:
        v.close()
    a.healthy()


def test_blind_rst_and_syn_storms_at_the_running_transfer(arena: Arena) -> None:
    """20000 RSTs and 3000 SYNs with random sequence numbers on the transfer's 4-tuple:
    out-of-window RSTs are dropped silently, SYNs challenged at the limited rate; the
    transfer goes on (and its data is checked at the end)."""
    a = arena
    lport, rport = a.transfer_conn()
    rng = a.rng
    before = a.stats()
    t0 = time.monotonic()
    rsts = [
        a.frame(
            rport,
            lport,
            flags=RST | (ACK if i % 2 else 0),
            seq=rng.getrandbits(32),
            ack=rng.getrandbits(32),
        )
        for i in range(20000)
    ]
    a.wire.send_many(rsts)  # as fast as it goes
    sent_s = time.monotonic() - t0
    a.settle_stable(before, "tcp_drop_rst_out_of_window")
    a.transfer.wait_progress(64 << 10)
    after = a.stats()
    sd = counters_delta(before, after)
    assert sd.get("tcp_resets_in", 0) == 0 and sd.get("tcp_resets_out", 0) == 0, sd
    assert sd.get("tcp_drop_rst_out_of_window", 0) >= 1000, sd
    rsts_out = a.wire.segments(t0, lambda s: s.sport == lport and s.flags & RST)
    assert not rsts_out
    row(
        f"blind RST storm: 20000 random-seq RSTs in {sent_s:.2f}s -> running transfer",
        fmt(
            sd,
            (
                "tcp_drop_rst_out_of_window",
                "tcp_rst_in_window_challenged",
                "tcp_resets_in",
                "tcp_resets_out",
            ),
        )
        + f"; lost in the AF_XDP rx ring: {a.ring_losses(before, after)}",
        "no RST; transfer goes on",
    )
    before = a.stats()
    t0 = time.monotonic()
    syns = [a.frame(rport, lport, flags=SYN, seq=rng.getrandbits(32)) for _ in range(3000)]
    a.wire.send_many(syns, rate=PACED)
    _, sd, _ = a.settle(before, {"tcp_syn_challenged": len(syns)}, timeout=20)
    elapsed = time.monotonic() - t0
    a.quiet(0.2)
    sd = counters_delta(before, a.stats())
    acks = sd.get("tcp_challenge_acks", 0)
    # the limiter's one-second windows need not start with the storm: one more of them
    assert acks <= CHALLENGE_ACK_PER_S * (int(elapsed) + 2), (acks, elapsed)
    assert sd.get("tcp_resets_in", 0) == 0 and sd.get("tcp_resets_out", 0) == 0, sd
    row(
        "blind SYN storm: 3000 random-seq SYNs -> running transfer",
        fmt(
            sd,
            (
                "tcp_syn_challenged",
                "tcp_challenge_acks",
                "tcp_challenge_acks_suppressed",
                "tcp_resets_out",
            ),
        ),
        "challenge ACKs (rate-limited), no RST",
    )
    a.healthy()


def test_blind_data_injection(arena: Arena) -> None:
    """Data at exactly RCV.NXT with an acknowledgment number outside (SND.UNA - MAX.SND.WND,
    SND.NXT] is dropped (RFC 5961 5.2): the application reads only the peer's bytes. As a
    control, the same bytes with the right ACK do get in (an attacker who knows both
    numbers can always inject: that is TCP). Then 3000 random data segments at the
    running transfer (its sha256 is checked at the end)."""
    a = arena
    v = a.victim()
    try:
        rcv_nxt, snd_una, _ = v.seqs()
        before = a.stats()
        for shift in (1 << 30, -(1 << 30), 1 << 20, -(1 << 24)):
            a.wire.send(
                v.frame(flags=ACK | PSH, seq=rcv_nxt, ack=snd_una + shift, payload=b"INJECTED")
            )
        _, sd, _ = a.settle(before, {"tcp_drop_ack_too_old": 2, "tcp_drop_ack_of_unsent": 2})
        v.alive()  # the next bytes the application reads are the peer's
        row(
            "data at RCV.NXT, ack 2^30/2^20 ahead, 2^30/2^24 behind -> idle",
            fmt(sd, ("tcp_drop_ack_too_old", "tcp_drop_ack_of_unsent", "tcp_challenge_acks")),
            "dropped; application reads only the peer's bytes",
        )
        # control
        rcv_nxt, snd_una, _ = v.seqs()
        a.wire.send(v.frame(flags=ACK | PSH, seq=rcv_nxt, ack=snd_una, payload=b"KNOWN"))
        got = a.lib.wait(a.lib.pop(v.qd), timeout=IO_TIMEOUT).data
        assert got == b"KNOWN"
        row("control: data at RCV.NXT with the right ACK", "accepted", "(inherent to TCP)")
    finally:
        v.close()
    lport, rport = a.transfer_conn()
    rng = a.rng
    before = a.stats()
    frames = [
        a.frame(
            rport,
            lport,
            flags=ACK | PSH,
            seq=rng.getrandbits(32),
            ack=rng.getrandbits(32),
            payload=rng.randbytes(512),
        )
        for _ in range(3000)
    ]
    a.wire.send_many(frames, rate=PACED)
    _, sd, _ = a.settle(before, {"tcp_segments_in": len(frames)}, timeout=20)
    a.transfer.wait_progress(64 << 10)
    sd = counters_delta(before, a.stats())
    assert sd.get("tcp_resets_out", 0) == 0, sd
    row(
        "blind data: 3000 x 512 B, random seq/ack -> running transfer",
        fmt(sd, ("tcp_drop_out_of_window", "tcp_drop_ack_too_old", "tcp_drop_ack_of_unsent")),
        "dup ACKs; stream intact (sha256 at the end)",
    )
    a.healthy()


def test_segments_far_outside_the_window(arena: Arena) -> None:
    """Far outside the window (2**31 - 2 ahead, 2**30 behind): dropped. Data draws a
    duplicate ACK each (as Linux: data is not an ACK loop); bare segments at most one ACK
    per 0.5 s (Linux's tcp_invalid_ratelimit)."""
    a = arena
    v = a.victim()
    try:
        rcv_nxt, snd_una, _ = v.seqs()
        before = a.stats()
        t0 = time.monotonic()
        n = 2000
        bare = [
            v.frame(flags=ACK, seq=rcv_nxt + ((1 << 31) - 2 if i % 2 else -(1 << 30)), ack=snd_una)
            for i in range(n)
        ]
        a.wire.send_many(bare, rate=PACED)
        _, sd, _ = a.settle(before, {"tcp_drop_out_of_window": n}, timeout=10)
        elapsed = time.monotonic() - t0
        a.quiet(0.2)
        answers = v.answers(t0)
        bound = int(elapsed / INVALID_ACK_INTERVAL_S) + 2
        assert len(answers) <= bound, (len(answers), bound, elapsed)
        sd = counters_delta(before, a.stats())
        row(
            f"{n} bare ACKs far outside the window -> idle connection",
            fmt(sd, ("tcp_drop_out_of_window", "tcp_invalid_acks_suppressed")),
            f"{len(answers)} ACKs in {elapsed:.2f}s (limit 1 per 0.5 s)",
        )
        before = a.stats()
        t0 = time.monotonic()
        m = 300
        data = [
            v.frame(
                flags=ACK | PSH, seq=rcv_nxt + (1 << 31) - 2000, ack=snd_una, payload=b"far" * 100
            )
            for _ in range(m)
        ]
        a.wire.send_many(data, rate=PACED)
        _, sd, _ = a.settle(before, {"tcp_drop_out_of_window": m}, timeout=10)
        a.quiet(0.2)
        answers = v.answers(t0)
        assert len(answers) <= m
        assert not [s for s in answers if s.flags & RST]
        row(
            f"{m} data segments 2^31 ahead -> idle connection",
            fmt(sd, ("tcp_drop_out_of_window",)),
            f"{len(answers)} dup ACKs (1 per segment)",
        )
        sent = v.alive()
        assert v.seqs()[0] == (rcv_nxt + sent) % (1 << 32), "out-of-window data got in"
    finally:
        v.close()
    a.healthy()


def test_duplicate_ack_storm_and_rst_storm_to_no_connection(arena: Arena) -> None:
    """5000 exact duplicate ACKs at an idle connection draw nothing; 5000 RST/RST-ACKs
    for 4-tuples the daemon does not know (to a steered port) draw nothing: a RST is
    never answered, so no RST loop can start."""
    a = arena
    v = a.victim()
    try:
        rcv_nxt, snd_una, _ = v.seqs()
        before = a.stats()
        t0 = time.monotonic()
        n = 5000
        a.wire.send_many([v.frame(flags=ACK, seq=rcv_nxt, ack=snd_una)] * n, rate=PACED)
        _, sd, _ = a.settle(before, {"tcp_segments_in": n}, timeout=10)
        a.quiet(0.2)
        answers = v.answers(t0)
        assert len(answers) <= 2, answers
        row(
            f"ACK storm: {n} exact duplicate ACKs -> idle connection",
            fmt(sd, ("tcp_segments_in",)),
            f"{len(answers)} answers",
        )
        v.alive()
    finally:
        v.close()
    rng = a.rng
    before = a.stats()
    t0 = time.monotonic()
    frames = [
        a.frame(
            rng.randrange(1024, 65536),
            rng.choice((LISTEN_PORT, VICTIM_PORT)),
            flags=RST | (ACK if i % 2 else 0),
            seq=rng.getrandbits(32),
            ack=rng.getrandbits(32),
        )
        for i in range(5000)
    ]
    a.wire.send_many(frames, rate=PACED)
    _, sd, _ = a.settle(before, {"tcp_segments_in": len(frames)}, timeout=10)
    a.quiet(0.2)
    sd = counters_delta(before, a.stats())
    assert sd.get("tcp_resets_out", 0) == 0, sd
    rsts = a.wire.segments(t0, lambda s: s.flags & RST and s.sport in (LISTEN_PORT, VICTIM_PORT))
    assert not rsts
    row(
        "RST storm: 5000 RST/RST-ACK, unknown 4-tuples -> listeners",
        fmt(sd, ("tcp_resets_out",)) or "tcp_resets_out+0",
        "none (a RST is never answered)",
    )
    a.healthy()


def test_ack_storm_acking_unsent_data_draws_rate_limited_answers(arena: Arena) -> None:
    """Bare ACKs in the window whose ACK field is beyond SND.NXT: RFC 9293 says send an
    ACK and drop, but the daemon's own rule for bare segments (and Linux, which does not
    answer these at all in ESTABLISHED) limits such answers, so that two confused ends
    (or a spoofer) cannot make it ACK at line rate. 3000 of them: at most one answer per
    0.5 s, or one challenge ACK each within the challenge-ACK limit."""
    a = arena
    v = a.victim()
    try:
        rcv_nxt, _, snd_nxt = v.seqs()
        before = a.stats()
        t0 = time.monotonic()
        n = 3000
        a.wire.send_many([v.frame(flags=ACK, seq=rcv_nxt, ack=snd_nxt + 100_000)] * n, rate=PACED)
        _, sd, _ = a.settle(before, {"tcp_drop_ack_of_unsent": n}, timeout=10)
        elapsed = time.monotonic() - t0
        a.quiet(0.2)
        answers = v.answers(t0)
        row(
            f"ACK storm: {n} bare ACKs of unsent data, in window -> idle",
            fmt(sd, ("tcp_drop_ack_of_unsent",)),
            f"{len(answers)} ACKs in {elapsed:.2f}s (want rate-limited)",
        )
        v.alive()
        assert len(answers) <= int(elapsed / INVALID_ACK_INTERVAL_S) + 2, (len(answers), elapsed)
    finally:
        v.close()


def test_challenge_ack_budget_is_not_shared_between_connections(arena: Arena) -> None:
    """RFC 5961 7 / CVE-2016-5696: with one global, fixed per-second budget an off-path
    attacker exhausts it with its own connection and learns from the missing challenge
    ACKs whether its spoofed probes hit another connection's window. Linux answers with a
    per-connection limit (tcp_oow_rate_limited) and a randomised global one. Here: exhaust
    the budget on connection A, then 20 in-window RSTs on B must still draw a challenge ACK."""
    a = arena
    va, vb = a.victim(), a.victim()
    try:
        time.sleep(1.05)
        rcv_a, _, _ = va.seqs()
        rcv_b, _, _ = vb.seqs()
        a.wire.send_many(
            [va.frame(flags=RST, seq=rcv_a + 1 + i) for i in range(CHALLENGE_ACK_PER_S + 200)]
        )
        t0 = time.monotonic()
        a.wire.send_many([vb.frame(flags=RST, seq=rcv_b + 1 + i) for i in range(20)])
        a.quiet(0.3)
        got = vb.answers(t0)
        row(
            "challenge-ACK budget spent on A, then 20 in-window RSTs on B",
            f"{len(got)} challenge ACKs on B",
            "want >= 1 (per-connection budget)",
        )
        assert got, "B got no challenge ACK: the budget is global (side channel)"
    finally:
        va.close()
        vb.close()


def test_tcp_in_a_broadcast_frame_is_dropped(arena: Arena) -> None:
    """Linux drops TCP that did not come in a frame addressed to this host
    (``pkt_type != PACKET_HOST`` in tcp_v4_rcv); the daemon takes Ethernet broadcast for
    ARP's sake and then hands TCP in it to the TCP layer."""
    a = arena
    frame = bytes(
        Ether(src=mac_str(a.peer_mac), dst="ff:ff:ff:ff:ff:ff")
        / a.ip()
        / TCP(sport=24999, dport=LISTEN_PORT, flags="S", seq=1)
    )
    t0 = time.monotonic()
    a.wire.send(frame)
    a.quiet(0.3)
    answers = a.wire.segments(t0, lambda s: s.dport == 24999)
    row(
        "eth: broadcast destination MAC, SYN to listener",
        "processed" if answers else "dropped",
        f"{len(answers)} answers (Linux: none)",
    )
    assert not answers


def test_every_segment_a_listener_drops_is_counted(arena: Arena) -> None:
    a = arena
    before = a.stats()
    a.wire.send_many([a.frame(25000 + i, flags=RST, seq=i) for i in range(20)])
    _, sd, _ = a.settle(before, {"tcp_segments_in": 20})
    a.quiet(0.1)
    sd = counters_delta(before, a.stats())
    drops = {k: v for k, v in sd.items() if "_drop_" in k or k.endswith("_ignored")}
    row(
        "20 RSTs to a listener (no connection)",
        fmt(sd, ("tcp_segments_in",)),
        f"counted as: {drops or 'nothing'}",
    )
    assert sum(drops.values()) >= 20, sd


# =================================================================== handshakes from the wire
SPOOFED = "10.77.0.200"  # an on-link address nobody has; the stack's kernel is told its MAC


def spoofed_handshake(a: Arena, sport: int, dport: int, options: list[Any]) -> tuple[int, int]:
    """A full handshake from ``SPOOFED``:``sport`` built by hand (the peer's kernel, which
    is not that address, drops the daemon's SYN-ACK; the sniffer sees it). Returns
    (our next sequence number, the daemon's)."""
    d = a.d
    subprocess.run(
        [
            "ip",
            "-n",
            d.stack_ns,
            "neigh",
            "replace",
            SPOOFED,
            "lladdr",
            mac_str(a.peer_mac),
            "dev",
            d.stack_if,
            "nud",
            "permanent",
        ],
        check=True,
        capture_output=True,
    )
    isn = a.rng.getrandbits(32)
    t0 = time.monotonic()
    a.wire.send(a.frame(sport, dport, src=SPOOFED, flags=SYN, seq=isn, options=options))
    synack = a.wire.wait_segment(lambda s: s.dst == SPOOFED and s.dport == sport, t0)
    assert synack.flags & (SYN | ACK) == SYN | ACK, synack
    a.wire.send(a.frame(sport, dport, src=SPOOFED, flags=ACK, seq=isn + 1, ack=synack.seq + 1))
    return isn + 1, synack.seq + 1


def test_tiny_mss_from_the_peer_is_raised_to_a_floor(arena: Arena) -> None:
    """CVE-2019-11479: an MSS of 1 makes the sender cut its data into 1-byte segments, 40+
    bytes of headers and a segment's bookkeeping per byte. Linux raises what the peer asks
    to ``tcp_min_snd_mss`` (48)."""
    a = arena
    lib = a.lib
    listener = lib.socket()
    lib.bind(listener, (a.d.stack_ip, 7402))
    lib.listen(listener, 4)
    qt = lib.accept(listener)
    try:
        spoofed_handshake(a, 41000, 7402, [("MSS", 1)])
        qd = lib.wait(qt, timeout=IO_TIMEOUT).new_qd
        mss = lib.control(Op.SHOW, {"qd": qd})["flow_control"]["mss"]
        t0 = time.monotonic()
        lib.push(qd, b"m" * 1000)
        a.quiet(0.3)
        sizes = [s.payload_len for s in a.wire.segments(t0, lambda s: s.dst == SPOOFED)]
        row(
            "handshake with MSS 1 from the peer, then 1000 bytes pushed",
            f"effective MSS {mss}; first flight: {len(sizes)} segments of {set(sizes)} bytes",
            "(Linux: MSS >= 48)",
        )
        lib.abort(qd)
        assert mss >= 48, mss
    finally:
        lib.close(listener)


# =================================================================== fuzz
def test_random_tcp_headers_with_valid_checksums(arena: Arena) -> None:
    """3000 segments with random flags, numbers, window, urgent pointer, option bytes and
    payload, and right checksums (so they get past the checksum check), half to the
    listener, half on the transfer's 4-tuple: no internal error, no RST for a RST, at
    most one RST per segment that is not one, and the transfer goes on."""
    a = arena
    rng = random.Random(9293)
    lport, rport = a.transfer_conn()
    frames = []
    non_rst = 0
    for i in range(3000):
        opts = rng.randbytes(rng.choice((0, 4, 8, 12, 20, 40)))
        flags = rng.getrandbits(8)
        non_rst += not flags & RST
        sport, dport = (rport, lport) if i % 2 else (rng.randrange(1, 65536), LISTEN_PORT)
        frame = a.frame(
            sport,
            dport,
            flags=flags,
            seq=rng.getrandbits(32),
            ack=rng.getrandbits(32),
            window=rng.getrandbits(16),
            urgptr=rng.getrandbits(16),
            payload=opts + rng.randbytes(rng.randrange(64)),
            tcp_kw={"dataofs": 5 + len(opts) // 4},
        )
        frames.append(fix_tcp_checksum(frame))
    before = a.stats()
    a.wire.send_many(frames, rate=PACED)
    _, sd, _ = a.settle(before, {"tcp_segments_in": len(frames)}, timeout=20)
    a.quiet(0.5)
    sd = counters_delta(before, a.stats())
    assert sd.get("tcp_resets_out", 0) <= non_rst, sd
    assert sd.get("tcp_resets_in", 0) == 0, sd
    drops = {k: v for k, v in sd.items() if "drop" in k}
    row(
        "fuzz: 3000 random TCP headers/options, valid checksums",
        fmt(drops),
        f"RSTs {sd.get('tcp_resets_out', 0)} (<= {non_rst} non-RST inputs)",
    )
    a.healthy()


# =================================================================== summary
def test_counters_through_xdpstackctl_stats_json(arena: Arena) -> None:
    """The counters the tests read are what an operator sees: ``xdpstackctl stats --json``."""
    a = arena
    proc = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "xdpstackctl"),
            "--socket",
            str(a.d.socket_path),
            "--json",
            "stats",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    view = json.loads(proc.stdout)
    drops = view["drops"]
    assert drops["tcp"]["rst_out_of_window"] > 0
    assert drops["tcp"]["bad_checksum"] > 0
    assert drops["ipv4"]["bad_source"] > 0
    assert view["counters"]["tcp"]["challenge_acks"] > 0
    assert view["counters"]["tcp"]["challenge_acks_suppressed"] > 0
    assert view["xdp"]["malformed"] > 0
    print("\nxdpstackctl stats --json, drops by layer:")
    for layer, reasons in drops.items():
        print(f"  {layer}: {reasons}")
    print("\ntable of hostile inputs (input | daemon: counters | answers on the wire):")
    for what, outcome, answer in TABLE:
        print(f"  {what} | {outcome} | {answer}")
