"""``xdpstackctl`` against the real ``xdpstackd`` (XDP + AF_XDP on a veth pair) during a
transfer to the Linux kernel's TCP in another namespace: ``connections`` and ``show``
see the connection ESTABLISHED with moving counters, ``stats`` sees the XDP program
redirecting, and ``capture -w`` records the transfer's frames.

The daemon is started with the integration tests' harness (tests/integration/
xdpd_harness.py). With ``XDPSTACK_CTL_SAMPLE=FILE`` set, the text of ``connections``,
``show``, ``status`` and ``stats`` taken during the transfer is written to FILE (the
repository keeps one in notes/ctl_sample_output.txt).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_support import integration_unavailable_reason, require_integration
from netfixtures import kernel_tcp_server, require_netns

import xdpstack
from xdpstack.ctl_pcap import read_pcap, tcp_ports

_INTEGRATION = str(Path(__file__).resolve().parent.parent / "integration")
if _INTEGRATION not in sys.path:
    sys.path.insert(0, _INTEGRATION)

from xdpd_harness import DaemonLab, DaemonProcess, daemon_executable, wait_until  # noqa: E402

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TRANSFER_S = 60.0  # upper bound; the test stops the transfer when it is done
CHUNK = 256 << 10


@pytest.fixture
def real_daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DaemonProcess]:
    reason = integration_unavailable_reason()
    if reason is not None:
        require_integration(reason)
    require_netns()
    if daemon_executable() is None:
        require_integration("xdpstackd is not installed in .venv (run scripts/setup.sh)")
    lab = DaemonLab(request.node, tmp_path)
    try:
        yield lab.daemon(name="xdpstackd-ctl")
    finally:
        lab.close()


class Transfer:
    """Our stack pushes to a kernel sink as fast as it goes, from a thread with its own
    client connection, until stopped."""

    def __init__(self, d: DaemonProcess, port: int) -> None:
        self.lib = xdpstack.connect(d.socket_path)
        self.qd = self.lib.socket()
        self.lib.wait(self.lib.connect(self.qd, (d.peer_ip, port)), timeout=20)
        self.local_port = self.lib.getsockname(self.qd)[1]
        self.sent = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        data = os.urandom(CHUNK)
        deadline = time.monotonic() + TRANSFER_S
        in_flight: list[int] = []  # two pushes queued keep the send buffer (Send-Q) full
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                in_flight.append(self.lib.push(self.qd, data))
                if len(in_flight) > 2:
                    self.lib.wait(in_flight.pop(0), timeout=20)
                    self.sent += len(data)
            for qt in in_flight:
                self.lib.wait(qt, timeout=20)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self.lib.close_all()
        assert self.error is None, f"transfer failed: {self.error!r}"


def ctl_script() -> str:
    for candidate in (
        REPO / ".venv" / "bin" / "xdpstackctl",
        Path(sys.executable).parent / "xdpstackctl",
    ):
        if candidate.is_file():
            return str(candidate)
    require_integration("the xdpstackctl command is not installed (run scripts/setup.sh)")


def run_ctl(d: DaemonProcess, *argv: str) -> str:
    """``xdpstackctl`` as the installed command (its own process: the transfer thread
    here keeps the GIL to itself, so the queues look as they do in real use)."""
    proc = subprocess.run(
        [ctl_script(), "--socket", str(d.socket_path), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"xdpstackctl {' '.join(argv)}: {proc.stderr}"
    assert "Traceback" not in proc.stderr
    return proc.stdout


def test_ctl_during_a_transfer_to_the_kernel(real_daemon: DaemonProcess, tmp_path: Path) -> None:
    d = real_daemon
    with kernel_tcp_server(d.peer_ns, 0, "sink", io_timeout=TRANSFER_S + 30) as server:
        transfer = Transfer(d, server.port)
        try:
            wait_until(lambda: transfer.sent > 1 << 20, 30, "the transfer to get going")
            peer = f"{d.peer_ip}:{server.port}"
            local = f"{d.stack_ip}:{transfer.local_port}"

            # connections: the row of our transfer, ESTABLISHED, owned by this process
            ss_text = run_ctl(d, "connections")
            lines = ss_text.splitlines()
            assert lines[0].split()[:4] == ["ID", "State", "Recv-Q", "Send-Q"]
            (row,) = [line.split() for line in lines[1:] if peer in line.split()]
            assert row[1] == "ESTABLISHED" and row[4] == local and row[10] == str(os.getpid())
            conn_id = row[0]

            # show, twice: the counters move
            show_text = run_ctl(d, "show", conn_id)
            assert show_text.startswith(f"connection {conn_id}  ESTABLISHED  {local} -> {peer}")
            for heading in ("connection management", "ordered delivery", "flow control"):
                assert f"\n{heading}\n" in show_text
            assert "\ncongestion control\n" in show_text
            first = json.loads(run_ctl(d, "show", conn_id, "--json"))
            sent_before = transfer.sent
            wait_until(lambda: transfer.sent > sent_before + (1 << 20), 30, "more data")
            second = json.loads(run_ctl(d, "show", conn_id, "--json"))
            od1, od2 = first["ordered_delivery"], second["ordered_delivery"]
            assert (od2["snd_una"] - od1["snd_una"]) % (1 << 32) > 0
            assert second["connection_management"]["state"] == "ESTABLISHED"

            # capture: frames of this transfer
            pcap = tmp_path / "transfer.pcap"
            capture_text = run_ctl(
                d, "capture", "-w", str(pcap), "--count", "200", "--filter",
                str(server.port),
            )  # fmt: skip
            assert capture_text.startswith(f"200 frames captured to {pcap}")

            # stats: the XDP program redirects our flows; status and steering agree
            stats = json.loads(run_ctl(d, "stats", "--json"))
            assert stats["xdp"]["redirected"] > 0
            assert stats["summary"]["xdp_redirected"] == stats["xdp"]["redirected"]
            assert stats["summary"]["segments_out"] > 100 and stats["summary"]["drops"] >= 0
            stats_text = run_ctl(d, "stats")
            assert "xdp program\n" in stats_text and "xdp redirected" in stats_text
            status = json.loads(run_ctl(d, "status", "--json"))
            assert status["interface"]["name"] == d.stack_if
            assert status["address"]["ip"] == d.stack_ip
            assert status["address"]["mode"] == "shared"
            assert status["queues"]["datapath"] == "af_xdp" and status["queues"]["count"] == 1
            assert status["xdp_program"]["attached"] is True
            assert status["xdp_program"]["mode"] in ("native", "generic")
            status_text = run_ctl(d, "status")
            steering = json.loads(run_ctl(d, "steering", "--json"))
            assert steering["source"] == "xdp"
            assert {"address": d.stack_ip, "port": transfer.local_port} in steering["entries"]
        finally:
            transfer.stop()

    with open(pcap, "rb") as f:
        linktype, _, records = read_pcap(f)
        frames = list(records)
    assert linktype == 1 and len(frames) == 200
    ports = [tcp_ports(r.data) for r in frames]
    assert all(p is not None and server.port in p for p in ports)
    assert any(p[1] == server.port for p in ports) and any(p[0] == server.port for p in ports)
    assert max(len(r.data) for r in frames) > 1000  # data segments, not only ACKs

    sample = os.environ.get("XDPSTACK_CTL_SAMPLE")
    if sample:
        Path(sample).write_text(
            "# xdpstackctl during a transfer from xdpstackd to a Linux kernel TCP sink\n"
            "# (tests/ctl/test_ctl_real_daemon.py; XDP + AF_XDP on a veth pair)\n\n"
            f"$ xdpstackctl connections\n{ss_text}\n"
            f"$ xdpstackctl show {conn_id}\n{show_text}\n"
            f"$ xdpstackctl status\n{status_text}\n"
            f"$ xdpstackctl stats\n{stats_text}"
        )
