"""Faults between the real ``xdpstackd`` and the kernel's TCP on a veth pair.

The veth is a perfect link and there is no netem, so the faults come from the daemon's own
datapath impairment stage (``[impair]`` in its config, ``datapath/impair.py``) or from
taking the peer's link down:

- 2% loss plus reordering each way: 32 MiB each direction arrive intact (SHA-256), and
  ``xdpstackctl stats`` shows retransmissions and the stage's counters;
- bit flips on rx: the stack's checksums drop the damaged frames (counted) and the transfer
  still completes intact;
- the peer vanishes mid-transfer (its link down): after ``retries2`` unanswered
  retransmissions the client's pending operations fail with ETIMEDOUT, the connection is
  gone from ``xdpstackctl connections`` and the daemon's log says so;
- keep-alive: an idle connection (SO_KEEPALIVE with 1 s idle/interval, 3 probes) whose peer
  vanished fails its pending pop with ETIMEDOUT; while the peer is there, the probes are
  answered and nothing happens.
"""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import time
from typing import Any

import pytest
from netfixtures import kernel_tcp_client, kernel_tcp_server, pattern_bytes, pattern_sha256
from xdpd_harness import REPO, DaemonLab, DaemonProcess, echo_exchange, wait_until

import xdpstack

pytestmark = pytest.mark.integration

NBYTES = 32 << 20
TRANSFER_TIMEOUT = 300.0  # ~10-30 s each way on an idle 2-core machine with 2% loss
PUSH_CHUNK = 1 << 20
PUSHES_IN_FLIGHT = 4

LOSSY = """\
[daemon]
log_level = "info"

[impair]
seed = 6
loss = 0.02
reorder = 0.02
reorder_delay_s = 0.002
"""

CORRUPTING_RX = """\
[daemon]
log_level = "info"

[impair.rx]
corrupt = 0.01
"""

#: Give up quickly: 4 retransmissions, RTO at most 0.5 s (about 2 s in all).
QUICK_TIMEOUTS = """\
[daemon]
log_level = "info"

[tcp]
retries2 = 4
rto_max_s = 0.5
"""


# --------------------------------------------------------------------------- helpers
def ctl(d: DaemonProcess, *args: str) -> Any:
    """``xdpstackctl --socket S ARGS --json``, parsed."""
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "xdpstackctl"), "--socket", str(d.socket_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, f"xdpstackctl {' '.join(args)}: {proc.stderr}"
    return json.loads(proc.stdout)


def push_all(lib: xdpstack.Lib, qd: int, data: bytes, deadline: float) -> None:
    view = memoryview(data)
    in_flight: list[int] = []
    for start in range(0, len(data), PUSH_CHUNK):
        in_flight.append(lib.push(qd, view[start : start + PUSH_CHUNK]))
        if len(in_flight) >= PUSHES_IN_FLIGHT:
            lib.wait(in_flight.pop(0), timeout=max(deadline - time.monotonic(), 0.1))
    for qt in in_flight:
        lib.wait(qt, timeout=max(deadline - time.monotonic(), 0.1))


def send_to_kernel_sink(d: DaemonProcess, nbytes: int, seed: int) -> float:
    """xdpstack -> kernel: ``nbytes`` pushed, FIN; the sink's SHA-256 checked. Seconds."""
    data = pattern_bytes(nbytes, seed=seed)
    with kernel_tcp_server(d.peer_ns, 0, "sink", io_timeout=TRANSFER_TIMEOUT) as server:
        lib = d.client()
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, server.port)), timeout=30)
        t0 = time.monotonic()
        deadline = t0 + TRANSFER_TIMEOUT
        push_all(lib, qd, data, deadline)
        lib.close(qd)
        (conn,) = server.results(1, timeout=max(deadline - time.monotonic(), 1.0))
        elapsed = time.monotonic() - t0
    assert conn["error"] is None, conn
    assert conn["eof"] is True
    assert conn["rx_bytes"] == nbytes
    assert conn["rx_sha256"] == hashlib.sha256(data).hexdigest()
    return elapsed


def receive_from_kernel_source(d: DaemonProcess, nbytes: int, seed: int, port: int) -> float:
    """kernel -> xdpstack: popped to EOF, SHA-256 checked. Seconds."""
    lib = d.client()
    listener = lib.socket()
    lib.bind(listener, (d.stack_ip, port))
    lib.listen(listener, 4)
    accept_qt = lib.accept(listener)
    client = kernel_tcp_client(
        d.peer_ns, d.stack_ip, port, "source", nbytes=nbytes, seed=seed, io_timeout=TRANSFER_TIMEOUT
    )
    qd = lib.wait(accept_qt, timeout=30).new_qd
    t0 = time.monotonic()
    deadline = t0 + TRANSFER_TIMEOUT
    digest = hashlib.sha256()
    total = 0
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"{total} of {nbytes} bytes in {TRANSFER_TIMEOUT}s"
        chunk = lib.wait(lib.pop(qd), timeout=left).data
        if not chunk:
            break
        digest.update(chunk)
        total += len(chunk)
    elapsed = time.monotonic() - t0
    lib.close(qd)
    lib.close(listener)
    conn = client.result(timeout=30)
    assert conn["error"] is None, conn
    assert conn["tx_bytes"] == nbytes
    assert total == nbytes
    assert digest.hexdigest() == pattern_sha256(nbytes, seed=seed)
    return elapsed


def link_down(netns: str, ifname: str) -> None:
    subprocess.run(["ip", "-n", netns, "link", "set", ifname, "down"], check=True)


def listed(d: DaemonProcess, local_port: int) -> list[dict[str, Any]]:
    """``xdpstackctl connections --json`` rows with this local port."""
    rows = ctl(d, "connections", "--json")
    return [r for r in rows if (r.get("local") or {}).get("port") == local_port]


# --------------------------------------------------------------------------- tests
def test_32mib_each_way_with_loss_and_reordering_arrive_intact(fault_lab: DaemonLab) -> None:
    d = fault_lab.daemon(config_text=LOSSY)
    assert "impairment stage ON" in d.log()
    out_s = send_to_kernel_sink(d, NBYTES, seed=21)
    in_s = receive_from_kernel_source(d, NBYTES, seed=22, port=7301)
    stats = ctl(d, "stats", "--json")
    summary, dp = stats["summary"], stats["datapath"]
    print(
        f"\n2% loss + 2% reordering (2 ms) each way: 32 MiB out in {out_s:.1f}s, "
        f"in in {in_s:.1f}s; retransmits {summary['retransmits']} "
        f"(fast {summary['fast_retransmits']}, RTO {summary['rto_expirations']}); "
        + ", ".join(f"{k}={v}" for k, v in dp.items() if k.startswith("impair_"))
    )
    assert summary["retransmits"] > 0
    for direction in ("rx", "tx"):
        frames = dp[f"impair_{direction}_frames"]
        dropped = dp[f"impair_{direction}_dropped"]
        assert frames > 10000
        assert 0.01 * frames < dropped < 0.03 * frames, (direction, dp)
        assert dp[f"impair_{direction}_reordered"] > 0
        assert dp[f"impair_{direction}_delayed"] == dp[f"impair_{direction}_reordered"]
        assert dp[f"impair_{direction}_held"] == 0
        assert dp[f"impair_{direction}_overflow"] == 0
    assert dp["impair_seed"] == 6
    # the kernel peer saw the loss too: it retransmitted what our rx side dropped
    assert stats["counters"]["tcp"].get("segments_in", 0) > 0


def test_rx_corruption_is_caught_by_checksums_and_the_transfer_completes(
    fault_lab: DaemonLab,
) -> None:
    d = fault_lab.daemon(config_text=CORRUPTING_RX)
    nbytes = 8 << 20
    in_s = receive_from_kernel_source(d, nbytes, seed=31, port=7302)
    out_s = send_to_kernel_sink(d, nbytes, seed=32)
    stats = ctl(d, "stats", "--json")
    drops, dp = stats["drops"], stats["datapath"]
    caught = drops.get("tcp", {}).get("bad_checksum", 0) + drops.get("ipv4", {}).get(
        "bad_checksum", 0
    )
    print(
        f"\n1% rx bit flips: 8 MiB in {in_s:.1f}s, out {out_s:.1f}s; corrupted "
        f"{dp['impair_rx_corrupted']}, checksum drops {caught}, all drops {drops}"
    )
    assert dp["impair_rx_corrupted"] > 20
    assert caught > 0
    assert stats["summary"]["checksum_failures"] == caught
    # most flips land in a TCP segment (the checksum catches them); the rest hit a MAC
    # address, the EtherType or the IPv4 header. None reached a socket: the SHA-256s agree.
    assert caught >= 0.5 * dp["impair_rx_corrupted"], (drops, dp)
    assert dp["impair_tx_corrupted"] == 0


def test_peer_vanishes_mid_transfer_etimedout_after_bounded_retries(
    fault_lab: DaemonLab,
) -> None:
    d = fault_lab.daemon(config_text=QUICK_TIMEOUTS)
    with kernel_tcp_server(d.peer_ns, 0, "sink", io_timeout=120) as server:
        lib = d.client()
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, server.port)), timeout=30)
        local_port = lib.getsockname(qd)[1]
        pop_qt = lib.pop(qd)  # pending throughout: the sink never sends
        chunk = pattern_bytes(PUSH_CHUNK, seed=41)
        for _ in range(4):  # a transfer in progress
            lib.wait(lib.push(qd, chunk), timeout=30)
        assert [r["state"] for r in listed(d, local_port)] == ["ESTABLISHED"]
        link_down(d.peer_ns, d.peer_if)
        t0 = time.monotonic()
        # keep pushing: the send buffer (1 MiB) fills up and a push stays pending until
        # the connection gives up
        pushed = 0
        with pytest.raises(OSError) as info:
            while True:
                lib.wait(lib.push(qd, chunk), timeout=60)
                pushed += 1
                assert pushed < 4, "pushes still complete with the peer gone"
        elapsed = time.monotonic() - t0
        assert info.value.errno == errno.ETIMEDOUT, info.value
        with pytest.raises(OSError) as info:
            lib.wait(pop_qt, timeout=1)
        assert info.value.errno == errno.ETIMEDOUT, info.value
        # 4 retransmissions, RTO doubling from >= 0.2 s, capped at 0.5 s: about 2 s
        assert 1.0 < elapsed < 20.0, elapsed
        # the connection is freed: no longer listed, even while the descriptor is open
        wait_until(
            lambda: not listed(d, local_port),
            10.0,
            f"connection from port {local_port} to leave `xdpstackctl connections`",
            0.2,
            lambda: json.dumps(listed(d, local_port), indent=1),
        )
        with pytest.raises(OSError) as info:  # later operations report it too
            lib.wait(lib.push(qd, b"x"), timeout=10)
        assert info.value.errno in (errno.ETIMEDOUT, errno.EPIPE), info.value
        lib.close(qd)
    stats = ctl(d, "stats", "--json")
    assert stats["counters"]["tcp"].get("timeouts", 0) == 1, stats["counters"]["tcp"]
    assert stats["summary"]["rto_expirations"] >= 4
    wait_until(lambda: "timed out (ETIMEDOUT)" in d.log(), 5.0, "the timeout in the log")
    print(f"\npeer link down: ETIMEDOUT after {elapsed:.1f}s")


def test_keepalive_detects_a_vanished_peer_on_an_idle_connection(
    fault_lab: DaemonLab,
) -> None:
    d = fault_lab.daemon()
    with kernel_tcp_server(d.peer_ns, 0, "echo", io_timeout=120) as server:
        lib = d.client()
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, server.port)), timeout=30)
        for name, value in (
            ("SO_KEEPALIVE", 1),
            ("TCP_KEEPIDLE", 1),
            ("TCP_KEEPINTVL", 1),
            ("TCP_KEEPCNT", 3),
        ):
            lib.setsockopt(qd, name, value)
        assert echo_exchange(lib, qd, b"ping" * 100) == b"ping" * 100
        local_port = lib.getsockname(qd)[1]
        pop_qt = lib.pop(qd)
        # the peer is there: its answers to the probes keep the idle connection up
        with pytest.raises(TimeoutError):
            lib.wait(pop_qt, timeout=4.0)
        assert [r["state"] for r in listed(d, local_port)] == ["ESTABLISHED"]
        link_down(d.peer_ns, d.peer_if)
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            lib.wait(pop_qt, timeout=30)
        elapsed = time.monotonic() - t0
        assert info.value.errno == errno.ETIMEDOUT, info.value
        # idle 1 s (already partly spent), then 3 probes 1 s apart
        assert elapsed < 10.0, elapsed
        wait_until(lambda: not listed(d, local_port), 10.0, "the connection to be freed")
        lib.close(qd)
    stats = ctl(d, "stats", "--json")
    assert stats["counters"]["tcp"].get("timeouts", 0) == 1, stats["counters"]["tcp"]
    wait_until(lambda: "timed out (ETIMEDOUT)" in d.log(), 5.0, "the timeout in the log")
    print(f"\nkeep-alive: ETIMEDOUT {elapsed:.1f}s after the peer's link went down")
