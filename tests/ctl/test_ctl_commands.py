"""``xdpstackctl`` against a real daemon stack without the kernel: the Engine on the
simulated datapath with the API server (tests/api/harness.py), real connections open
and data moving. The CLI runs as a function (``ctl.main``); test_ctl_capture.py runs the
installed console script too."""

from __future__ import annotations

import errno
import json
import os
import re

import pytest
from ctl_helpers import (
    WAIT,
    Mover,
    conn_by_qd,
    control,
    established,
    inject,
    steady_connections,
    table_rows,
    tcp_frame,
    truncated_ipv4_frame,
    wait_for,
)
from harness import FAR_IP, OUR_IP, Daemon, pattern

import xdpstack
from xdpstack import ctl
from xdpstack.protocol import Op

CONN_HEADERS = [
    "ID",
    "State",
    "Recv-Q",
    "Send-Q",
    "Local Address:Port",
    "Peer Address:Port",
    "Cwnd",
    "SRTT",
    "RTO",
    "Retrans",
    "PID",
]
COMPONENTS = ("connection_management", "ordered_delivery", "flow_control", "congestion_control")


# ======================================================================== status
def test_status_text(daemon: Daemon, lib: xdpstack.Lib, ctl_run) -> None:
    established(daemon, lib, 5001)
    r = ctl_run("status")
    assert r.rc == 0 and r.err == ""
    lines = r.out.splitlines()
    assert lines[0].startswith(f"xdpstackd {xdpstack.__version__}  pid {os.getpid()}  up ")
    assert re.search(r"^socket\s+" + re.escape(daemon.path) + "$", r.out, re.M)
    assert re.search(rf"^address\s+{OUR_IP}/24  owned$", r.out, re.M)
    assert re.search(r"^queues\s+1  simulated datapath$", r.out, re.M)
    assert re.search(r"^interface\s+.*mtu 1500, mac 02:00:00:00:00:01", r.out, re.M)
    assert re.search(r"^xdp\s+none", r.out, re.M)
    assert re.search(r"^connections\s+1  sockets 1  steered ports 1$", r.out, re.M)
    assert re.search(r"^clients\s+2$", r.out, re.M)  # the library's and ours
    headers, rows = table_rows("\n".join(line for line in lines if line.startswith("  ")))
    assert headers[:3] == ["CLIENT", "PID", "UID"]
    by_id = {row[0]: row for row in rows if row[0][0].isdigit()}
    assert by_id[str(lib.client_id)][1:3] == [str(os.getpid()), str(os.getuid())]
    assert by_id[str(lib.client_id)][4] == "1"  # its one descriptor
    assert any(key.endswith("*") for key in by_id)  # this xdpstackctl, marked


def test_status_json(daemon: Daemon, lib: xdpstack.Lib, ctl_run) -> None:
    established(daemon, lib, 5001)
    r = ctl_run("status", "--json")
    assert r.rc == 0
    s = json.loads(r.out)
    assert s["version"] == xdpstack.__version__ and s["pid"] == os.getpid()
    assert s["uptime_s"] >= 0 and s["socket"] == daemon.path
    assert s["address"] == {"ip": OUR_IP, "prefix_len": 24, "mode": "owned", "gateway": None}
    assert s["interface"]["mtu"] == 1500
    assert s["queues"]["count"] == 1 and s["queues"]["datapath"] == "simulated"
    assert s["xdp_program"] is None
    assert s["connections"] == 1 and s["captures"] == 0
    clients = {c["id"]: c for c in s["clients"]}
    assert clients[lib.client_id]["pid"] == os.getpid()
    assert clients[lib.client_id]["uid"] == os.getuid()
    assert s["this_client"] in clients and s["this_client"] != lib.client_id
    # --json before the command is the same option
    assert json.loads(ctl_run("--json", "status").out).keys() == s.keys()


# ======================================================================== connections
def test_connections_table_queues_and_owner(daemon: Daemon, lib: xdpstack.Lib, ctl_run) -> None:
    qd, far_qd = established(daemon, lib, 5001)
    port = lib.getsockname(qd)[1]
    # Recv-Q: the far end sends 5000 bytes we do not pop. Send-Q: we push more than the
    # far end (which does not read) can take, so bytes stay queued on our side.
    daemon.far.wait_ok(daemon.far.push(far_qd, pattern(5000)))
    lib.push(qd, pattern(3 << 20))

    def settled(conns: list) -> bool:
        od = conns[0].get("ordered_delivery") or {}
        return od.get("recv_queue_bytes") == 5000 and od.get("unsent_bytes", 0) > 0

    (conn,) = steady_connections(daemon, settled)
    od = conn["ordered_delivery"]
    send_q = od["unacked_bytes"] + od["unsent_bytes"]

    r = ctl_run("connections")
    assert r.rc == 0 and r.err == ""
    headers, rows = table_rows(r.out)
    assert headers == CONN_HEADERS
    (row,) = rows
    cid = conn["connection_management"]["id"]
    assert row[:6] == [
        str(cid),
        "ESTABLISHED",
        "5000",
        str(send_q),
        f"{OUR_IP}:{port}",
        f"{FAR_IP}:5001",
    ]
    assert row[6] == str(conn["congestion_control"]["cwnd"])
    assert re.fullmatch(r"[\d.]+(us|ms|s)", row[7]) and row[8] == "200ms"
    assert row[9] == "0" and row[10] == str(os.getpid())

    (j,) = json.loads(ctl_run("connections", "--json").out)
    assert set(j) == {
        "id", "state", "local", "peer", "send_q", "recv_q", "cwnd", "ssthresh", "srtt_s",
        "rttvar_s", "rto_s", "retransmits", "snd_wnd", "rcv_wnd", "mss", "qd", "owner", "pid",
    }  # fmt: skip
    assert j["id"] == cid and j["state"] == "ESTABLISHED"
    assert j["local"] == {"address": OUR_IP, "port": port}
    assert j["peer"] == {"address": FAR_IP, "port": 5001}
    assert (j["recv_q"], j["send_q"], j["qd"]) == (5000, send_q, qd)
    assert j["owner"] == {"client": lib.client_id, "pid": os.getpid(), "uid": os.getuid()}
    assert j["pid"] == os.getpid() and j["mss"] == 1460


def test_ss_is_connections(daemon: Daemon, lib: xdpstack.Lib, ctl_run) -> None:
    established(daemon, lib, 5001)
    a, b = ctl_run("ss"), ctl_run("connections")
    assert a.rc == b.rc == 0
    assert table_rows(a.out)[0] == table_rows(b.out)[0] == CONN_HEADERS
    assert [r[:6] for r in table_rows(a.out)[1]] == [r[:6] for r in table_rows(b.out)[1]]


def test_connections_handshake_and_orphan_rows(daemon: Daemon, lib: xdpstack.Lib, ctl_run) -> None:
    # a SYN_SENT that stays (nobody answers ARP for 10.0.0.77)
    syn_qd = lib.socket()
    lib.connect(syn_qd, ("10.0.0.77", 80))
    # an orphan: its client went away; the daemon closed it, the far end did not
    other = daemon.connect()
    established(daemon, other, 6001)
    other.disconnect()

    def orphan_seen(conns: list) -> bool:
        return any(c["connection_management"]["state"].startswith("FIN_WAIT") for c in conns)

    wait_for(lambda: orphan_seen(control(daemon, Op.CONNECTIONS)), "the orphan in FIN_WAIT")
    r = ctl_run("ss")
    assert r.rc == 0
    _, rows = table_rows(r.out)
    by_state = {row[1]: row for row in rows}
    syn = by_state["SYN_SENT"]
    assert syn[2:4] == ["-", "-"] and syn[5] == "10.0.0.77:80"
    assert syn[6:8] == ["-", "-"] and syn[8] == "1.00s"  # the handshake's own RTO
    assert syn[10] == str(os.getpid())
    (orphan,) = [row for state, row in by_state.items() if state.startswith("FIN_WAIT")]
    assert orphan[5] == f"{FAR_IP}:6001" and orphan[10] == "-"
    rows_json = json.loads(ctl_run("ss", "--json").out)
    (jo,) = [j for j in rows_json if j["state"].startswith("FIN_WAIT")]
    assert jo["owner"] is None and jo["pid"] is None and jo["qd"] is None
    (js,) = [j for j in rows_json if j["state"] == "SYN_SENT"]
    assert js["send_q"] is None and js["cwnd"] is None and js["qd"] == syn_qd


def test_connections_empty(ctl_run) -> None:
    r = ctl_run("connections")
    assert r.rc == 0 and r.out.splitlines() == [r.out.splitlines()[0]]
    assert json.loads(ctl_run("ss", "--json").out) == []


# ======================================================================== show
def test_show_established_every_field_grouped_and_aligned(
    daemon: Daemon, lib: xdpstack.Lib, ctl_run
) -> None:
    qd, far_qd = established(daemon, lib, 5001)
    data = pattern(200_000)
    lib.wait(lib.push(qd, data), WAIT)
    assert daemon.far.recv_exactly(far_qd, len(data)) == data
    daemon.far.wait_ok(daemon.far.push(far_qd, b"hello"))
    wait_for(
        lambda: (
            conn_by_qd(daemon, lib, qd)["ordered_delivery"]["unacked_bytes"] == 0
            and conn_by_qd(daemon, lib, qd)["ordered_delivery"]["recv_queue_bytes"] == 5
        ),
        "the transfer to be acknowledged",
    )
    conn = conn_by_qd(daemon, lib, qd)
    cid = conn["connection_management"]["id"]

    r = ctl_run("show", str(cid))
    assert r.rc == 0 and r.err == ""
    lines = r.out.splitlines()
    port = lib.getsockname(qd)[1]
    assert lines[0] == (
        f"connection {cid}  ESTABLISHED  {OUR_IP}:{port} -> {FAR_IP}:5001  "
        f"owner pid {os.getpid()} uid {os.getuid()} (client {lib.client_id}, qd {qd})"
    )
    headings = [line for line in lines[1:] if line and not line.startswith(" ")]
    assert headings == [c.replace("_", " ") for c in COMPONENTS]
    # every field of every component, under its heading, values in one column
    value_columns = set()
    for component in COMPONENTS:
        start = lines.index(component.replace("_", " "))
        block = []
        for line in lines[start + 1 :]:
            if not line.startswith("  "):
                break
            block.append(line)
        names = [line.split()[0] for line in block]
        assert names == list(conn[component]), component
        for line in block:
            m = re.match(r"  (\S+)(\s+)(\S.*)$", line)
            assert m, line
            value_columns.add(len(m.group(1)) + len(m.group(2)))
    assert len(value_columns) == 1, value_columns

    def value(name: str) -> str:
        (line,) = [ln for ln in lines if ln.split()[:1] == [name]]
        return line.split(None, 1)[1]

    od, fc, cc = conn["ordered_delivery"], conn["flow_control"], conn["congestion_control"]
    assert value("state") == "ESTABLISHED"
    assert value("local") == f"{OUR_IP}:{port}" and value("remote") == f"{FAR_IP}:5001"
    assert int(value("snd_una")) == od["snd_una"] == od["snd_nxt"] == od["iss"] + 1 + len(data)
    assert int(value("rcv_nxt")) == od["rcv_nxt"] == od["irs"] + 1 + 5
    assert value("recv_queue_bytes") == "5" and value("unacked_bytes") == "0"
    assert int(value("snd_wnd")) == fc["snd_wnd"] and value("mss") == "1460"
    assert int(value("cwnd")) == cc["cwnd"] and value("algorithm") == "cubic"
    assert value("rto_s") == "200ms" and value("nodelay") == "no"
    assert value("recv_fin_seq") == "-"

    j = json.loads(ctl_run("show", str(cid), "--json").out)
    assert list(j) == [*COMPONENTS, "owner"]
    for component in COMPONENTS:
        assert list(j[component]) == list(conn[component])
    assert j["owner"] == {"client": lib.client_id, "pid": os.getpid(), "uid": os.getuid()}
    assert j["ordered_delivery"]["snd_una"] == od["snd_una"]


def test_show_handshake_connection(daemon: Daemon, lib: xdpstack.Lib, ctl_run) -> None:
    qd = lib.socket()
    lib.connect(qd, ("10.0.0.77", 80))
    (conn,) = control(daemon, Op.CONNECTIONS)
    cid = conn["connection_management"]["id"]
    r = ctl_run("show", str(cid))
    assert r.rc == 0
    lines = r.out.splitlines()
    assert lines[0].startswith(f"connection {cid}  SYN_SENT  {OUR_IP}:")
    assert "-> 10.0.0.77:80" in lines[0]
    assert "handshake" in lines[1]
    headings = [line for line in lines[1:] if line and not line.startswith((" ", "("))]
    assert headings == ["connection management"]
    names = [line.split()[0] for line in lines if line.startswith("  ")]
    assert names == list(conn["connection_management"])
    j = json.loads(ctl_run("show", str(cid), "--json").out)
    assert list(j) == ["connection_management", "owner"]
    assert j["connection_management"]["state"] == "SYN_SENT"


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("4242", "xdpstackctl: no connection 4242 (see `xdpstackctl connections`)\n"),
        ("abc", "xdpstackctl: a connection ID is a number"),
        ("-3", "xdpstackctl: a connection ID is not negative"),
    ],
)
def test_show_unknown_id(ctl_run, arg: str, message: str) -> None:
    for argv in (("show", arg), ("show", arg, "--json")):
        r = ctl_run(*argv)
        assert r.rc == 1 and r.out == ""
        assert r.err.startswith(message) and r.err.count("\n") == 1
        assert "Traceback" not in r.err


# ======================================================================== stats
def test_stats_counters_by_layer_and_drops(daemon: Daemon, lib: xdpstack.Lib, ctl_run) -> None:
    qd, far_qd = established(daemon, lib, 5001)
    data = pattern(100_000)
    lib.wait(lib.push(qd, data), WAIT)
    daemon.far.recv_exactly(far_qd, len(data))
    inject(
        daemon,
        [
            tcp_frame(bad_ip_checksum=True),
            tcp_frame(bad_tcp_checksum=True),
            truncated_ipv4_frame(),
        ],
    )
    wait_for(
        lambda: control(daemon, Op.STATS)["stack"].get("ipv4_drop_truncated"),
        "the injected frames to be counted",
    )
    r = ctl_run("stats", "--json")
    assert r.rc == 0
    j = json.loads(r.out)
    assert list(j) == ["summary", "counters", "drops", "datapath", "xdp", "api", "engine"]
    s = j["summary"]
    # 100 kB in 1460-byte segments; the far stack ACKs once per receive batch, so only
    # the handshake and a few ACKs come back
    assert s["segments_in"] >= 2 and s["segments_out"] > 70
    assert s["segments_in"] == j["counters"]["tcp"]["segments_in"]
    assert s["segments_out"] == j["counters"]["tcp"]["segments_out"]
    assert s["checksum_failures"] == 2 and s["malformed"] == 1 and s["drops"] >= 3
    assert s["retransmits"] == 0 and s["connections"] == 1
    assert s["xdp_redirected"] is None and j["xdp"] is None  # no XDP program here
    assert j["drops"]["ipv4"] == {"bad_checksum": 1, "truncated": 1}
    assert j["drops"]["tcp"]["bad_checksum"] == 1
    assert list(j["counters"])[:3] == ["eth", "arp", "ipv4"]
    assert j["counters"]["eth"]["frames_in"] >= s["segments_in"] + 3
    assert j["datapath"]["rx_frames"] == j["counters"]["eth"]["frames_in"]
    assert j["datapath"]["tx_frames"] >= s["segments_out"]
    assert j["api"]["requests"] > 0 and j["engine"]["connections"] == 1

    r = ctl_run("stats")
    assert r.rc == 0 and r.err == ""
    sections = [line for line in r.out.splitlines() if line and not line.startswith(" ")]
    assert sections == [
        "summary", "eth", "arp", "ipv4", "tcp", "drops", "datapath", "xdp program", "engine",
        "api",
    ]  # fmt: skip
    assert re.search(rf"segments in\s+{s['segments_in']}\b", r.out)
    assert re.search(rf"segments out\s+{s['segments_out']}\b", r.out)
    assert re.search(r"checksum failures\s+2\b", r.out)
    assert re.search(r"malformed\s+1\b", r.out)
    assert re.search(r"ipv4 bad_checksum\s+1\b", r.out)
    assert re.search(r"ipv4 truncated\s+1\b", r.out)
    assert re.search(r"tcp bad_checksum\s+1\b", r.out)
    assert re.search(rf"rx_frames\s+{j['datapath']['rx_frames']}\b", r.out)


def test_stats_text_with_xdp_counters() -> None:
    """The XDP program's counters (present only on a real interface) in both views."""
    from xdpstack import ctl_render as R

    stats = {
        "stack": {"tcp_segments_in": 5, "tcp_segments_out": 7, "eth_drop_not_for_us": 2},
        "datapath": {"rx_frames": 9, "tx_frames": 7, "free_frames": 4000},
        "xdp": {"passed": 11, "redirected": 9, "dropped": 0, "malformed": 0},
        "connections": 1,
        "sockets": 2,
        "steered_ports": [80],
        "wakeups": 3,
        "uptime_s": 65.0,
        "api": {"requests": 4},
    }
    view = R.stats_view(stats)
    assert view["summary"]["xdp_redirected"] == 9 and view["summary"]["xdp_passed"] == 11
    assert view["drops"] == {"eth": {"not_for_us": 2}} and view["summary"]["malformed"] == 0
    text = R.render_stats(view)
    assert re.search(r"xdp redirected\s+9\b", text) and re.search(r"redirected\s+9\b", text)
    assert "xdp program\n" in text and re.search(r"passed\s+11\b", text)
    assert re.search(r"uptime\s+1m05s", text)


# ======================================================================== steering
def test_steering(daemon: Daemon, lib: xdpstack.Lib, ctl_run) -> None:
    lqd = lib.socket()
    lib.bind(lqd, (OUR_IP, 7000))
    lib.listen(lqd)
    qd, _ = established(daemon, lib, 5001)
    port = lib.getsockname(qd)[1]
    r = ctl_run("steering", "--json")
    assert r.rc == 0
    j = json.loads(r.out)
    assert j["source"] == "engine"
    assert j["entries"] == [
        {"address": OUR_IP, "port": 7000},
        {"address": OUR_IP, "port": port},
    ]
    r = ctl_run("steering")
    assert r.rc == 0
    headers, rows = table_rows(r.out)
    assert headers == ["Address", "Port"]
    assert rows[:2] == [[OUR_IP, "7000"], [OUR_IP, str(port)]]
    assert r.out.splitlines()[-1] == "2 entries (the engine's ports; no XDP program)"


# ======================================================================== abort
def test_abort(daemon: Daemon, lib: xdpstack.Lib, ctl_run) -> None:
    qd, far_qd = established(daemon, lib, 5001)
    keep_qd, keep_far = established(daemon, lib, 5002)
    conn = conn_by_qd(daemon, lib, qd)
    cid = conn["connection_management"]["id"]
    port = lib.getsockname(qd)[1]
    far_pop = daemon.far.pop(far_qd)
    our_pop = lib.pop(qd)

    r = ctl_run("abort", str(cid))
    assert r.rc == 0 and r.err == ""
    assert r.out == (
        f"connection {cid} aborted ({OUR_IP}:{port} -> {FAR_IP}:5001, was ESTABLISHED); "
        f"its owner (pid {os.getpid()}) sees ECONNABORTED; RST sent\n"
    )
    # the far end saw the RST; the owner's pop fails with ECONNABORTED
    assert daemon.far.completion(far_pop).errno == errno.ECONNRESET
    with pytest.raises(ConnectionAbortedError) as info:
        lib.wait(our_pop, WAIT)
    assert info.value.errno == errno.ECONNABORTED and info.value.qd == qd
    assert cid not in [row["id"] for row in json.loads(ctl_run("ss", "--json").out)]
    # the other connection is untouched
    lib.wait(lib.push(keep_qd, b"still here"), WAIT)
    assert daemon.far.recv_exactly(keep_far, 10) == b"still here"
    assert control(daemon, Op.STATS)["stack"]["tcp_operator_aborts"] == 1

    again = ctl_run("abort", str(cid))
    assert again.rc == 1 and again.out == ""
    assert again.err == f"xdpstackctl: no connection {cid} (see `xdpstackctl connections`)\n"


def test_abort_json(daemon: Daemon, lib: xdpstack.Lib, ctl_run) -> None:
    qd, _ = established(daemon, lib, 5001)
    cid = conn_by_qd(daemon, lib, qd)["connection_management"]["id"]
    j = json.loads(ctl_run("abort", str(cid), "--json").out)
    assert j["aborted"] == cid and j["state"] == "ESTABLISHED" and j["qd"] == qd
    assert j["remote"] == [FAR_IP, 5001]
    assert j["owner"] == {"client": lib.client_id, "pid": os.getpid(), "uid": os.getuid()}
    assert ctl_run("abort", "99999", "--json").rc == 1


# ======================================================================== while data moves
def test_commands_while_data_moves(daemon: Daemon, ctl_run) -> None:
    mover = Mover(daemon, (5001,)).start()
    try:
        wait_for(lambda: mover.sent > 200_000, "data to move")
        first = json.loads(ctl_run("ss", "--json").out)
        (row,) = [r for r in first if r["peer"]["port"] == 5001]
        show1 = json.loads(ctl_run("show", str(row["id"]), "--json").out)
        wait_for(lambda: mover.sent > 600_000, "more data to move")
        show2 = json.loads(ctl_run("show", str(row["id"]), "--json").out)
        assert show2["ordered_delivery"]["snd_una"] != show1["ordered_delivery"]["snd_una"]
        assert row["state"] == "ESTABLISHED" and row["pid"] == os.getpid()
        for argv in (("status",), ("stats",), ("steering",), ("ss",)):
            r = ctl_run(*argv)
            assert r.rc == 0 and r.err == "", argv
    finally:
        mover.stop()


# ======================================================================== unreachable
@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["connections"],
        ["ss", "--json"],
        ["show", "1"],
        ["stats"],
        ["steering"],
        ["capture", "-w", "{tmp}/x.pcap"],
        ["abort", "1"],
    ],
)
def test_unreachable_daemon_one_line_exit_1(tmp_path, capsys, argv: list[str]) -> None:
    path = str(tmp_path / "nobody.sock")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc = ctl.main(["--socket", path, *argv])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err == f"xdpstackctl: cannot reach xdpstackd at {path}: No such file or directory\n"
    assert not (tmp_path / "x.pcap").exists()


def test_unreachable_socket_that_is_not_a_daemon(tmp_path, capsys) -> None:
    import socket

    path = str(tmp_path / "dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)  # bound, never listening: connection refused
    try:
        assert ctl.main(["--socket", path, "status"]) == 1
    finally:
        s.close()
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"xdpstackctl: cannot reach xdpstackd at {path}: Connection refused\n"


def test_socket_from_environment(daemon: Daemon, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDPSTACK_SOCKET", daemon.path)
    assert ctl.main(["status"]) == 0
    assert daemon.path in capsys.readouterr().out
