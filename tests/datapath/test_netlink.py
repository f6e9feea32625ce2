"""``xdpstackd.datapath.netlink`` against the kernel, inside namespaces the tests create.

Every query runs in the stack end's namespace of a fresh veth pair (``InNetns``): the
root namespace's interfaces, routes, neighbours and sysctls are never read or written.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import socket
import subprocess
import threading
import time

import pytest
from netfixtures import veth_pair_factory_fixture, veth_pair_fixture  # noqa: F401

from xdpstackd.datapath import netlink
from xdpstackd.datapath.netlink import (
    InterfaceNotFoundError,
    NeighbourResolver,
    format_port_list,
    interface_info,
    neighbour_lookup,
    neighbour_state,
    parse_port_list,
    reserve_ports,
    route_lookup,
)
from xdpstackd.netns import InNetns, run_in_netns

PEER_MAC_FAKE = bytes.fromhex("02aabbccddee")


def ip(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def ip_cmd(ns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns, *args], capture_output=True, text=True, check=True
    ).stdout


def neigh_entries(ns: str) -> dict[str, dict]:
    return {e["dst"]: e for e in json.loads(ip_cmd(ns, "-j", "-4", "neigh", "show") or "[]")}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- interface_info
@pytest.mark.integration
def test_interface_info(veth_pair_factory) -> None:
    pair = veth_pair_factory(mtu=1400, queues=2, host_addr="10.77.0.1/24")
    ip_cmd(pair.host_ns, "addr", "add", "192.168.55.5/28", "dev", pair.host_if)
    with InNetns(pair.host_ns):
        info = interface_info(pair.host_if)
        lo = interface_info("lo")
    index = json.loads(ip_cmd(pair.host_ns, "-j", "link", "show", "dev", pair.host_if))[0]
    assert info.name == pair.host_if
    assert info.index == index["ifindex"]
    assert info.mac == pair.host_mac and len(info.mac) == 6
    assert info.mtu == 1400
    assert sorted(info.addresses) == sorted([(ip("10.77.0.1"), 24), (ip("192.168.55.5"), 28)])
    assert info.up is True
    assert info.num_rx_queues == 2
    assert lo.up and lo.addresses == [(ip("127.0.0.1"), 8)] and lo.num_rx_queues >= 1

    ip_cmd(pair.host_ns, "link", "set", pair.host_if, "down")
    with InNetns(pair.host_ns):
        assert interface_info(pair.host_if).up is False


@pytest.mark.integration
def test_interface_info_missing_interface_names_it(veth_pair) -> None:
    with InNetns(veth_pair.host_ns), pytest.raises(InterfaceNotFoundError) as excinfo:
        interface_info("xdps-nope0")
    assert excinfo.value.errno == errno.ENODEV
    assert "xdps-nope0" in str(excinfo.value)


@pytest.mark.integration
def test_interface_info_is_per_namespace(veth_pair) -> None:
    # The peer end exists only in the peer namespace.
    with InNetns(veth_pair.netns):
        assert interface_info(veth_pair.peer_if).mac == veth_pair.peer_mac
    with InNetns(veth_pair.host_ns), pytest.raises(InterfaceNotFoundError):
        interface_info(veth_pair.peer_if)


# --------------------------------------------------------------------------- route_lookup
@pytest.mark.integration
def test_route_lookup_on_link_and_via_gateway(veth_pair) -> None:
    with InNetns(veth_pair.host_ns):
        assert route_lookup(ip(veth_pair.peer_ip)) == (None, veth_pair.host_if)
        assert route_lookup(ip("10.77.0.200")) == (None, veth_pair.host_if)
        with pytest.raises(OSError) as excinfo:
            route_lookup(ip("198.51.100.7"))  # no default route yet
        assert excinfo.value.errno == errno.ENETUNREACH
        assert "198.51.100.7" in str(excinfo.value)
    ip_cmd(veth_pair.host_ns, "route", "add", "default", "via", veth_pair.peer_ip)
    ip_cmd(veth_pair.host_ns, "route", "add", "203.0.113.0/24", "via", "10.77.0.3")
    with InNetns(veth_pair.host_ns):
        assert route_lookup(ip("198.51.100.7")) == (ip(veth_pair.peer_ip), veth_pair.host_if)
        assert route_lookup(ip("203.0.113.9")) == (ip("10.77.0.3"), veth_pair.host_if)
        assert route_lookup(ip(veth_pair.peer_ip)) == (None, veth_pair.host_if)
        assert route_lookup(ip("127.0.0.1")) == (None, "lo")


# --------------------------------------------------------------------------- neighbour_lookup
@pytest.mark.integration
def test_neighbour_lookup_states(veth_pair) -> None:
    ns, dev = veth_pair.host_ns, veth_pair.host_if
    peer = ip(veth_pair.peer_ip)
    with InNetns(ns):
        assert neighbour_lookup(peer, dev) is None  # no entry
        assert neighbour_state(peer, dev) == (0, None)
    usable = {"permanent": True, "stale": True, "reachable": True, "delay": True, "probe": True}
    for nud, expected in usable.items():
        ip_cmd(ns, "neigh", "replace", veth_pair.peer_ip, "dev", dev, "lladdr",
               "02:aa:bb:cc:dd:ee", "nud", nud)  # fmt: skip
        with InNetns(ns):
            got = neighbour_lookup(peer, dev)
        assert (got == PEER_MAC_FAKE) is expected, nud
    for nud in ("incomplete", "noarp", "failed"):  # even with a link-layer address given
        ip_cmd(ns, "neigh", "del", veth_pair.peer_ip, "dev", dev)
        ip_cmd(ns, "neigh", "replace", veth_pair.peer_ip, "dev", dev, "lladdr",
               "02:aa:bb:cc:dd:ee", "nud", nud)  # fmt: skip
        with InNetns(ns):
            assert neighbour_state(peer, dev)[0] != 0, nud
            assert neighbour_lookup(peer, dev) is None, nud
    with InNetns(ns), pytest.raises(InterfaceNotFoundError):
        neighbour_lookup(peer, "xdps-nope0")


# --------------------------------------------------------------------------- NeighbourResolver
@pytest.mark.integration
def test_resolver_miss_becomes_hit_after_the_kernel_resolves(veth_pair) -> None:
    """A miss makes the *kernel* send ARP; once the peer answered, lookups hit."""
    ns, dev = veth_pair.host_ns, veth_pair.host_if
    peer = ip(veth_pair.peer_ip)
    assert veth_pair.host_ip not in neigh_entries(veth_pair.netns)  # the peer heard nothing
    with InNetns(ns):
        resolver = NeighbourResolver(dev)
    try:
        assert resolver.lookup(peer) is None  # miss: resolution started
        assert resolver.stats["solicits"] == 1
        deadline = time.monotonic() + 3.0
        mac = None
        while mac is None and time.monotonic() < deadline:
            time.sleep(0.005)
            mac = resolver.lookup(peer)
        assert mac == veth_pair.peer_mac
        state = neighbour_state_in(ns, peer, dev)
        assert state[0] & netlink.NUD_USABLE and state[1] == veth_pair.peer_mac
        # The kernel's ARP request reached the peer: it learned the requester from it.
        assert veth_pair.host_ip in neigh_entries(veth_pair.netns)
        # Cached: many lookups, no further kernel reads.
        reads = resolver.stats["kernel_reads"]
        for _ in range(1000):
            assert resolver.lookup(peer) == veth_pair.peer_mac
        assert resolver.stats["kernel_reads"] == reads
    finally:
        resolver.close()
    assert resolver.lookup(peer) is None  # closed: no answers, no errors


def neighbour_state_in(ns: str, peer: int, dev: str) -> tuple[int, bytes | None]:
    with InNetns(ns):
        return neighbour_state(peer, dev)


@pytest.mark.integration
def test_resolver_unanswered_neighbour_and_solicit_rate(veth_pair) -> None:
    ns, dev = veth_pair.host_ns, veth_pair.host_if
    absent = ip("10.77.0.99")
    clock = FakeClock()
    with InNetns(ns):
        resolver = NeighbourResolver(dev, clock=clock, miss_retry_s=0.02, solicit_interval_s=1.0)
    try:
        assert resolver.lookup(absent) is None
        assert resolver.stats == {"hits": 0, "kernel_reads": 1, "solicits": 1, "errors": 0}
        assert resolver.lookup(absent) is None  # within miss_retry_s: from the cache
        assert resolver.stats["kernel_reads"] == 1
        for _ in range(10):  # re-read every miss_retry_s; the kernel is busy resolving
            clock.now += 0.05
            assert resolver.lookup(absent) is None
        assert resolver.stats["kernel_reads"] == 11
        assert resolver.stats["solicits"] == 1
        state, _ = neighbour_state_in(ns, absent, dev)
        assert state == netlink.NUD_INCOMPLETE
    finally:
        resolver.close()


@pytest.mark.integration
def test_resolver_refresh_follows_kernel_changes(veth_pair) -> None:
    ns, dev = veth_pair.host_ns, veth_pair.host_if
    peer = ip(veth_pair.peer_ip)
    ip_cmd(ns, "neigh", "replace", veth_pair.peer_ip, "dev", dev, "lladdr", "02:aa:bb:cc:dd:ee",
           "nud", "permanent")  # fmt: skip
    clock = FakeClock()
    with InNetns(ns):
        resolver = NeighbourResolver(dev, clock=clock, refresh_s=0.5)
    try:
        assert resolver.lookup(peer) == PEER_MAC_FAKE
        ip_cmd(ns, "neigh", "replace", veth_pair.peer_ip, "dev", dev, "lladdr",
               "02:11:22:33:44:55", "nud", "permanent")  # fmt: skip
        clock.now += 0.4
        assert resolver.lookup(peer) == PEER_MAC_FAKE  # still cached
        clock.now += 0.2
        assert resolver.lookup(peer) == bytes.fromhex("021122334455")  # re-read
        ip_cmd(ns, "neigh", "del", veth_pair.peer_ip, "dev", dev)
        resolver.invalidate(peer)
        # Gone from the kernel: a miss, and the kernel is asked to resolve it again.
        assert resolver.lookup(peer) is None
        assert resolver.stats["solicits"] == 1
    finally:
        resolver.close()


@pytest.mark.integration
def test_resolver_stale_entry_is_used_and_reconfirmed(veth_pair) -> None:
    ns, dev = veth_pair.host_ns, veth_pair.host_if
    peer = ip(veth_pair.peer_ip)
    mac = ":".join(f"{b:02x}" for b in veth_pair.peer_mac)
    ip_cmd(ns, "neigh", "replace", veth_pair.peer_ip, "dev", dev, "lladdr", mac, "nud", "stale")
    with InNetns(ns):
        resolver = NeighbourResolver(dev)
    try:
        assert resolver.lookup(peer) == veth_pair.peer_mac  # STALE is usable at once
        assert resolver.stats["solicits"] == 1  # ...and the kernel was asked to re-check it
        state, _ = neighbour_state_in(ns, peer, dev)
        assert state in (netlink.NUD_DELAY, netlink.NUD_PROBE, netlink.NUD_REACHABLE)
    finally:
        resolver.close()


@pytest.mark.integration
def test_resolver_works_inside_a_running_event_loop_and_from_other_namespaces(
    veth_pair,
) -> None:
    """pyroute2's sync IPRoute cannot run inside an asyncio loop; our socket can. And the
    resolver stays bound to the namespace it was made in."""
    ns, dev = veth_pair.host_ns, veth_pair.host_if
    ip_cmd(ns, "neigh", "replace", "10.77.0.50", "dev", dev, "lladdr", "02:aa:bb:cc:dd:ee",
           "nud", "permanent")  # fmt: skip
    with InNetns(ns):
        resolver = NeighbourResolver(dev)

    async def main() -> bytes | None:
        return resolver.lookup(ip("10.77.0.50"))

    results: list[bytes | None] = []
    t = threading.Thread(target=lambda: results.append(asyncio.run(main())))
    t.start()
    t.join()
    try:
        assert results == [PEER_MAC_FAKE]
        with InNetns(veth_pair.netns):  # used from elsewhere: still asks the host namespace
            resolver.invalidate()
            assert resolver.lookup(ip("10.77.0.50")) == PEER_MAC_FAKE

            async def info() -> netlink.InterfaceInfo:
                return interface_info(veth_pair.peer_if)

            assert asyncio.run(info()).name == veth_pair.peer_if
    finally:
        resolver.close()


# --------------------------------------------------------------------------- reserve_ports
def test_port_list_format() -> None:
    assert parse_port_list("") == set()
    assert parse_port_list("8080,9000-9002\n") == {8080, 9000, 9001, 9002}
    assert format_port_list({1, 2, 3, 5, 7, 8}) == "1-3,5,7-8"
    assert format_port_list(set()) == ""
    ports = {22, 80, 443, *range(40000, 40100), 65535}
    assert parse_port_list(format_port_list(ports)) == ports


def read_reserved(ns: str) -> str:
    with InNetns(ns), open(netlink.RESERVED_PORTS_PATH) as f:
        return f.read().strip()


def write_reserved(ns: str, text: str) -> None:
    with InNetns(ns), open(netlink.RESERVED_PORTS_PATH, "w") as f:
        f.write(text + "\n")


@pytest.mark.integration
def test_reserve_ports_merges_and_undoes_exactly(veth_pair) -> None:
    ns = veth_pair.host_ns
    assert read_reserved(ns) == ""
    write_reserved(ns, "5000,6000-6005")
    with InNetns(ns):
        undo = reserve_ports(6003, 6010)
    assert read_reserved(ns) == "5000,6000-6010"
    assert read_reserved(veth_pair.netns) == ""  # per namespace
    write_reserved(ns, "5000,6000-6010,7000")  # someone else adds one meanwhile
    undo()  # from the test's own namespace: acts on the one it was made in
    assert read_reserved(ns) == "5000,6000-6005,7000"
    undo()  # idempotent
    assert read_reserved(ns) == "5000,6000-6005,7000"
    with InNetns(ns):
        undo_nothing = reserve_ports(6001, 6002)  # all reserved already: adds nothing
    undo_nothing()
    assert read_reserved(ns) == "5000,6000-6005,7000"
    with pytest.raises(ValueError):
        reserve_ports(10, 5)


@pytest.mark.integration
def test_reserved_ports_are_skipped_by_the_kernels_port_choice(veth_pair) -> None:
    ns = veth_pair.host_ns
    with InNetns(ns):
        with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
            f.write("40000 40009\n")
        undo = reserve_ports(40000, 40008)
        try:
            for _ in range(5):
                with socket.socket() as s:
                    s.bind(("10.77.0.1", 0))
                    assert s.getsockname()[1] == 40009
        finally:
            undo()


@pytest.mark.integration
def test_queries_in_a_subprocess_namespace_agree(veth_pair) -> None:
    """interface_info in the peer namespace == what ``ip`` reports there."""
    proc = run_in_netns(
        veth_pair.netns,
        ["ip", "-j", "addr", "show", "dev", veth_pair.peer_if],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=10)
    link = json.loads(out)[0]
    with InNetns(veth_pair.netns):
        info = interface_info(veth_pair.peer_if)
    assert info.mtu == link["mtu"] and info.index == link["ifindex"]
    assert info.addresses == [
        (ip(a["local"]), a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"
    ]
