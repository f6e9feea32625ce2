"""Bursts through the real daemon and AF_XDP: thousands of connections closed at once,
from either end, lose no frame.

* The kernel peer resets 6,000 connections at once (SO_LINGER 0: an RST each, ~100,000
  per second): the daemon drops every connection, and the kernel drops no frame for want
  of a fill-ring frame (the engine drains the rx ring into memory while the stack works).
* The daemon's client goes away holding 6,000 connections: the daemon sends 6,000 FINs in
  one loop iteration, more than it has transmit frames; none is dropped (frames without
  room wait in the transmit queue), and the kernel peer sees every EOF.

The kernel peer is a small epoll server run with ``ip netns exec`` in the peer namespace.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
from xdpd_harness import DaemonProcess, wait_until

pytestmark = pytest.mark.integration

CONNS = 6000
WINDOW = 256  # connects in flight
PORT = 7301

PEER = r"""
import json, resource, selectors, socket, struct, sys
conns, port = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(4096)
srv.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(srv, selectors.EVENT_READ)
sel.register(sys.stdin, selectors.EVENT_READ)
held, eofs = [], 0
print(json.dumps({"event": "listening"}), flush=True)
while True:
    for key, _ in sel.select(1.0):
        if key.fileobj is srv:
            while True:
                try:
                    c, _ = srv.accept()
                except BlockingIOError:
                    break
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
                held.append(c)
            if len(held) == conns:
                print(json.dumps({"event": "held", "count": len(held)}), flush=True)
        elif key.fileobj is sys.stdin:
            line = sys.stdin.readline().strip()
            if line == "reset":  # every connection at once, an RST each
                linger = struct.pack("ii", 1, 0)
                for c in held:
                    sel.unregister(c)
                    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    c.close()
                print(json.dumps({"event": "reset", "count": len(held)}), flush=True)
                held = []
            elif line in ("", "quit"):
                sys.exit(0)
        else:
            try:
                data = key.fileobj.recv(4096)
            except ConnectionError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                eofs += 1
                if eofs == conns:
                    print(json.dumps({"event": "eofs", "count": eofs}), flush=True)
"""


class Peer:
    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", PEER, str(CONNS), str(PORT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def expect(self, event: str, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"kernel peer exited ({self.proc.poll()}) before {event}")
            msg = json.loads(line)
            if msg["event"] == event:
                return msg
        raise AssertionError(f"kernel peer: no {event} in {timeout} s")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # our own child, by PID
        self.proc.wait(10)


def connect_all(d: DaemonProcess, lib: Any) -> list[int]:
    """CONNS connections from the daemon to the kernel peer, WINDOW at a time."""
    qds: list[int] = []
    pending: list[int] = []
    for _ in range(CONNS):
        qd = lib.socket()
        qds.append(qd)
        pending.append(lib.connect(qd, (d.peer_ip, PORT)))
        if len(pending) >= WINDOW:
            for qt in pending:
                lib.wait(qt, timeout=60)
            pending = []
    for qt in pending:
        lib.wait(qt, timeout=60)
    return qds


def datapath(d: DaemonProcess) -> dict[str, int]:
    return d.stats()["datapath"]


def test_a_burst_of_resets_from_the_peer_loses_no_frame(daemon: DaemonProcess) -> None:
    d = daemon
    peer = Peer(d.peer_ns)
    try:
        peer.expect("listening")
        lib = d.client()
        connect_all(d, lib)
        peer.expect("held")
        before = datapath(d)
        peer.send("reset")
        peer.expect("reset")
        wait_until(lambda: d.stats()["connections"] == 0, 60, "every connection reset", 0.2)
        after = datapath(d)
        stats = d.stats()
    finally:
        peer.stop()
    lost = after["kernel_rx_dropped"] - before["kernel_rx_dropped"]
    empty = after["kernel_rx_fill_ring_empty_descs"] - before["kernel_rx_fill_ring_empty_descs"]
    print(
        f"\n{CONNS} RSTs at once: kernel rx drops {lost}, fill ring empty {empty}, "
        f"engine rx backlog peak {stats['rx_backlog_peak']} frames"
    )
    assert lost == 0 and empty == 0
    assert stats["stack"]["tcp_resets_in"] >= CONNS


def test_a_mass_close_sends_every_fin(daemon: DaemonProcess) -> None:
    d = daemon
    peer = Peer(d.peer_ns)
    try:
        peer.expect("listening")
        lib = d.client()
        connect_all(d, lib)
        peer.expect("held")
        before = datapath(d)
        lib.disconnect()  # the daemon closes all CONNS descriptors in one go
        peer.expect("eofs")  # the peer closes back: our side ends in TIME_WAIT
        after = datapath(d)
        stack = d.stats()["stack"]
    finally:
        peer.stop()
    print(
        f"\n{CONNS} FINs at once: tx frames {after['tx'] - before['tx']}, transmit queue "
        f"peak {after['tx_queue_peak']}, stops for want of a frame "
        f"{after['tx_no_frame'] - before['tx_no_frame']} or a slot "
        f"{after['tx_ring_full'] - before['tx_ring_full']}, retransmits "
        f"{stack.get('tcp_retransmits', 0)}"
    )
    assert after["tx_dropped"] == before["tx_dropped"]
    assert after["tx_queue_dropped"] == 0
    assert after["tx"] - before["tx"] >= CONNS
