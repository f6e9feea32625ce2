"""Bulk transfer between xdpstackd and the kernel's TCP, 64 MiB each direction, checked
with SHA-256; afterwards every AF_XDP frame is back where it started (none leaked).

The throughput is printed (``pytest -s`` shows it) and is not asserted: it is a test,
not a benchmark (see ``bench/``).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
from netfixtures import kernel_tcp_client, kernel_tcp_server, pattern_bytes, pattern_sha256
from xdpd_harness import DaemonProcess, wait_until

pytestmark = pytest.mark.integration

NBYTES = 64 << 20
TRANSFER_TIMEOUT = 180.0  # ~5 s on an idle 2-core machine; generous for a loaded CI run
PUSH_CHUNK = 1 << 20
PUSHES_IN_FLIGHT = 4


def datapath_stats(daemon: DaemonProcess) -> dict[str, Any]:
    return daemon.stats()["datapath"]


def assert_frames_back(daemon: DaemonProcess, before: dict[str, Any]) -> dict[str, Any]:
    """Wait until the free-frame count is back at ``before``'s (transmissions still in the
    completion ring are reclaimed by the STATS call itself) and the frame accounting adds
    up; return the stats."""
    latest: dict[str, Any] = {}

    def back() -> bool:
        latest.update(datapath_stats(daemon))
        return latest["free_frames"] == before["free_frames"]

    wait_until(
        back,
        10.0,
        "the AF_XDP free-frame count to return to its start value",
        0.05,
        lambda: f"before: {before}\nafter: {latest}",
    )
    assert latest["total_frames"] == before["total_frames"]
    assert (
        latest["free_frames"] + latest["rx_outstanding"] + latest["tx_outstanding"]
        == latest["total_frames"]
    ), latest
    assert latest["tx_outstanding"] == before["tx_outstanding"], (before, latest)
    assert latest["rx_outstanding"] == before["rx_outstanding"], (before, latest)
    return latest


def report(direction: str, seconds: float, before: dict[str, Any], after: dict[str, Any]) -> None:
    mbit = NBYTES * 8 / seconds / 1e6
    print(
        f"\n{direction}: {NBYTES >> 20} MiB in {seconds:.2f}s = {mbit:.0f} Mbit/s; "
        f"rx frames {after['rx_frames'] - before['rx_frames']}, "
        f"tx frames {after['tx_frames'] - before['tx_frames']}, "
        f"free frames {before['free_frames']} -> {after['free_frames']} "
        f"of {after['total_frames']}"
    )


def test_bulk_64mib_xdpstack_to_kernel_sink_sha256_and_no_frames_leaked(
    daemon: DaemonProcess,
) -> None:
    d = daemon
    data = pattern_bytes(NBYTES, seed=11)
    before = datapath_stats(d)
    with kernel_tcp_server(d.peer_ns, 0, "sink", io_timeout=TRANSFER_TIMEOUT) as server:
        lib = d.client()
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, server.port)), timeout=20)
        deadline = time.monotonic() + TRANSFER_TIMEOUT
        t0 = time.perf_counter()
        view = memoryview(data)
        in_flight: list[int] = []
        for start in range(0, NBYTES, PUSH_CHUNK):
            in_flight.append(lib.push(qd, view[start : start + PUSH_CHUNK]))
            if len(in_flight) >= PUSHES_IN_FLIGHT:
                lib.wait(in_flight.pop(0), timeout=max(deadline - time.monotonic(), 0.1))
        for qt in in_flight:
            lib.wait(qt, timeout=max(deadline - time.monotonic(), 0.1))
        lib.close(qd)  # the rest of the send buffer, then FIN
        (conn,) = server.results(1, timeout=max(deadline - time.monotonic(), 1.0))
        elapsed = time.perf_counter() - t0
    assert conn["error"] is None, conn
    assert conn["eof"] is True
    assert conn["rx_bytes"] == NBYTES
    assert conn["rx_sha256"] == hashlib.sha256(data).hexdigest()
    after = assert_frames_back(d, before)
    report("xdpstack -> kernel", elapsed, before, after)


def test_bulk_64mib_kernel_source_to_xdpstack_sha256_and_no_frames_leaked(
    daemon: DaemonProcess,
) -> None:
    d = daemon
    port = 7201
    before = datapath_stats(d)
    lib = d.client()
    listener = lib.socket()
    lib.bind(listener, (d.stack_ip, port))
    lib.listen(listener, 4)
    accept_qt = lib.accept(listener)
    client = kernel_tcp_client(
        d.peer_ns, d.stack_ip, port, "source", nbytes=NBYTES, seed=12, io_timeout=TRANSFER_TIMEOUT
    )
    qd = lib.wait(accept_qt, timeout=20).new_qd
    deadline = time.monotonic() + TRANSFER_TIMEOUT
    t0 = time.perf_counter()
    digest = hashlib.sha256()
    total = 0
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"{total} of {NBYTES} bytes in {TRANSFER_TIMEOUT}s"
        chunk = lib.wait(lib.pop(qd), timeout=left).data
        if not chunk:
            break
        digest.update(chunk)
        total += len(chunk)
    elapsed = time.perf_counter() - t0
    lib.close(qd)
    lib.close(listener)
    conn = client.result(timeout=20)
    assert conn["error"] is None, conn
    assert conn["tx_bytes"] == NBYTES
    assert total == NBYTES
    assert digest.hexdigest() == pattern_sha256(NBYTES, seed=12)
    after = assert_frames_back(d, before)
    report("kernel -> xdpstack", elapsed, before, after)
