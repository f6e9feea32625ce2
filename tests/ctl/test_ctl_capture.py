"""``xdpstackctl capture``: the CAPTURE stream, the pcap file, and the tap's removal
however the capture ends (count, stop request, SIGINT/SIGTERM, client gone, daemon
gone). Also the installed console script, run as a subprocess."""

from __future__ import annotations

import errno
import io
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from ctl_helpers import (
    WAIT,
    Mover,
    check_frames,
    read_capture,
    wait_for,
)
from harness import FAR_MAC, OUR_MAC, Daemon

from xdpstack import protocol as P
from xdpstack.ctl_client import ControlClient, DaemonError
from xdpstack.ctl_pcap import (
    F_END,
    F_STREAM,
    PcapError,
    PcapWriter,
    read_pcap,
    record,
    tcp_ports,
)
from xdpstack.protocol import Op
from xdpstackd.pcap import CaptureStream

REPO = Path(__file__).resolve().parents[2]


def capturing(daemon: Daemon) -> int:
    """How many captures the server runs; the engine has exactly that many taps (both
    read in one go on the loop thread). STATUS reports the same number."""
    engine, server = daemon.engine, daemon.server
    assert engine is not None and server is not None
    taps, captures = daemon.call(lambda: (len(engine._taps), len(server._captures)))
    assert taps == captures
    return captures


def ctl_script() -> str:
    script = REPO / ".venv" / "bin" / "xdpstackctl"
    if not script.exists():
        script = Path(sys.executable).parent / "xdpstackctl"
    if not script.exists():
        pytest.skip("the xdpstackctl console script is not installed (run scripts/setup.sh)")
    return str(script)


# ================================================================ the CLI as a function
def test_capture_count_and_port_filter(daemon: Daemon, ctl_run, tmp_path: Path) -> None:
    mover = Mover(daemon, (5001, 6001)).start()  # frames on both ports; keep only 5001
    try:
        wait_for(lambda: mover.sent > 0, "data to move")
        out = tmp_path / "cap.pcap"
        r = ctl_run("capture", "-w", str(out), "--count", "60", "--filter", "5001")
        assert r.rc == 0
        assert r.out == f"60 frames captured to {out} ({_payload_bytes(out)} bytes)\n"
        assert r.err == f"xdpstackctl: capturing to {out} (TCP port 5001, 60 frames); " + (
            "Ctrl-C to stop\n"
        )
    finally:
        mover.stop()
    records = read_capture(out)
    assert len(records) == 60
    check_frames(records, port=5001)
    # both directions: data out to the far end's port 5001, ACKs back from it
    dirs = {(rec.data[:6], tcp_ports(rec.data)[1] == 5001) for rec in records}
    assert (FAR_MAC, True) in dirs and (OUR_MAC, False) in dirs
    assert max(len(rec.data) for rec in records) == 14 + 20 + 20 + 1460  # full segments
    assert capturing(daemon) == 0


def test_capture_everything_json_summary(daemon: Daemon, ctl_run, tmp_path: Path) -> None:
    mover = Mover(daemon, (5001,)).start()
    try:
        out = tmp_path / "all.pcap"
        r = ctl_run("capture", "-w", str(out), "-c", "25", "--json")
        assert r.rc == 0 and r.err == ""
    finally:
        mover.stop()
    import json

    j = json.loads(r.out)
    assert j == {
        "file": str(out),
        "frames": 25,
        "bytes": _payload_bytes(out),
        "dropped": 0,
        "reason": "count",
        "daemon_frames": 25,
    }
    records = read_capture(out)
    assert len(records) == 25
    check_frames(records)


def test_capture_snaplen(daemon: Daemon, ctl_run, tmp_path: Path) -> None:
    mover = Mover(daemon, (5001,)).start()
    try:
        out = tmp_path / "short.pcap"
        assert ctl_run("capture", "-w", str(out), "-c", "20", "-s", "96").rc == 0
    finally:
        mover.stop()
    with open(out, "rb") as f:
        _, snaplen, recs = read_pcap(f)
        records = list(recs)
    assert snaplen == 96 and len(records) == 20
    assert all(len(r.data) == min(96, r.original_length) for r in records)
    assert any(r.original_length == 1514 for r in records)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--count", "0"], "--count must be a positive number of frames"),
        (["--filter", "70000"], "--filter takes a TCP port, 0-65535"),
        (["-s", "10"], "--snaplen must be 64-65535"),
    ],
)
def test_capture_bad_options(ctl_run, tmp_path: Path, argv: list[str], message: str) -> None:
    r = ctl_run("capture", "-w", str(tmp_path / "x.pcap"), *argv)
    assert (r.rc, r.out, r.err) == (1, "", f"xdpstackctl: {message}\n")
    assert not (tmp_path / "x.pcap").exists()


def test_capture_unwritable_file(daemon: Daemon, ctl_run, tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir.pcap"
    mover = Mover(daemon, (5001,)).start()
    try:
        r = ctl_run("capture", "-w", str(path), "-c", "5")
    finally:
        mover.stop()
    assert r.rc == 1 and r.out == ""
    assert r.err.endswith(f"xdpstackctl: cannot write {path}: No such file or directory\n")
    wait_for(lambda: capturing(daemon) == 0, "the tap to be removed")


# ================================================================ the stream, raw
def _start(client: ControlClient, args: dict[str, Any] | None = None) -> tuple[int, Any]:
    rid = client.send(Op.CAPTURE, args or {})
    frame = client.read_frame(WAIT)
    assert frame is not None and frame.request_id == rid and frame.flags == 0
    assert frame.type == P.FrameType.REPLY
    return rid, P.decode_value(frame.payload)


def test_stream_format_and_stop_request(daemon: Daemon) -> None:
    mover = Mover(daemon, (5001,)).start()
    try:
        with ControlClient(daemon.path) as client:
            rid, info = _start(client, {"port": 5001})
            assert info == {"linktype": 1, "snaplen": 65535, "count": None, "port": 5001}
            assert capturing(daemon) == 1
            got = 0
            while got < 10:
                frame = client.read_frame(WAIT)
                assert frame is not None and frame.request_id == rid
                assert frame.type == P.FrameType.REPLY and frame.flags == F_STREAM
                sec, usec, incl, orig = struct.unpack_from("<IIII", frame.payload)
                assert incl == orig == len(frame.payload) - 16 and usec < 1_000_000
                assert abs(sec - time.time()) < 60
                assert 5001 in tcp_ports(frame.payload[16:])
                got += 1
            stop_rid = client.send(Op.CAPTURE, {"stop": True})
            while True:  # frames already queued, then END, then the stop's reply
                frame = client.read_frame(WAIT)
                assert frame is not None
                if frame.flags & F_END:
                    break
                assert frame.request_id == rid and frame.flags == F_STREAM
                got += 1
            assert frame.request_id == rid and frame.flags == F_STREAM | F_END
            end = P.decode_value(frame.payload)
            assert end["reason"] == "stopped" and end["frames"] == got
            assert end["dropped"] == 0 and end["seen"] >= got
            reply = client.read_frame(WAIT)
            assert reply is not None and reply.request_id == stop_rid and reply.flags == 0
            assert P.decode_value(reply.payload) == {"stopped": True}
            assert capturing(daemon) == 0
            # the connection serves on: another capture, stopped before any frame
            assert client.request(Op.CAPTURE, {"stop": True}) == {"stopped": False}
            assert client.request(Op.STATUS)["captures"] == 0
    finally:
        mover.stop()


def test_client_going_away_removes_the_tap(daemon: Daemon) -> None:
    mover = Mover(daemon, (5001,)).start()
    try:
        client = ControlClient(daemon.path).connect()
        _start(client)
        assert client.read_frame(WAIT) is not None
        assert capturing(daemon) == 1
        client.close()  # no stop: the daemon must notice and remove the tap
        wait_for(lambda: capturing(daemon) == 0, "the tap to be removed")
        wait_for(lambda: mover.sent > 0, "data to move on")  # the datapath is unharmed
    finally:
        mover.stop()
    daemon.check_healthy()


def test_bad_capture_arguments_and_one_capture_per_connection(daemon: Daemon) -> None:
    with ControlClient(daemon.path) as client:
        for args in ({"count": -1}, {"port": 70000}, {"snaplen": 10}, {"bogus": 1}):
            with pytest.raises(DaemonError) as info:
                client.request(Op.CAPTURE, args)
            assert info.value.errno == errno.EINVAL, args
        assert client.request(Op.STATUS)["captures"] == 0
        _start(client)  # no traffic here: no stream frame comes between the replies
        with pytest.raises(DaemonError) as busy:
            client.request(Op.CAPTURE, {})
        assert busy.value.errno == errno.EBUSY
        assert client.request(Op.STATUS)["captures"] == 1
    wait_for(lambda: capturing(daemon) == 0, "the tap to be removed")


def test_daemon_stopping_ends_the_capture(tmp_path: Path) -> None:
    from xdpstack.ctl_capture import run_capture

    daemon = Daemon(str(tmp_path / "d.sock")).start()
    try:
        client = ControlClient(daemon.path).connect()
        buf = io.BytesIO()
        started: list[dict[str, Any]] = []

        def stop_daemon_once_started() -> bool:
            if started and daemon._thread is not None:
                daemon.stop()
            return False

        summary = run_capture(
            client, buf, should_stop=stop_daemon_once_started, on_start=started.append
        )
        client.close()
    finally:
        daemon.stop()
    assert summary["reason"] == "daemon closed the connection"
    _, _, records = read_pcap(io.BytesIO(buf.getvalue()))
    assert len(list(records)) == summary["frames"]


# ================================================================ backpressure (unit)
class _Transport:
    def __init__(self) -> None:
        self.queued = 0

    def get_write_buffer_size(self) -> int:
        return self.queued


class _Session:
    def __init__(self) -> None:
        self.closed = False
        self.transport = _Transport()
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def writelines(self, parts: list[bytes]) -> None:
        self.out.append(b"".join(parts))


class _Engine:
    def __init__(self) -> None:
        self.taps: list[Any] = []

    def add_tap(self, tap: Any) -> None:
        self.taps.append(tap)

    def remove_tap(self, tap: Any) -> None:
        self.taps.remove(tap)


def test_slow_reader_gets_drops_not_unbounded_memory() -> None:
    engine, session = _Engine(), _Session()
    ended = []
    cap = CaptureStream(
        engine, session, Op.CAPTURE, 7, count=3, max_queued=1000, on_end=ended.append
    )
    cap.start()
    (tap,) = engine.taps
    frame = b"\x00" * 60
    session.transport.queued = 5000  # the client does not read
    for _ in range(4):
        tap("in", frame, 1.5)
    assert cap.dropped == 4 and session.out == []
    session.transport.queued = 0
    for _ in range(5):
        tap("out", frame, 2.25)
    assert cap.frames == 3 and engine.taps == [] and ended == [cap]
    *records, end = session.out
    assert len(records) == 3
    for rec in records:
        _length, ftype, op, flags, rid = P.HEADER.unpack_from(rec)
        assert (ftype, op, flags, rid) == (P.FrameType.REPLY, Op.CAPTURE, F_STREAM, 7)
        assert rec[P.HEADER_SIZE :] == record(2.25, frame)
    frame_end, _ = P.decode_frame(end)
    assert frame_end.flags == F_STREAM | F_END
    summary = P.decode_value(frame_end.payload)
    assert (summary["frames"], summary["dropped"], summary["reason"]) == (3, 4, "count")


# ================================================================ pcap format (unit)
def test_pcap_roundtrip_and_reader_errors() -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf, snaplen=100)
    w.write_frame(1700000000.9999996, b"\x01" * 150)  # rounds into the next second
    w.write_frame(1700000001.25, b"\x02" * 60)
    head = buf.getvalue()[:24]
    assert head == struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 100, 1)
    linktype, snaplen, recs = read_pcap(io.BytesIO(buf.getvalue()))
    a, b = list(recs)
    assert (linktype, snaplen) == (1, 100)
    assert a.stamp == 1700000001.0 and a.data == b"\x01" * 100 and a.original_length == 150
    assert b.stamp == pytest.approx(1700000001.25) and b.data == b"\x02" * 60
    for bad in (b"", b"\x00" * 24, head + b"\x00" * 5, head + record(1.0, b"x" * 20)[:-3]):
        with pytest.raises(PcapError):
            list(read_pcap(io.BytesIO(bad))[2])
    # big-endian files (other writers) read too
    be = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    be += struct.pack(">IIII", 5, 6, 3, 3) + b"abc"
    assert [r.data for r in read_pcap(io.BytesIO(be))[2]] == [b"abc"]


def test_tcp_ports() -> None:
    from ctl_helpers import tcp_frame

    frame = tcp_frame()
    assert tcp_ports(frame) == (40000, 9)
    vlan = frame[:12] + b"\x81\x00\x00\x05" + frame[12:]
    assert tcp_ports(vlan) == (40000, 9)
    frag = bytearray(frame)
    frag[14 + 7] = 1  # a non-first fragment: no TCP header there
    assert tcp_ports(bytes(frag)) is None
    udp = bytearray(frame)
    udp[14 + 9] = 17
    assert tcp_ports(bytes(udp)) is None
    assert tcp_ports(frame[:30]) is None and tcp_ports(b"") is None
    arp = frame[:12] + b"\x08\x06" + frame[14:]
    assert tcp_ports(arp) is None


# ================================================================ the console script
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_console_script_capture_until_signal(daemon: Daemon, tmp_path: Path, sig) -> None:
    out = tmp_path / "sig.pcap"
    env = dict(os.environ, XDPSTACK_SOCKET=daemon.path)
    proc = subprocess.Popen(
        [ctl_script(), "capture", "-w", str(out), "--filter", "5001"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    mover = None
    try:
        wait_for(lambda: capturing(daemon) == 1 or proc.poll() is not None, "the capture")
        assert proc.poll() is None, proc.communicate()
        mover = Mover(daemon, (5001,)).start()
        wait_for(lambda: out.exists() and out.stat().st_size > 24 + 10 * 70, "frames on disk")
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if mover is not None:
            mover.stop()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stderr == f"xdpstackctl: capturing to {out} (TCP port 5001); Ctrl-C to stop\n"
    records = read_capture(out)
    assert stdout == f"{len(records)} frames captured to {out} ({_payload_bytes(out)} bytes)\n"
    assert len(records) >= 10
    check_frames(records, port=5001)
    assert capturing(daemon) == 0


def test_console_script_status_and_unreachable(daemon: Daemon, tmp_path: Path) -> None:
    ok = subprocess.run(
        [ctl_script(), "--socket", daemon.path, "status"], capture_output=True, text=True
    )
    assert ok.returncode == 0 and ok.stderr == ""
    assert ok.stdout.startswith("xdpstackd ") and f"pid {os.getpid()}" in ok.stdout
    missing = str(tmp_path / "missing.sock")
    bad = subprocess.run([ctl_script(), "--socket", missing, "ss"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == (
        f"xdpstackctl: cannot reach xdpstackd at {missing}: No such file or directory\n"
    )


def _payload_bytes(path: Path) -> int:
    return sum(len(r.data) for r in read_capture(path))
