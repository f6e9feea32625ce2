"""The interface MTU: the daemon derives its MSS from it and exchanges full-size frames
with the kernel; an MTU its frames cannot carry is refused clearly at start-up."""

from __future__ import annotations

import hashlib

import pytest
from netfixtures import kernel_tcp_client, kernel_tcp_server, pattern_bytes, pattern_sha256
from xdpd_harness import DaemonExited, DaemonLab, echo_exchange, xdp_attached

from xdpstackd.datapath.xsk import max_mtu

pytestmark = pytest.mark.integration

IO_TIMEOUT = 30.0


@pytest.mark.parametrize("mtu", [1280, 3500])
def test_full_size_frames_both_ways_at_mtu(daemon_lab: DaemonLab, mtu: int) -> None:
    d = daemon_lab.daemon(daemon_lab.pair(mtu=mtu))
    before = d.stats()["datapath"]
    lib = d.client()
    nbytes = 4 << 20
    with kernel_tcp_server(d.peer_ns, 0, "echo") as server:
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, server.port)), timeout=IO_TIMEOUT)
        data = pattern_bytes(nbytes, seed=mtu)
        assert echo_exchange(lib, qd, data, IO_TIMEOUT) == data
        lib.close(qd)
        assert server.result(timeout=IO_TIMEOUT)["error"] is None
    after = d.stats()["datapath"]
    # Bulk data travels in segments of MSS = MTU - 40: frames of MTU + 14 bytes each way,
    # so the frame count is close to nbytes / MSS (plus ACKs, which are counted too).
    mss = mtu - 40
    rx_frames = after["rx_frames"] - before["rx_frames"]
    rx_bytes = after["rx_bytes"] - before["rx_bytes"]
    tx_frames = after["tx_frames"] - before["tx_frames"]
    print(f"\nMTU {mtu}: {rx_frames} frames in, {tx_frames} out for {nbytes} bytes each way")
    assert rx_bytes >= nbytes
    assert rx_frames < 1.9 * nbytes / mss, (rx_frames, tx_frames)  # data + at most ~1 ACK each
    assert tx_frames < 1.9 * nbytes / mss, (rx_frames, tx_frames)
    # the kernel side sends full-size segments too: a passive connection, kernel -> us
    listener = lib.socket()
    lib.bind(listener, (d.stack_ip, 7501))
    lib.listen(listener, 4)
    accept_qt = lib.accept(listener)
    client = kernel_tcp_client(d.peer_ns, d.stack_ip, 7501, "source", nbytes=nbytes, seed=1)
    qd = lib.wait(accept_qt, timeout=IO_TIMEOUT).new_qd
    digest = hashlib.sha256()
    while chunk := lib.wait(lib.pop(qd), timeout=IO_TIMEOUT).data:
        digest.update(chunk)
    assert digest.hexdigest() == pattern_sha256(nbytes, seed=1)
    lib.close(qd)
    assert client.result(timeout=IO_TIMEOUT)["error"] is None


def test_mtu_above_one_umem_frame_is_refused_clearly(daemon_lab: DaemonLab) -> None:
    limit = max_mtu()
    d = daemon_lab.daemon(daemon_lab.pair(mtu=limit + 1), start=False)
    with pytest.raises(DaemonExited):
        d.start(timeout=60)
    assert d.proc is not None and d.proc.returncode == 1
    log = d.log()
    assert "Traceback" not in log, log
    assert f"MTU {limit + 1} is too large" in log, log
    assert f"mtu {limit}" in log, log  # the command that fixes it
    assert not xdp_attached(d.stack_ns, d.stack_if)


def test_mtu_the_daemon_accepts_either_works_or_is_refused_clearly(daemon_lab: DaemonLab) -> None:
    """At the largest MTU the daemon's own check allows (one UMEM frame), native XDP on a
    veth may still refuse the program (veth's limit is a page less headroom and
    skb_shared_info). The daemon must then say that the MTU is the problem, not fail
    with a bare errno."""
    limit = max_mtu()
    d = daemon_lab.daemon(daemon_lab.pair(mtu=limit), start=False)
    try:
        d.start(timeout=60)
    except DaemonExited:
        log = d.log()
        last = [line for line in log.splitlines() if line.strip()][-1]
        assert "MTU" in last or "mtu" in last, (
            f"xdpstackd refused MTU {limit} (its own check allows it) without saying that "
            f"the MTU is the problem; last line: {last!r}"
        )
        assert "Traceback" not in log, "a start-up failure should be one line, not a traceback"
        assert not xdp_attached(d.stack_ns, d.stack_if)
        return
    lib = d.client()
    with kernel_tcp_server(d.peer_ns, 0, "echo") as server:
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, server.port)), timeout=IO_TIMEOUT)
        data = pattern_bytes(1 << 20)
        assert echo_exchange(lib, qd, data, IO_TIMEOUT) == data
        lib.close(qd)
