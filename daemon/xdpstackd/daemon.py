"""``xdpstackd``: bring the datapath up around the stack, serve clients, tear down clean.

Start-up order matters and is undone in reverse by one ``ExitStack``: sandbox namespace
(if asked) -> interface facts -> stale XDP program from a crashed run removed -> XDP
program attached -> AF_XDP sockets bound and placed in the XSKMAP -> ephemeral ports
reserved in the kernel (shared mode) -> engine and API server on uvloop -> READY.
SIGTERM/SIGINT reset every connection, close the clients, and unwind it all, so the
interface is left as the kernel had it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from xdpstackd.claim import InterfaceBusyError, InterfaceClaim
from xdpstackd.settings import Settings

log = logging.getLogger("xdpstackd")

# A veth's native XDP needs the frame in one page: 4096 - 256 headroom - 320 shared info
# - 14 Ethernet header (seen on Linux 6.18; above it attaching fails with ERANGE).
NATIVE_XDP_VETH_MAX_MTU = 3506


class DaemonError(RuntimeError):
    """A start-up failure with a message an operator can act on."""


def sd_notify(message: str) -> None:
    """systemd's notify protocol, without libsystemd (Type=notify units)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        sock.sendall(message.encode())


def _pick_address(settings: Settings, info: Any) -> tuple[str, int, bool]:
    """(ip, prefix_len, owned) from --address or the interface's kernel address."""
    if settings.address is not None:
        iface = ipaddress.IPv4Interface(settings.address)
        return str(iface.ip), iface.network.prefixlen, True
    if not info.addresses:
        raise DaemonError(
            f"interface {info.name} has no IPv4 address to share; add one "
            f"(ip addr add A/N dev {info.name}) or give the daemon its own with --address A/N"
        )
    ip, prefix_len = info.addresses[0]
    return str(ipaddress.IPv4Address(ip)), prefix_len, False


def _free_sandbox_subnet() -> str:
    """A 10.77.N.0/24 that no interface of this namespace uses, so sandboxes can coexist."""
    import subprocess

    used = subprocess.run(
        ["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False
    ).stdout
    for n in range(256):
        if f" 10.77.{n}." not in used:
            return f"10.77.{n}"
    raise DaemonError("no free 10.77.N.0/24 subnet for the sandbox")


def _attach_advice(ifname: str, mode: str, mtu: int, exc: BaseException) -> str:
    """One line an operator can act on, from whatever attaching raised."""
    message = f"cannot attach the XDP program to {ifname} in {mode} mode: {exc}"
    message = message.splitlines()[0] if "\n" in message else message
    if mode == "native" and mtu > NATIVE_XDP_VETH_MAX_MTU:
        message += (
            f"; native XDP on a veth takes an MTU of at most {NATIVE_XDP_VETH_MAX_MTU} "
            f"(this one is {mtu}): lower it with `ip link set {ifname} mtu "
            f"{NATIVE_XDP_VETH_MAX_MTU}` or use --xdp-mode generic"
        )
    elif mode == "native":
        message += "; if the driver has no native XDP, try --xdp-mode generic"
    return message


def run(settings: Settings) -> int:
    from xdpstackd import netns
    from xdpstackd.datapath import netlink
    from xdpstackd.datapath.xdp_program import XdpProgram
    from xdpstackd.datapath.xsk import XskSocket, check_mtu

    with contextlib.ExitStack() as cleanup:
        sandbox = None
        if settings.sandbox:
            removed = netns.cleanup_stale("xdps-sbx")
            if removed:
                log.warning("removed sandbox leftovers of a crashed run: %s", ", ".join(removed))
            subnet = _free_sandbox_subnet()
            sandbox = netns.create_veth_pair(
                prefix=netns.unique_prefix("sbx"),
                host_addr=f"{subnet}.1/24",
                peer_addr=f"{subnet}.2/24",
            )
            cleanup.callback(netns.destroy, sandbox)
            settings.interface = sandbox.host_if
            log.info(
                "sandbox: veth %s (%s) <-> %s in namespace %s (%s)",
                sandbox.host_if,
                sandbox.host_addr,
                sandbox.peer_if,
                sandbox.netns,
                sandbox.peer_addr,
            )
        assert settings.interface is not None
        ifname = settings.interface
        try:
            info = netlink.interface_info(ifname)
        except Exception as exc:
            raise DaemonError(f"interface {ifname}: {exc}") from None
        try:
            check_mtu(info.mtu, ifname=ifname)
        except ValueError as exc:
            raise DaemonError(str(exc)) from None
        ip, prefix_len, owned = _pick_address(settings, info)

        claim = InterfaceClaim(ifname)
        try:
            leftovers = claim.acquire()
        except InterfaceBusyError as exc:
            raise DaemonError(str(exc)) from None
        cleanup.callback(claim.release)
        # we hold the claim, so whatever an earlier run left is stale: undo it
        stale_ports = netlink.parse_port_list(leftovers.get("reserved_ports", ""))
        if stale_ports:
            netlink.release_reserved_ports(stale_ports)
            log.warning("released %d ports a crashed run left reserved", len(stale_ports))
        if XdpProgram.detach_stale(ifname):
            log.warning("removed an XDP program left on %s by an earlier run", ifname)
        xdp = XdpProgram(
            ifname,
            mode=settings.xdp_mode,
            owned_address=int(ipaddress.IPv4Address(ip)) if owned else None,
        )
        try:
            xdp.attach()
        except Exception as exc:
            raise DaemonError(_attach_advice(ifname, settings.xdp_mode, info.mtu, exc)) from None
        cleanup.callback(xdp.detach)

        sockets = []
        for queue_id in range(settings.queues):
            try:
                xsk = XskSocket(ifname, queue_id, mode="auto")  # bound before it enters the map
            except OSError as exc:
                raise DaemonError(f"AF_XDP socket on {ifname} queue {queue_id}: {exc}") from None
            cleanup.callback(xsk.close)
            xdp.set_xsk(queue_id, xsk.fileno())
            cleanup.callback(xdp.clear_xsk, queue_id)  # out of the map before it closes
            sockets.append(xsk)
        if len(sockets) == 1:
            datapath: Any = sockets[0]
        else:
            from xdpstackd.datapath.multiqueue import MultiQueueDatapath

            datapath = MultiQueueDatapath(sockets)

        from xdpstackd.inetstack.stack import InetStack

        stack_config = dataclasses.replace(settings.stack, mtu=info.mtu)
        neighbour_lookup: Callable[[int], bytes | None] | None = None
        gateway = None
        if not owned:
            resolver = netlink.NeighbourResolver(ifname)
            cleanup.callback(resolver.close)
            neighbour_lookup = resolver.lookup
            low, high = stack_config.tcp.ephemeral_ports
            before = netlink.reserved_ports()
            cleanup.callback(netlink.reserve_ports(low, high))
            added = netlink.reserved_ports() - before
            claim.record({"reserved_ports": netlink.format_port_list(added)})
        with contextlib.suppress(Exception):
            gw, out_if = netlink.route_lookup(int(ipaddress.IPv4Address("192.0.2.1")))
            if gw is not None and out_if == ifname:
                gateway = str(ipaddress.IPv4Address(gw))
        stack = InetStack(
            stack_config,
            mac=info.mac,
            ip=ip,
            prefix_len=prefix_len,
            gateway=gateway,
            owned_address=owned,
            neighbour_lookup=neighbour_lookup,
        )
        # SYN cookies in XDP for SYNs over the rate to a flooded listener (the engine keeps
        # the program's flooded ports equal to the core's), with the key the core checks
        cookies = stack.tcp.isn.cookies
        syn_rate = settings.xdp_syn_rate if stack_config.tcp.syncookies else 0
        xdp.set_syncookies(
            cookies.key_words,
            rate=syn_rate,
            mss=stack.tcp.config.mss,
            window=min(stack_config.tcp.recv_buffer_bytes, 0xFFFF),
            cookie_rate=settings.xdp_syncookie_rate,
            skip_ports=stack_config.tcp.ephemeral_ports,
        )
        cookies.external = syn_rate > 0
        return _serve(settings, stack, datapath, xdp, sandbox, info)
    return 0


def _serve(settings: Settings, stack: Any, datapath: Any, xdp: Any, sandbox: Any, info: Any) -> int:
    import uvloop

    from xdpstackd.api.server import ApiServer
    from xdpstackd.engine import Engine

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    impair = settings.impair
    if impair.active:  # fault injection ([impair], --impair): off unless asked for
        from xdpstackd.datapath.impair import ImpairedDatapath

        datapath = ImpairedDatapath(
            datapath,
            rx=impair.rx,
            tx=impair.tx,
            seed=impair.seed,
            loop=loop,
            max_held_frames=impair.max_held_frames,
        )
        log.warning("impairment stage ON in the datapath: %s", datapath.describe())
    stopping = asyncio.Event()
    engine = Engine(stack, datapath, loop=loop, xdp=xdp)
    server = ApiServer(
        engine,
        settings.socket,
        group=settings.socket_group,
        mode=settings.socket_mode,
        max_descriptors=settings.client_max_sockets,
        max_push_bytes=settings.client_max_push_bytes,
    )

    def request_stop(signame: str) -> None:
        log.info("%s: shutting down", signame)
        stopping.set()

    async def main() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, request_stop, sig.name)
        await _maybe_await(server.start())
        engine.start()
        log.info(
            "ready: %s %s/%d (%s address), %d queue(s), API socket %s",
            info.name,
            stack.ip_str,
            stack.prefix_len,
            "owned" if stack.owned_address else "shared",
            settings.queues,
            settings.socket,
        )
        if sandbox is not None:
            print(
                f"xdpstackd sandbox ready: the stack is {stack.ip_str} on {sandbox.host_if}; "
                f"the peer side is namespace {sandbox.netns} at {sandbox.peer_addr.split('/')[0]}"
                f"\n  reach it with: ip netns exec {sandbox.netns} <command>"
                f"\n  clients: XDPSTACK_SOCKET={settings.socket}",
                flush=True,
            )
        sd_notify("READY=1\nSTATUS=serving")
        watchdog = _start_watchdog(loop)
        await stopping.wait()
        sd_notify("STOPPING=1")
        if watchdog is not None:
            watchdog.cancel()
        for qd in list(stack.tcp.sockets):
            with contextlib.suppress(OSError):
                engine.abort(qd)  # peers learn at once (RST) rather than time out
        await _maybe_await(server.stop())
        engine.stop()

    try:
        loop.run_until_complete(main())
    finally:
        datapath_close = getattr(datapath, "close", None)
        if datapath_close is not None:
            datapath_close()
        loop.close()
    return 0


async def _maybe_await(result: Any) -> Any:
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        return await result
    return result


class _Watchdog:
    """WATCHDOG=1 at half of WatchdogSec, sent from the event loop itself: a stuck loop
    stops the keep-alives and systemd restarts the daemon."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float) -> None:
        self.loop = loop
        self.interval_s = interval_s
        self.handle = loop.call_later(interval_s, self.tick)

    def tick(self) -> None:
        sd_notify("WATCHDOG=1")
        self.handle = self.loop.call_later(self.interval_s, self.tick)

    def cancel(self) -> None:
        self.handle.cancel()


def _start_watchdog(loop: asyncio.AbstractEventLoop) -> _Watchdog | None:
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    return _Watchdog(loop, int(usec) / 2e6)
