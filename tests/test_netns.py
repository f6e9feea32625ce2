"""Namespaces, veth pairs and the kernel TCP peers of ``tests/netfixtures.py``.

Everything here runs in namespaces the tests create; the root namespace is only looked at
(to check that nothing was left in it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from netfixtures import (  # noqa: F401  (fixtures)
    kernel_tcp_client,
    kernel_tcp_server,
    pattern_bytes,
    pattern_sha256,
    require_netns,
    veth_pair_factory_fixture,
    veth_pair_fixture,
)

from xdpstackd import netns
from xdpstackd.netns import (
    InNetns,
    cleanup_stale,
    create_netns,
    create_veth_pair,
    delete_netns,
    destroy,
    list_netns,
    run_in_netns,
    tx_checksum_offload,
    unique_prefix,
    veth_names,
)

REPO = Path(__file__).resolve().parents[1]


def ip_json(*args: str) -> list[dict]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def root_links() -> set[str]:
    return {link["ifname"] for link in ip_json("link", "show")}


def links_in(ns: str) -> dict[str, dict]:
    return {link["ifname"]: link for link in ip_json("-n", ns, "link", "show")}


def addrs_in(ns: str, ifname: str) -> list[str]:
    out = []
    for link in ip_json("-n", ns, "addr", "show", "dev", ifname):
        for a in link.get("addr_info", []):
            if a["family"] == "inet":
                out.append(f"{a['local']}/{a['prefixlen']}")
    return out


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def scratch_ns():
    """A bare namespace for tests that need "the caller's namespace" to be a throwaway one."""
    require_netns()
    name = f"{unique_prefix('scratch')}-host"
    create_netns(name)
    try:
        yield name
    finally:
        delete_netns(name)


# --------------------------------------------------------------------------- names
def test_unique_prefix_and_interface_names() -> None:
    a, b = unique_prefix("Veth Pair!"), unique_prefix("veth")
    assert a != b
    assert a.startswith("xdps-vethpair-") and str(os.getpid()) in a
    names = set()
    for prefix in (a, b, unique_prefix("x" * 50)):
        host_if, peer_if = veth_names(prefix)
        assert len(host_if) <= 15 and len(peer_if) <= 15
        assert host_if != peer_if
        names.update((host_if, peer_if))
    assert len(names) == 6


# --------------------------------------------------------------------------- create/destroy
@pytest.mark.integration
def test_create_and_destroy_leaves_nothing_behind() -> None:
    require_netns()
    links_before = root_links()
    prefix = unique_prefix("cd")
    pair = create_veth_pair(prefix=prefix, host_ns="new", mtu=1400)
    try:
        assert pair.netns == f"{prefix}-peer" and pair.host_ns == f"{prefix}-host"
        assert set(pair.created_netns) == {pair.netns, pair.host_ns}
        assert {pair.netns, pair.host_ns} <= set(list_netns())
        assert Path(netns.STATE_DIR, f"{prefix}.json").exists()
        host_links, peer_links = links_in(pair.host_ns), links_in(pair.netns)
        assert pair.host_if in host_links and pair.peer_if in peer_links
        for links, ifname, mac in (
            (host_links, pair.host_if, pair.host_mac),
            (peer_links, pair.peer_if, pair.peer_mac),
        ):
            link = links[ifname]
            assert link["mtu"] == 1400
            assert "UP" in link["flags"]
            assert bytes.fromhex(link["address"].replace(":", "")) == mac
            assert "UP" in links["lo"]["flags"]
        assert addrs_in(pair.host_ns, pair.host_if) == ["10.77.0.1/24"]
        assert addrs_in(pair.netns, pair.peer_if) == ["10.77.0.2/24"]
        assert root_links() == links_before  # nothing in the root namespace
    finally:
        destroy(pair)
    assert pair.netns not in list_netns() and pair.host_ns not in list_netns()
    assert not Path(netns.STATE_DIR, f"{prefix}.json").exists()
    assert root_links() == links_before
    destroy(pair)  # idempotent


@pytest.mark.integration
def test_tx_checksum_offload_off_on_peer_only(veth_pair_factory) -> None:
    pair = veth_pair_factory()
    assert tx_checksum_offload(pair.peer_if, pair.netns) is False
    assert tx_checksum_offload(pair.host_if, pair.host_ns) is True  # veth default, untouched
    kept = veth_pair_factory(peer_tx_checksum_offload=True)
    assert tx_checksum_offload(kept.peer_if, kept.netns) is True
    ethtool = shutil.which("ethtool")
    if ethtool is not None:  # the same as ethtool sees it
        out = subprocess.run(
            ["ip", "netns", "exec", pair.netns, ethtool, "-k", pair.peer_if],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "tx-checksumming: off" in out


@pytest.mark.integration
def test_host_end_in_callers_namespace_and_existing_namespace(scratch_ns) -> None:
    prefix = unique_prefix("cur")
    with InNetns(scratch_ns):  # "the caller's namespace" is the scratch one
        pair = create_veth_pair(prefix=prefix, host_addr=None, peer_addr="10.78.0.2/24")
    try:
        assert pair.host_ns is None and pair.created_netns == [pair.netns]
        assert pair.host_if in links_in(scratch_ns)
        assert addrs_in(scratch_ns, pair.host_if) == []  # host_addr=None: no address
    finally:
        with InNetns(scratch_ns):
            destroy(pair)
    assert pair.host_if not in links_in(scratch_ns)
    assert pair.netns not in list_netns()

    named = create_veth_pair(prefix=unique_prefix("named"), host_ns=scratch_ns)
    try:
        assert named.host_ns == scratch_ns and named.created_netns == [named.netns]
        assert named.host_if in links_in(scratch_ns)
    finally:
        destroy(named)
    assert scratch_ns in list_netns()  # not ours to remove
    assert named.host_if not in links_in(scratch_ns)


@pytest.mark.integration
def test_failed_create_cleans_up() -> None:
    require_netns()
    prefix = unique_prefix("fail")
    with pytest.raises(Exception):
        create_veth_pair(prefix=prefix, host_ns="new", peer_addr="not-an-address/24")
    assert not [n for n in list_netns() if n.startswith(prefix)]
    assert not Path(netns.STATE_DIR, f"{prefix}.json").exists()


@pytest.mark.integration
def test_queues(veth_pair_factory) -> None:
    pair = veth_pair_factory(queues=3)
    out = subprocess.run(
        ["ip", "netns", "exec", pair.host_ns, "ls", f"/sys/class/net/{pair.host_if}/queues"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sorted(q for q in out if q.startswith("rx-")) == ["rx-0", "rx-1", "rx-2"]


# --------------------------------------------------------------------------- InNetns
@pytest.mark.integration
def test_in_netns_switches_the_current_thread_only(veth_pair) -> None:
    def names() -> set[str]:
        return {name for _, name in socket.if_nameindex()}

    outside = names()
    assert veth_pair.host_if not in outside
    seen_by_other_thread: list[set[str]] = []
    with InNetns(veth_pair.host_ns):
        assert names() == {"lo", veth_pair.host_if}
        t = threading.Thread(target=lambda: seen_by_other_thread.append(names()))
        t.start()  # a thread started in here starts in here, too
        t.join()
        with InNetns(veth_pair.netns):  # nests
            assert names() == {"lo", veth_pair.peer_if}
        assert names() == {"lo", veth_pair.host_if}
    assert names() == outside
    assert seen_by_other_thread == [{"lo", veth_pair.host_if}]

    with pytest.raises(RuntimeError), InNetns(veth_pair.netns):
        raise RuntimeError("boom")
    assert names() == outside  # restored after an exception

    with pytest.raises(FileNotFoundError), InNetns("xdps-no-such-namespace"):
        pass
    assert names() == outside


# --------------------------------------------------------------------------- run_in_netns
@pytest.mark.integration
def test_run_in_netns(veth_pair) -> None:
    proc = run_in_netns(
        veth_pair.netns,
        [sys.executable, "-c", "import socket; print(sorted(n for _, n in socket.if_nameindex()))"],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert out.strip() == repr(sorted(["lo", veth_pair.peer_if]))
    # The kernel of the peer namespace answers pings from the stack namespace's kernel.
    ping = shutil.which("ping")
    if ping is not None:
        rc = run_in_netns(veth_pair.host_ns, [ping, "-c", "1", "-W", "2", veth_pair.peer_ip]).wait(
            timeout=10
        )
        assert rc == 0


@pytest.mark.integration
def test_destroy_kills_processes_left_in_the_namespaces(veth_pair_factory) -> None:
    pair = veth_pair_factory()
    proc = run_in_netns(pair.netns, ["sleep", "60"])
    time.sleep(0.2)
    assert proc.pid in netns.netns_pids(pair.netns)
    destroy(pair)
    assert proc.wait(timeout=5) == -9
    assert pair.netns not in list_netns()


# --------------------------------------------------------------------------- cleanup_stale
@pytest.mark.integration
def test_cleanup_stale_removes_only_dead_creators_leftovers() -> None:
    require_netns()
    # A child process creates a pair (host end in a namespace of its own) and dies without
    # cleaning up. Its prefix is not "xdps-", so that the cleanup other test processes run
    # (pytest-xdist) cannot get there first.
    script = textwrap.dedent(
        """
        import os, sys
        from xdpstackd.netns import create_veth_pair, unique_prefix
        prefix = unique_prefix("stale").replace("xdps-", "xdpq-", 1)
        pair = create_veth_pair(prefix=prefix, host_ns="new")
        print(pair.prefix, flush=True)
        os._exit(0)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "daemon"))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    stale_prefix = out.stdout.strip()
    assert f"{stale_prefix}-peer" in list_netns()
    # Leftovers of a live process (this one) are not touched.
    live = create_veth_pair(
        prefix=unique_prefix("live").replace("xdps-", "xdpq-", 1), host_ns="new"
    )
    try:
        assert cleanup_stale("xdpq-") == [stale_prefix]
        names = list_netns()
        assert f"{stale_prefix}-peer" not in names and f"{stale_prefix}-host" not in names
        assert not Path(netns.STATE_DIR, f"{stale_prefix}.json").exists()
        assert live.netns in names
        assert cleanup_stale("xdpq-") == []
    finally:
        destroy(live)


@pytest.mark.integration
def test_cleanup_stale_removes_namespaces_named_for_dead_pids() -> None:
    require_netns()
    orphan = f"xdps-orph-{dead_pid()}-0-peer"  # no state file; the PID is in the name
    mine = f"{unique_prefix('mine')}-peer"  # a live PID: left alone
    create_netns(orphan)
    create_netns(mine)
    try:
        cleanup_stale("xdps-")
        # (Another test process's cleanup may have been the one to remove it.)
        assert orphan not in list_netns()
        assert mine in list_netns()
    finally:
        delete_netns(orphan)
        delete_netns(mine)


# --------------------------------------------------------------------------- kernel peers
@pytest.mark.integration
def test_kernel_echo_server_and_client_between_namespaces(veth_pair) -> None:
    n = 300_000
    with kernel_tcp_server(veth_pair.netns, 0, "echo") as server:
        assert server.port > 0
        with kernel_tcp_client(
            veth_pair.host_ns, veth_pair.peer_ip, server.port, "echo", nbytes=n, seed=7
        ) as client:
            result = client.result(timeout=30)
        assert result["error"] is None
        assert result["tx_bytes"] == n and result["tx_sha256"] == pattern_sha256(n, 7)
        assert result["rx_bytes"] == n and result["rx_sha256"] == pattern_sha256(n, 7)
        (srv,) = server.results(1, timeout=10)
        assert srv["rx_sha256"] == pattern_sha256(n, 7) and srv["eof"]
        assert srv["peer"] == result["local"]


@pytest.mark.integration
def test_kernel_source_and_sink(veth_pair) -> None:
    n = 1_000_000
    # server sinks, client sources
    with kernel_tcp_server(veth_pair.netns, 0, "sink", connections=2) as server:
        client = kernel_tcp_client(
            veth_pair.host_ns, veth_pair.peer_ip, server.port, "source", nbytes=n, count=2
        )
        results = client.results(2, timeout=30)
        assert all(r["error"] is None and r["tx_sha256"] == pattern_sha256(n) for r in results)
        assert all(r["eof"] and r["rx_bytes"] == 0 for r in results)
        srv = server.results(2, timeout=10)
        assert [r["rx_sha256"] for r in srv] == [pattern_sha256(n)] * 2
        assert server.wait(timeout=10) == 0 and server.done
        client.stop()
    # server sources, client sinks
    with kernel_tcp_server(veth_pair.netns, 0, "source", nbytes=n, seed=3) as server:
        with kernel_tcp_client(veth_pair.host_ns, veth_pair.peer_ip, server.port, "sink") as c:
            r = c.result(timeout=30)
        assert r["rx_bytes"] == n and r["rx_sha256"] == pattern_sha256(n, 3) and r["eof"]
    assert pattern_bytes(100_000, 3)[:1000] == pattern_bytes(1000, 3)


@pytest.mark.integration
def test_kernel_client_reports_connection_refused(veth_pair) -> None:
    with kernel_tcp_client(veth_pair.host_ns, veth_pair.peer_ip, 9, "sink") as client:
        assert client.result(timeout=10)["error"] == "ECONNREFUSED"


@pytest.mark.integration
def test_kernel_server_start_failure_is_reported(veth_pair) -> None:
    with pytest.raises(RuntimeError, match="exited"):
        kernel_tcp_server(veth_pair.netns, 0, "echo", host="192.0.2.99")  # not our address
