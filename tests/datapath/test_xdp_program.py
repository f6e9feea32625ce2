"""The XDP program (bpf/xdpstack.bpf.c) and its loader (xdpstackd.datapath.xdp_program).

Integration tests build their own pair of network namespaces with a single-queue veth
between them (``xdpt-<pid>-<n>a`` holds ``xa<pid>n<n>``, ``...b`` holds ``xb...``), run the
test body with this thread inside namespace A, attach the program only to A's end, and
delete both namespaces afterwards whatever happened. B's end is the "wire": frames are
sent from there by the kernel (ping, TCP) or raw with an AF_PACKET socket.

IPv6 is turned off in both namespaces so that the only frames on the veth are the tests'
own (plus ARP for the kernel's IPv4 traffic): the counter checks can be exact.

Without a bound AF_XDP socket (that end-to-end check is the AF_XDP tests'), a redirect is
exercised with an *unbound* AF_XDP socket in the XSKMAP: the helper redirects (counted),
and the kernel then drops the frame for want of a bound socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from integration_support import AF_XDP, require_integration

from xdpstackd.datapath import xdp_program
from xdpstackd.datapath.xdp_program import COUNTER_NAMES, XdpError, XdpProgram

REPO = Path(__file__).resolve().parents[2]
BPF_SOURCE = REPO / "bpf" / "xdpstack.bpf.c"

IP_A = "10.99.0.1"
IP_B = "10.99.0.2"
OWNED = "10.99.0.3"  # owned-address mode: an address the kernel of A does not have
OTHER = "10.99.0.9"


def ip_int(text: str) -> int:
    return int.from_bytes(socket.inet_aton(text), "big")


# -- unit tests (no root) --------------------------------------------------------------------


def test_counter_names_match_the_c_enum() -> None:
    names = xdp_program.counter_names_in_source(BPF_SOURCE.read_text())
    assert names == COUNTER_NAMES
    assert names[:4] == ("passed", "redirected", "dropped", "malformed")


def test_source_found_in_repository_and_through_env(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("XDPSTACK_BPF_DIR", raising=False)
    assert xdp_program.find_bpf_source() == BPF_SOURCE
    (tmp_path / "xdpstack.bpf.c").write_text("// elsewhere\n")
    monkeypatch.setenv("XDPSTACK_BPF_DIR", str(tmp_path))
    assert xdp_program.find_bpf_source() == tmp_path / "xdpstack.bpf.c"


def test_source_not_found_names_every_place(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDPSTACK_BPF_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(xdp_program, "__file__", str(tmp_path / "a/b/c/d/xdp_program.py"))
    monkeypatch.setattr(xdp_program, "INSTALLED_BPF_DIR", tmp_path / "share")
    with pytest.raises(XdpError) as info:
        xdp_program.find_bpf_source()
    message = str(info.value)
    for where in ("env", "a/bpf", "share", "XDPSTACK_BPF_DIR"):
        assert where in message


def test_missing_kernel_headers_are_explained(monkeypatch) -> None:
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    real = os.uname()
    fake = os.uname_result((*real[:2], "0.0.0-xdpt-nonesuch", *real[3:]))
    monkeypatch.setattr(xdp_program.os, "uname", lambda: fake)
    problem = xdp_program.kernel_headers_problem()
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        assert problem is None
        return
    assert problem is not None
    for part in (
        "/lib/modules/0.0.0-xdpt-nonesuch/build is missing",
        "linux-headers-6.1.0-NN-amd64",
        "/lib/modules/0.0.0-xdpt-nonesuch/source -> /usr/src/linux-headers-6.1.0-NN-common",
        "scripts/setup.sh",
    ):
        assert part in problem
    with pytest.raises(XdpError, match=r"lo: cannot compile the XDP program: .*linux-headers"):
        XdpProgram("lo").attach()


def test_arguments_are_checked_and_maps_need_attach() -> None:
    with pytest.raises(ValueError):
        XdpProgram("lo", mode="offload")
    with pytest.raises(ValueError):
        XdpProgram("lo", owned_address=0)
    prog = XdpProgram("lo", mode="generic")
    with pytest.raises(XdpError, match="not attached"):
        prog.steer_add(0, 80)
    with pytest.raises(XdpError, match="not attached"):
        prog.counters()
    prog.detach()  # idempotent, also when never attached
    assert not prog.attached


def test_attach_to_a_missing_interface_names_it() -> None:
    with pytest.raises(XdpError, match="xdpt-nonesuch"):
        XdpProgram("xdpt-nonesuch").attach()


# -- namespaces and veths --------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
_serial = itertools.count()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with this thread in network namespace ``name``; always come back."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(original)


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr}")
    return result


def _remove_stale_namespaces() -> None:
    """Delete namespaces of earlier test runs whose process is gone (killed runs)."""
    for line in run("ip", "netns", "list").stdout.splitlines():
        match = re.match(r"(xdpt-(\d+)-\d+[ab])\b", line)
        if match and not Path(f"/proc/{match.group(2)}").exists():
            run("ip", "netns", "del", match.group(1), check=False)


def link_mac(ns: str, ifname: str) -> bytes:
    (info,) = json.loads(run("ip", "-n", ns, "-j", "link", "show", "dev", ifname).stdout)
    return bytes.fromhex(info["address"].replace(":", ""))


@dataclass
class Pair:
    ns_a: str
    ns_b: str
    if_a: str
    if_b: str
    mac_a: bytes
    mac_b: bytes

    def ip_link(self) -> str:
        """``ip -d link show`` of A's end (the test thread is in namespace A)."""
        return run("ip", "-d", "link", "show", "dev", self.if_a).stdout

    def send_raw(self, *frames: bytes) -> None:
        """Send Ethernet frames out of B's end; they arrive at A's end (and its program)."""
        with in_netns(self.ns_b):
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        with sock:
            sock.bind((self.if_b, 0))
            for frame in frames:
                sock.send(frame)

    def eth(self, ethertype: int, payload: bytes, dst: bytes | None = None) -> bytes:
        return (dst or self.mac_a) + self.mac_b + struct.pack("!H", ethertype) + payload


@pytest.fixture
def pair() -> Iterator[Pair]:
    """Two fresh namespaces joined by a single-queue veth; this thread runs in A."""
    if xdp_program.kernel_headers_problem() is not None:
        require_integration(f"no kernel headers for bcc: {xdp_program.kernel_headers_problem()}")
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        require_integration(f"bcc is not importable ({exc}); run scripts/setup.sh")
    _remove_stale_namespaces()
    n = next(_serial)
    pid = os.getpid()
    p = Pair(f"xdpt-{pid}-{n}a", f"xdpt-{pid}-{n}b", f"xa{pid}n{n}", f"xb{pid}n{n}", b"", b"")
    made: list[str] = []
    try:
        for ns in (p.ns_a, p.ns_b):
            run("ip", "netns", "add", ns)
            made.append(ns)
            for conf in ("all", "default"):
                run(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    f"net.ipv6.conf.{conf}.disable_ipv6=1",
                )
        run(
            "ip",
            "-n",
            p.ns_a,
            "link",
            "add",
            p.if_a,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
            "type",
            "veth",
            "peer",
            "name",
            p.if_b,
            "netns",
            p.ns_b,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
        )
        for ns, ifname, addr in ((p.ns_a, p.if_a, IP_A), (p.ns_b, p.if_b, IP_B)):
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", ifname)
            run("ip", "-n", ns, "link", "set", ifname, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        p.mac_a = link_mac(p.ns_a, p.if_a)
        p.mac_b = link_mac(p.ns_b, p.if_b)
        with in_netns(p.ns_a):
            yield p
    finally:
        for ns in made:
            run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def program(pair: Pair) -> Iterator[Callable[..., XdpProgram]]:
    """Factory of XdpPrograms on A's veth end; every one is detached afterwards."""
    made: list[XdpProgram] = []

    def make(**kwargs) -> XdpProgram:
        kwargs.setdefault("max_queues", 4)
        prog = XdpProgram(pair.if_a, **kwargs)
        made.append(prog)
        prog.attach()
        return prog

    yield make
    for prog in made:
        prog.detach()


# -- frames ----------------------------------------------------------------------------------


def ipv4(
    src: str,
    dst: str,
    proto: int,
    payload: bytes,
    *,
    ihl: int = 5,
    frag: int = 0,
    total: int | None = None,
) -> bytes:
    options = b"\x01" * (ihl * 4 - 20) if ihl >= 5 else b""
    length = total if total is not None else ihl * 4 + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x40 | ihl,
        0,
        length,
        1,
        frag,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header + options + payload


def tcp_syn(sport: int, dport: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)


def arp_request(pair: Pair, target: str, sender: str = IP_B) -> bytes:
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + pair.mac_b + socket.inet_aton(sender)
    return body + b"\0" * 6 + socket.inet_aton(target)


def icmp_echo(ident: int = 7, seq: int = 1) -> bytes:
    return struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"xdpstack"


# -- helpers ---------------------------------------------------------------------------------


def delta(prog: XdpProgram, before: dict[str, int]) -> dict[str, int]:
    now = prog.counters()
    return {k: now[k] - before[k] for k in now if now[k] != before[k]}


def settle(
    prog: XdpProgram,
    before: dict[str, int],
    until: Callable[[dict[str, int]], bool],
    timeout: float = 3.0,
) -> dict[str, int]:
    """Counter deltas once ``until(deltas)`` holds (and a short quiet time has passed)."""
    deadline = time.monotonic() + timeout
    while not until(d := delta(prog, before)):
        if time.monotonic() > deadline:
            pytest.fail(f"counters did not get there in {timeout}s: {d}")
        time.sleep(0.02)
    time.sleep(0.1)
    return delta(prog, before)


def icmp_ping(pair: Pair, dst: str, count: int = 3) -> int:
    """Echo requests from B to ``dst``; returns the replies received."""
    with in_netns(pair.ns_b):
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    replies = 0
    with sock:
        sock.settimeout(1.0)
        for seq in range(count):
            msg = bytearray(icmp_echo(ident=0x5A5A, seq=seq))
            struct.pack_into("!H", msg, 2, inet_checksum(bytes(msg)))
            sock.sendto(bytes(msg), (dst, 0))
            with contextlib.suppress(TimeoutError):
                while True:
                    data = sock.recv(2048)
                    ihl = (data[0] & 0xF) * 4
                    kind, _, _, ident, rseq = struct.unpack_from("!BBHHH", data, ihl)
                    if kind == 0 and ident == 0x5A5A and rseq == seq:
                        replies += 1
                        break
    return replies


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def connect_from_b(pair: Pair, port: int, timeout: float = 2.0) -> socket.socket:
    with in_netns(pair.ns_b):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((IP_A, port))
    except BaseException:
        sock.close()
        raise
    return sock


def listener(port: int) -> socket.socket:
    """A kernel TCP listener in A (this thread's namespace)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((IP_A, port))
    sock.listen(4)
    sock.settimeout(2.0)
    return sock


def tcp_round_trip(pair: Pair, port: int) -> None:
    with listener(port) as lsock, connect_from_b(pair, port) as client:
        server, _ = lsock.accept()
        with server:
            client.sendall(b"hello xdp")
            assert server.recv(100) == b"hello xdp"
            server.sendall(b"back")
            assert client.recv(100) == b"back"


def unbound_xsk() -> socket.socket:
    """An AF_XDP socket that is not bound: the XSKMAP takes it, the kernel then drops."""
    return socket.socket(AF_XDP, socket.SOCK_RAW, 0)


# -- integration tests -----------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["native", "generic"])
def test_compiles_attaches_and_detaches(pair: Pair, mode: str) -> None:
    prog = XdpProgram(pair.if_a, mode=mode, max_queues=4)
    with prog:
        assert prog.attached
        assert prog.prog_id is not None
        link = pair.ip_link()
        flag = " xdp " if mode == "native" else " xdpgeneric "
        assert flag in link.splitlines()[0], link
        assert f"id {prog.prog_id} name {xdp_program.FUNCTION_NAME}" in link, link
        assert xdp_program.attached_programs(pair.if_a) == {mode: prog.prog_id}
        assert prog.counters() == dict.fromkeys(COUNTER_NAMES, 0)
    assert not prog.attached
    assert "xdp" not in pair.ip_link().splitlines()[0]
    assert "prog/xdp" not in pair.ip_link()
    prog.detach()  # idempotent
    assert xdp_program.attached_programs(pair.if_a) == {}


@pytest.mark.integration
def test_verifier_rejection_is_reported_with_its_log(pair: Pair, tmp_path, monkeypatch) -> None:
    source = BPF_SOURCE.read_text()
    check = "    if ((void *)(ip + 1) > data_end)\n        return malformed();\n"
    assert check in source
    (tmp_path / "xdpstack.bpf.c").write_text(source.replace(check, ""))
    monkeypatch.setenv("XDPSTACK_BPF_DIR", str(tmp_path))
    prog = XdpProgram(pair.if_a, mode="generic")
    with pytest.raises(XdpError) as info:
        prog.attach()
    message = str(info.value)
    assert pair.if_a in message
    assert "verifier log" in message
    assert "invalid access to packet" in message, message
    assert not prog.attached
    assert xdp_program.attached_programs(pair.if_a) == {}


@pytest.mark.integration
def test_compile_error_is_reported(pair: Pair, tmp_path, monkeypatch) -> None:
    source = BPF_SOURCE.read_text().replace("int xdpstack_rx(", "int xdpstack_rx(nonsense ")
    (tmp_path / "xdpstack.bpf.c").write_text(source)
    monkeypatch.setenv("XDPSTACK_BPF_DIR", str(tmp_path))
    with pytest.raises(XdpError, match=rf"{pair.if_a}: bcc could not compile(.|\n)*nonsense"):
        XdpProgram(pair.if_a, mode="generic").attach()


@pytest.mark.integration
def test_second_attach_is_refused_and_points_at_detach_stale(pair: Pair, program) -> None:
    first = program(mode="native")
    with pytest.raises(XdpError, match="detach_stale"):
        program(mode="native")
    assert xdp_program.attached_programs(pair.if_a) == {"native": first.prog_id}


@pytest.mark.integration
def test_steering_round_trips(program) -> None:
    prog = program(mode="generic")
    assert prog.steering() == []
    prog.steer_add(0, 80)
    prog.steer_add(ip_int(IP_A), 8080)
    prog.steer_add(ip_int(IP_A), 8080)  # again: no duplicate
    prog.steer_add(0xFFFFFFFF, 65535)
    assert prog.steering() == [(0, 80), (ip_int(IP_A), 8080), (0xFFFFFFFF, 65535)]
    assert prog.steer_remove(ip_int(IP_A), 8080) is True
    assert prog.steer_remove(ip_int(IP_A), 8080) is False
    assert prog.steer_remove(ip_int(IP_A), 80) is False  # (0, 80) is a different key
    assert prog.steering() == [(0, 80), (0xFFFFFFFF, 65535)]
    for bad in ((0, 0), (0, 65536), (-1, 80), (1 << 32, 80)):
        with pytest.raises(ValueError):
            prog.steer_add(*bad)
    with pytest.raises(ValueError):
        prog.set_xsk(4, 0)  # max_queues=4
    prog.clear_xsk(3)  # an empty slot: fine

    # detach() empties the steering map (checked through a second fd that keeps it alive).
    from bcc.libbcc import lib

    table = prog._table("steering")
    map_fd = os.dup(table.map_fd)
    try:
        key = table.Key()
        assert lib.bpf_get_first_key(map_fd, ctypes.byref(key), ctypes.sizeof(key)) == 0
        prog.detach()
        assert lib.bpf_get_first_key(map_fd, ctypes.byref(key), ctypes.sizeof(key)) < 0
    finally:
        os.close(map_fd)


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["native", "generic"])
def test_kernel_traffic_is_passed_and_still_works(pair: Pair, program, mode: str) -> None:
    prog = program(mode=mode)
    prog.steer_add(0, 9)  # steered, but not the port used below
    before = prog.counters()
    assert icmp_ping(pair, IP_A, count=3) == 3
    tcp_round_trip(pair, 5001)
    d = settle(prog, before, lambda d: d.get("passed", 0) >= 3 + 6)
    assert set(d) == {"passed"}, d  # nothing redirected, malformed, dropped
    # At least: 3 echo requests, SYN, ACK, data, ACK(s); ARP too.
    assert d["passed"] >= 9


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["native", "generic"])
def test_steered_port_without_xsk_falls_back_to_the_kernel(pair: Pair, program, mode) -> None:
    prog = program(mode=mode)
    prog.steer_add(0, 7777)  # nobody listens: the kernel must answer with RST
    prog.steer_add(ip_int(IP_A), 7778)  # a kernel listener: the connection must work
    before = prog.counters()
    with pytest.raises(ConnectionRefusedError):
        connect_from_b(pair, 7777).close()
    d = settle(prog, before, lambda d: d.get("no_xsk", 0) >= 1)
    assert d["no_xsk"] == 1, d  # the SYN, answered by RST
    assert d.get("redirected", 0) == 0 and d.get("tcp_redirected", 0) == 0
    assert d["passed"] >= 1
    before = prog.counters()
    tcp_round_trip(pair, 7778)
    d = settle(prog, before, lambda d: d.get("no_xsk", 0) >= 4)
    assert d.get("redirected", 0) == 0
    assert d["passed"] >= d["no_xsk"] >= 4  # SYN, ACK, data, ACK, FIN...
    assert set(d) <= {"passed", "no_xsk"}, d


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["native", "generic"])
def test_malformed_frames_are_counted_and_passed(pair: Pair, program, mode: str) -> None:
    prog = program(mode=mode, owned_address=ip_int(OWNED))
    prog.steer_add(0, 80)
    good_tcp = ipv4(IP_B, IP_A, 6, tcp_syn(1234, 80))
    malformed = [
        pair.eth(0x0800, good_tcp[:10]),  # IPv4 header cut short
        pair.eth(0x0800, ipv4(IP_B, IP_A, 6, tcp_syn(1, 80), ihl=4)),  # IHL < 5
        pair.eth(0x0800, ipv4(IP_B, IP_A, 6, tcp_syn(1, 80), ihl=15)[:40]),  # options cut
        pair.eth(0x0800, b"\x65" + good_tcp[1:]),  # version 6 in an IPv4 ethertype
        pair.eth(0x0800, ipv4(IP_B, IP_A, 6, tcp_syn(1, 80), total=400)),  # past the end
        pair.eth(0x0800, ipv4(IP_B, IP_A, 6, tcp_syn(1, 80), total=19)),  # < header
        pair.eth(0x0800, ipv4(IP_B, IP_A, 6, tcp_syn(1, 80)[:12])),  # TCP header cut
        pair.eth(0x0800, ipv4(IP_B, IP_A, 6, tcp_syn(1, 80), total=30)),  # TCP past tot_len
        pair.eth(0x0806, arp_request(pair, OWNED)[:20]),  # ARP cut short (owned mode)
        # (A frame shorter than an Ethernet header cannot be sent: AF_PACKET refuses it.)
    ]
    passed_not_malformed = [
        pair.eth(0x0800, ipv4(IP_B, IP_A, 6, tcp_syn(1, 80), frag=0x2000)),  # MF
        pair.eth(0x0800, ipv4(IP_B, IP_A, 6, tcp_syn(1, 80), frag=0x0010)),  # offset
        pair.eth(0x8100, b"\x00\x05\x08\x00" + good_tcp),  # VLAN 5
        pair.eth(0x0800, good_tcp + b"\0" * 6),  # Ethernet padding after tot_len: fine
        pair.eth(0x0800, ipv4(IP_B, IP_A, 17, b"\0" * 8)),  # UDP
    ]
    before = prog.counters()
    pair.send_raw(*malformed, *passed_not_malformed)
    total = len(malformed) + len(passed_not_malformed)
    d = settle(prog, before, lambda d: d.get("passed", 0) + d.get("no_xsk", 0) >= total)
    assert d["malformed"] == len(malformed), d
    assert d["fragments"] == 2 and d["vlan"] == 1, d
    assert d["no_xsk"] == 1, d  # the padded SYN to the steered port 80
    assert d["passed"] == total, d
    assert d.get("redirected", 0) == 0 and d.get("dropped", 0) == 0


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["native", "generic"])
def test_steering_lookup_exact_then_wildcard(pair: Pair, program, mode: str) -> None:
    prog = program(mode=mode)
    prog.steer_add(ip_int(IP_A), 1001)  # exact
    prog.steer_add(0, 1002)  # any local address
    prog.steer_add(ip_int(OTHER), 1003)  # another address: not for frames to IP_A
    with unbound_xsk() as xsk:
        prog.set_xsk(0, xsk.fileno())

        def send(dst: str, port: int) -> dict[str, int]:
            before = prog.counters()
            pair.send_raw(pair.eth(0x0800, ipv4(IP_B, dst, 6, tcp_syn(40000, port))))
            return settle(prog, before, lambda d: sum(d.values()) >= 1)

        assert send(IP_A, 1001) == {"redirected": 1, "tcp_redirected": 1}
        assert send(IP_A, 1002) == {"redirected": 1, "tcp_redirected": 1}
        assert send(OTHER, 1002) == {"redirected": 1, "tcp_redirected": 1}
        assert send(IP_A, 1003) == {"passed": 1}
        assert send(OTHER, 1003) == {"redirected": 1, "tcp_redirected": 1}
        assert send(OTHER, 1001) == {"passed": 1}
        prog.clear_xsk(0)
        assert send(IP_A, 1001) == {"passed": 1, "no_xsk": 1}
        prog.set_xsk(0, xsk.fileno())
        prog.steer_remove(0, 1002)
        assert send(IP_A, 1002) == {"passed": 1}


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["native", "generic"])
def test_owned_address_arp_and_icmp_go_to_the_daemon(pair: Pair, program, mode: str) -> None:
    prog = program(mode=mode, owned_address=ip_int(OWNED))

    def send(frame: bytes) -> dict[str, int]:
        before = prog.counters()
        pair.send_raw(frame)
        return settle(prog, before, lambda d: sum(d.values()) >= 1)

    arp_owned = pair.eth(0x0806, arp_request(pair, OWNED), dst=b"\xff" * 6)
    arp_kernel = pair.eth(0x0806, arp_request(pair, IP_A), dst=b"\xff" * 6)
    icmp_owned = pair.eth(0x0800, ipv4(IP_B, OWNED, 1, icmp_echo()))
    icmp_kernel = pair.eth(0x0800, ipv4(IP_B, IP_A, 1, icmp_echo()))
    tcp_owned = pair.eth(0x0800, ipv4(IP_B, OWNED, 6, tcp_syn(40000, 5555)))

    # No AF_XDP socket yet: everything falls back to the kernel.
    assert send(arp_owned) == {"passed": 1, "no_xsk": 1}
    assert send(icmp_owned) == {"passed": 1, "no_xsk": 1}
    with unbound_xsk() as xsk:
        prog.set_xsk(0, xsk.fileno())
        assert send(arp_owned) == {"redirected": 1, "arp_redirected": 1}
        assert send(icmp_owned) == {"redirected": 1, "icmp_redirected": 1}
        assert send(arp_kernel) == {"passed": 1}
        assert send(icmp_kernel) == {"passed": 1}
        assert send(tcp_owned) == {"passed": 1}  # not steered, owned_tcp_all off
        prog.steer_add(ip_int(OWNED), 5555)
        assert send(tcp_owned) == {"redirected": 1, "tcp_redirected": 1}


@pytest.mark.integration
def test_owned_tcp_all_redirects_every_tcp_segment_to_the_owned_address(pair, program) -> None:
    prog = program(mode="native", owned_address=ip_int(OWNED), owned_tcp_all=True)
    with unbound_xsk() as xsk:
        prog.set_xsk(0, xsk.fileno())
        before = prog.counters()
        pair.send_raw(
            pair.eth(0x0800, ipv4(IP_B, OWNED, 6, tcp_syn(40000, 4444))),
            pair.eth(0x0800, ipv4(IP_B, IP_A, 6, tcp_syn(40000, 4444))),
        )
        d = settle(prog, before, lambda d: sum(d.values()) >= 3)
        assert d == {"redirected": 1, "tcp_redirected": 1, "passed": 1}


@pytest.mark.integration
def test_shared_mode_leaves_arp_and_icmp_to_the_kernel(pair: Pair, program) -> None:
    prog = program(mode="native")
    with unbound_xsk() as xsk:
        prog.set_xsk(0, xsk.fileno())
        before = prog.counters()
        assert icmp_ping(pair, IP_A, count=2) == 2  # ARP + ICMP both reach the kernel
        d = settle(prog, before, lambda d: d.get("passed", 0) >= 3)
        assert set(d) == {"passed"}, d


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["native", "generic"])
def test_detach_stale_removes_a_program_left_by_a_killed_process(pair: Pair, mode) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from xdpstackd.datapath.xdp_program import XdpProgram
        prog = XdpProgram({pair.if_a!r}, mode={mode!r})
        prog.attach()
        prog.steer_add(0, 80)
        print(prog.prog_id, flush=True)
        time.sleep(60)
        """
    )
    # Started from this thread, the child lives in namespace A too.
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        line = child.stdout.readline()
        assert line.strip().isdigit(), f"child did not attach (exit {child.poll()})"
        prog_id = int(line)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    # The program outlives its process: the netlink attachment holds it.
    assert xdp_program.attached_programs(pair.if_a) == {mode: prog_id}
    assert XdpProgram.detach_stale(pair.if_a) is True
    assert xdp_program.attached_programs(pair.if_a) == {}
    assert "prog/xdp" not in pair.ip_link()
    assert XdpProgram.detach_stale(pair.if_a) is False
    # And the interface takes a new program again.
    with XdpProgram(pair.if_a, mode=mode, max_queues=4) as prog:
        assert prog.attached


@pytest.mark.integration
def test_detach_stale_on_a_missing_interface_raises(pair: Pair) -> None:
    with pytest.raises(XdpError, match="no such interface"):
        XdpProgram.detach_stale("xdpt-nonesuch")


@pytest.mark.integration
def test_detach_after_the_interface_is_gone(pair: Pair) -> None:
    prog = XdpProgram(pair.if_a, mode="native", max_queues=4)
    prog.attach()
    prog.steer_add(0, 80)
    run("ip", "link", "del", pair.if_a)
    prog.detach()
    assert not prog.attached


@pytest.mark.integration
def test_usable_inside_a_running_event_loop(pair: Pair) -> None:
    """The daemon runs uvloop: attach, detach and detach_stale must work from inside it."""
    import asyncio

    async def cycle() -> None:
        prog = XdpProgram(pair.if_a, mode="native", max_queues=4)
        prog.attach()
        try:
            assert xdp_program.attached_programs(pair.if_a) == {"native": prog.prog_id}
        finally:
            prog.detach()
        assert XdpProgram.detach_stale(pair.if_a) is False

    try:
        import uvloop
    except ImportError:
        asyncio.run(cycle())
    else:
        uvloop.run(cycle())
