"""Interface, address, route and neighbour facts from the kernel over rtnetlink (pyroute2).

Everything here talks to the kernel of the *network namespace of the calling thread* at the
time a socket is opened: the module functions open a short-lived rtnetlink socket per call,
a :class:`NeighbourResolver` keeps one for its whole life (so it stays bound to the namespace
it was created in, even when used from another one).

Why not ``pyroute2.IPRoute``: pyroute2 0.9's synchronous ``IPRoute`` drives an asyncio event
loop of its own with ``run_until_complete``, which raises ``RuntimeError: Cannot run the event
loop while another loop is running`` when it is called from code running inside the daemon's
(uv)loop -- and the neighbour lookup is called from there, once per frame. So this module
uses pyroute2 for what it is best at, the rtnetlink message classes (``ifinfmsg``,
``ifaddrmsg``, ``rtmsg``, ``ndmsg``) and their marshal, over a plain blocking
``AF_NETLINK`` socket of our own (:class:`RtnlSocket`): no event loop, no threads, no
subprocesses, about 30-100 microseconds a request.

Neighbour resolution without sending anything by hand (shared-address mode): on a miss,
:class:`NeighbourResolver` sends ``RTM_NEWNEIGH`` with ``NTF_USE`` (and ``NLM_F_CREATE |
NLM_F_REPLACE``, state ``NUD_NONE``, no link-layer address) for the address on the interface.
The kernel's ``neigh_add`` then calls ``neigh_event_send()`` on the entry -- exactly what
the kernel does when it has a packet for that neighbour -- so a new or FAILED entry goes to
INCOMPLETE and the kernel broadcasts its ARP requests (``mcast_solicit`` of them,
``retrans_time_ms`` apart); a STALE entry goes to DELAY and then PROBE (unicast ARP), as if
the kernel itself were using it. This is ``ip neigh replace ADDR dev IF use`` in iproute2
terms. Verified on kernel 6.18; the tests check a miss becomes a hit after the peer answers.
What does *not* work: ``ip neigh add ADDR dev IF nud incomplete`` creates an INCOMPLETE
entry but starts no timer, so nothing is ever sent and it stays INCOMPLETE; ``nud probe``
is refused without a link-layer address ("No link layer address given").
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_MULTI,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    SOL_NETLINK,
    nlmsg,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTM_NEWNEIGH,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.ndmsg import (
    NTF_USE,
    NUD_DELAY,
    NUD_FAILED,
    NUD_INCOMPLETE,
    NUD_NONE,
    NUD_PERMANENT,
    NUD_PROBE,
    NUD_REACHABLE,
    NUD_STALE,
    ndmsg,
)
from pyroute2.netlink.rtnl.rtmsg import rtmsg

__all__ = [
    "NUD_USABLE",
    "InterfaceInfo",
    "InterfaceNotFoundError",
    "NeighbourResolver",
    "RtnlSocket",
    "interface_info",
    "neighbour_lookup",
    "neighbour_solicit",
    "neighbour_state",
    "reserve_ports",
    "route_lookup",
]

NETLINK_EXT_ACK = 11
RTEXT_FILTER_SKIP_STATS = 1 << 3

#: Neighbour states whose link-layer address we use (the kernel's own NUD_VALID minus
#: NOARP: an entry in one of these states has a MAC that was confirmed at some point).
NUD_USABLE = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT

#: Names of the NUD_* states, for messages and ``xdpstackctl``.
NUD_NAMES = {
    NUD_NONE: "NONE",
    NUD_INCOMPLETE: "INCOMPLETE",
    NUD_REACHABLE: "REACHABLE",
    NUD_STALE: "STALE",
    NUD_DELAY: "DELAY",
    NUD_PROBE: "PROBE",
    NUD_FAILED: "FAILED",
    0x40: "NOARP",
    NUD_PERMANENT: "PERMANENT",
}

RESERVED_PORTS_PATH = "/proc/sys/net/ipv4/ip_local_reserved_ports"


class InterfaceNotFoundError(OSError):
    """No interface of that name (or index) in the calling thread's network namespace."""


# --------------------------------------------------------------------------- transport
class RtnlSocket:
    """A blocking rtnetlink socket with pyroute2's codec; usable inside or outside asyncio.

    Bound to the network namespace of the thread that creates it. Not thread-safe (a lock
    serialises requests, so sharing one between threads is correct but not concurrent).
    """

    def __init__(self, timeout_s: float = 5.0) -> None:
        sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        try:
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except OSError:
            pass  # only the error messages get poorer
        sock.bind((0, 0))
        sock.settimeout(timeout_s)  # never hang the daemon on a lost answer
        self._sock = sock
        self._marshal = MarshalRtnl()
        self._seq = 0
        self._lock = threading.Lock()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> RtnlSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, msg: nlmsg, msg_type: int, flags: int = NLM_F_REQUEST) -> list[nlmsg]:
        """Send ``msg`` and collect the answer.

        A dump (``NLM_F_DUMP``) returns every message up to NLMSG_DONE; a request with
        ``NLM_F_ACK`` returns what came before the ACK (usually nothing); any other request
        returns the single answer. A netlink error is raised as ``OSError`` with its errno
        and the kernel's extended-ack text when there is one.
        """
        with self._lock:
            self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
            seq = self._seq
            msg["header"]["type"] = msg_type
            msg["header"]["flags"] = flags | NLM_F_REQUEST
            msg["header"]["sequence_number"] = seq
            msg["header"]["pid"] = 0
            msg.encode()
            self._sock.send(msg.data)
            out: list[nlmsg] = []
            while True:
                data = self._sock.recv(1 << 17)
                for reply in self._marshal.parse(data):
                    header = reply["header"]
                    if header.get("sequence_number") != seq:
                        continue  # a late answer to an abandoned request
                    mtype = header.get("type")
                    if mtype == NLMSG_ERROR:
                        error = header.get("error")
                        if error is not None:
                            raise _as_oserror(error)
                        return out  # an ACK
                    if mtype == NLMSG_DONE:
                        return out
                    out.append(reply)
                    if not (flags & (NLM_F_DUMP | NLM_F_ACK)) and not (
                        header.get("flags", 0) & NLM_F_MULTI
                    ):
                        return out


def _as_oserror(error: BaseException) -> OSError:
    if isinstance(error, NetlinkError):
        code = error.code
        extack = error.args[1] if len(error.args) > 1 and error.args[1] else None
        text = os.strerror(code) + (f" ({extack})" if extack else "")
        return OSError(code, text)
    if isinstance(error, OSError):
        return error
    return OSError(errno.EIO, str(error))


def _ip_to_int(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def _ip_to_str(ip: int) -> str:
    return str(ipaddress.IPv4Address(ip))


def _mac_to_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


# --------------------------------------------------------------------------- interfaces
@dataclass(frozen=True)
class InterfaceInfo:
    """What the daemon needs to know about its interface."""

    name: str
    index: int
    mac: bytes
    mtu: int
    addresses: list[tuple[int, int]]  # IPv4 (address in host byte order, prefix length)
    up: bool  # administratively up (IFF_UP)
    num_rx_queues: int  # rx queues in use (AF_XDP queue ids are 0 .. num_rx_queues-1)


def _get_link(rtnl: RtnlSocket, ifname: str | None = None, index: int = 0) -> nlmsg:
    msg = ifinfmsg()
    msg["index"] = index
    attrs: list[tuple[str, object]] = [("IFLA_EXT_MASK", RTEXT_FILTER_SKIP_STATS)]
    if ifname is not None:
        attrs.append(("IFLA_IFNAME", ifname))
    msg["attrs"] = attrs
    what = repr(ifname) if ifname is not None else f"with index {index}"
    try:
        replies = rtnl.request(msg, RTM_GETLINK)
    except OSError as exc:
        if exc.errno in (errno.ENODEV, errno.ENOENT):
            raise InterfaceNotFoundError(
                errno.ENODEV,
                f"no network interface {what} in this network namespace",
            ) from None
        raise
    if not replies:
        raise InterfaceNotFoundError(errno.ENODEV, f"no network interface {what}")
    return replies[0]


def _ifname_of(rtnl: RtnlSocket, index: int) -> str:
    return str(_get_link(rtnl, index=index).get_attr("IFLA_IFNAME"))


def _ifindex_of(rtnl: RtnlSocket, ifname: str) -> int:
    return int(_get_link(rtnl, ifname=ifname)["index"])


def _ipv4_addresses(rtnl: RtnlSocket, index: int) -> list[tuple[int, int]]:
    msg = ifaddrmsg()
    msg["family"] = socket.AF_INET
    out = []
    for reply in rtnl.request(msg, RTM_GETADDR, NLM_F_DUMP):
        if reply["index"] != index or reply["family"] != socket.AF_INET:
            continue
        local = reply.get_attr("IFA_LOCAL") or reply.get_attr("IFA_ADDRESS")
        if local:
            out.append((_ip_to_int(local), int(reply["prefixlen"])))
    return out


def _rx_queues_in_use(ifname: str, fallback: int) -> int:
    """Rx queues in use (ETHTOOL_GCHANNELS rx + combined), else the netlink count.

    ``IFLA_NUM_RX_QUEUES`` is how many the device *allocated*; AF_XDP binds need a queue
    id below the number in use (``real_num_rx_queues``), which is what channels report.
    """
    try:
        from pyroute2.ethtool.ioctl import IoctlEthtool

        eth = IoctlEthtool(ifname)
        try:
            channels = eth.get_channels()
        finally:
            eth.close()
        n = int(channels["rx_count"]) + int(channels["combined_count"])
        return n if n > 0 else fallback
    except Exception:  # driver without get_channels (lo, some virtual devices), ...
        return fallback


def interface_info(ifname: str) -> InterfaceInfo:
    """Facts about ``ifname``; :class:`InterfaceNotFoundError` naming it when it is missing."""
    with RtnlSocket() as rtnl:
        link = _get_link(rtnl, ifname=ifname)
        index = int(link["index"])
        addresses = _ipv4_addresses(rtnl, index)
    mac_text = link.get_attr("IFLA_ADDRESS")
    allocated = int(link.get_attr("IFLA_NUM_RX_QUEUES") or 1)
    return InterfaceInfo(
        name=str(link.get_attr("IFLA_IFNAME")),
        index=index,
        mac=_mac_to_bytes(mac_text) if mac_text else b"",
        mtu=int(link.get_attr("IFLA_MTU")),
        addresses=addresses,
        up=bool(int(link["flags"]) & IFF_UP),
        num_rx_queues=_rx_queues_in_use(ifname, allocated),
    )


# --------------------------------------------------------------------------- routes
def route_lookup(dst: int, *, src: int | None = None) -> tuple[int | None, str]:
    """The kernel's route to ``dst`` (host byte order): ``(gateway or None if on-link, ifname)``.

    The full FIB lookup (``ip route get``), policy rules included. ``OSError`` with
    ENETUNREACH (or the kernel's errno: EHOSTUNREACH, EACCES for prohibit) when there is
    no usable route.
    """
    msg = rtmsg()
    msg["family"] = socket.AF_INET
    msg["dst_len"] = 32
    attrs: list[tuple[str, object]] = [("RTA_DST", _ip_to_str(dst))]
    if src is not None:
        attrs.append(("RTA_SRC", _ip_to_str(src)))
        msg["src_len"] = 32
    msg["attrs"] = attrs
    with RtnlSocket() as rtnl:
        try:
            replies = rtnl.request(msg, RTM_GETROUTE)
        except OSError as exc:
            raise OSError(exc.errno, f"no route to {_ip_to_str(dst)}: {exc.strerror}") from None
        if not replies:
            raise OSError(errno.ENETUNREACH, f"no route to {_ip_to_str(dst)}")
        reply = replies[0]
        gateway = reply.get_attr("RTA_GATEWAY")
        oif = reply.get_attr("RTA_OIF")
        if oif is None:
            raise OSError(errno.ENETUNREACH, f"no output interface for {_ip_to_str(dst)}")
        ifname = _ifname_of(rtnl, int(oif))
    return (_ip_to_int(gateway) if gateway else None, ifname)


# --------------------------------------------------------------------------- neighbours
def _neigh_get(rtnl: RtnlSocket, ip: int, ifindex: int) -> tuple[int, bytes | None]:
    """(state, mac) of the kernel's entry for ``ip`` on ``ifindex``; (NUD_NONE, None) if none."""
    msg = ndmsg()
    msg["family"] = socket.AF_INET
    msg["ifindex"] = ifindex
    msg["attrs"] = [("NDA_DST", _ip_to_str(ip))]
    try:
        replies = rtnl.request(msg, RTM_GETNEIGH)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
            return NUD_NONE, None
        raise
    if not replies:
        return NUD_NONE, None
    reply = replies[0]
    lladdr = reply.get_attr("NDA_LLADDR")
    return int(reply["state"]), (_mac_to_bytes(lladdr) if lladdr else None)


def _neigh_use(rtnl: RtnlSocket, ip: int, ifindex: int) -> None:
    """Ask the kernel to resolve (or re-confirm) ``ip`` on ``ifindex``: RTM_NEWNEIGH + NTF_USE."""
    msg = ndmsg()
    msg["family"] = socket.AF_INET
    msg["ifindex"] = ifindex
    msg["state"] = NUD_NONE
    msg["flags"] = NTF_USE
    msg["attrs"] = [("NDA_DST", _ip_to_str(ip))]
    rtnl.request(msg, RTM_NEWNEIGH, NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)


def neighbour_state(ip: int, ifname: str) -> tuple[int, bytes | None]:
    """The raw kernel state (a ``NUD_*`` value, NUD_NONE when absent) and lladdr of ``ip``."""
    with RtnlSocket() as rtnl:
        return _neigh_get(rtnl, ip, _ifindex_of(rtnl, ifname))


def neighbour_lookup(ip: int, ifname: str) -> bytes | None:
    """The MAC of ``ip`` on ``ifname`` from the kernel's neighbour table, or None.

    Only entries in a usable state count (REACHABLE, STALE, DELAY, PROBE, PERMANENT);
    INCOMPLETE, FAILED and NOARP entries are misses. Nothing is sent.
    """
    state, mac = neighbour_state(ip, ifname)
    return mac if state & NUD_USABLE and mac else None


def neighbour_solicit(ip: int, ifname: str) -> None:
    """Make the kernel resolve ``ip`` on ``ifname`` (it sends the ARP requests itself)."""
    with RtnlSocket() as rtnl:
        _neigh_use(rtnl, ip, _ifindex_of(rtnl, ifname))


class NeighbourResolver:
    """Neighbour lookups for the stack's shared-address mode, cheap enough to call per frame.

    ``InetStack(neighbour_lookup=resolver.lookup)``. Answers come from a dict; an address
    is re-read from the kernel at most every ``refresh_s`` while it resolves, and at most
    every ``miss_retry_s`` while it does not. On a miss the kernel is asked to resolve the
    address (``NTF_USE``, see the module docstring), at most every ``solicit_interval_s``
    per address, and not while the kernel is already resolving it (INCOMPLETE). A STALE
    entry is also "used" that way, so the kernel re-confirms it with a unicast probe as it
    would for its own traffic: frames sent through AF_XDP bypass the kernel, which would
    otherwise never notice that the neighbour is in use.

    The netlink socket belongs to the namespace of the thread that made the resolver.
    ``clock`` is for tests.
    """

    def __init__(
        self,
        ifname: str,
        *,
        refresh_s: float = 0.5,
        miss_retry_s: float = 0.02,
        solicit_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ifname = ifname
        self.refresh_s = refresh_s
        self.miss_retry_s = miss_retry_s
        self.solicit_interval_s = solicit_interval_s
        self._clock = clock
        self._rtnl: RtnlSocket | None = RtnlSocket()
        try:
            self.ifindex = _ifindex_of(self._rtnl, ifname)
        except BaseException:
            self._rtnl.close()
            raise
        # ip -> (mac or None, time of the next kernel read)
        self._cache: dict[int, tuple[bytes | None, float]] = {}
        self._solicited_at: dict[int, float] = {}
        self.stats = {"hits": 0, "kernel_reads": 0, "solicits": 0, "errors": 0}

    def lookup(self, ip: int) -> bytes | None:
        """The MAC for ``ip`` (host byte order), or None (resolution has been started)."""
        entry = self._cache.get(ip)
        if entry is not None:
            now = self._clock()
            if now < entry[1]:
                self.stats["hits"] += 1
                return entry[0]
        else:
            now = self._clock()
        return self._refresh(ip, now)

    def _refresh(self, ip: int, now: float) -> bytes | None:
        rtnl = self._rtnl
        if rtnl is None:
            return None
        self.stats["kernel_reads"] += 1
        try:
            state, mac = _neigh_get(rtnl, ip, self.ifindex)
            usable = bool(state & NUD_USABLE) and mac is not None
            if (not usable and not state & NUD_INCOMPLETE) or state & NUD_STALE:
                last = self._solicited_at.get(ip)
                if last is None or now - last >= self.solicit_interval_s:
                    self._solicited_at[ip] = now
                    self.stats["solicits"] += 1
                    _neigh_use(rtnl, ip, self.ifindex)
        except OSError:
            self.stats["errors"] += 1
            usable, mac = False, None
        if usable:
            self._cache[ip] = (mac, now + self.refresh_s)
            return mac
        self._cache[ip] = (None, now + self.miss_retry_s)
        return None

    def invalidate(self, ip: int | None = None) -> None:
        """Forget one cached answer (or all): the next lookup reads the kernel again."""
        if ip is None:
            self._cache.clear()
        else:
            self._cache.pop(ip, None)

    def close(self) -> None:
        if self._rtnl is not None:
            self._rtnl.close()
            self._rtnl = None
        self._cache.clear()

    def __enter__(self) -> NeighbourResolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- reserved ports
def parse_port_list(text: str) -> set[int]:
    """``"8080,9000-9002"`` -> {8080, 9000, 9001, 9002} (the sysctl's format)."""
    ports: set[int] = set()
    for part in text.replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            ports.update(range(int(lo), int(hi) + 1))
        else:
            ports.add(int(part))
    return ports


def format_port_list(ports: set[int]) -> str:
    """The inverse of :func:`parse_port_list`, with runs compressed to ranges."""
    out: list[str] = []
    run_start = prev = None
    for port in sorted(ports):
        if prev is not None and port == prev + 1:
            prev = port
            continue
        if run_start is not None:
            out.append(str(run_start) if run_start == prev else f"{run_start}-{prev}")
        run_start = prev = port
    if run_start is not None:
        out.append(str(run_start) if run_start == prev else f"{run_start}-{prev}")
    return ",".join(out)


_reserved_lock = threading.Lock()


def _read_reserved() -> set[int]:
    with open(RESERVED_PORTS_PATH) as f:
        return parse_port_list(f.read())


def _write_reserved(ports: set[int]) -> None:
    text = format_port_list(ports) or ""
    # One write(2): the kernel parses the buffer of a single write as the whole list.
    fd = os.open(RESERVED_PORTS_PATH, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, (text + "\n").encode())
    finally:
        os.close(fd)


def reserve_ports(low: int, high: int) -> Callable[[], None]:
    """Add ``low..high`` to ``ip_local_reserved_ports`` of the calling thread's namespace.

    Merges with what is there. Returns an undo function that removes exactly the ports this
    call added (ports that were already reserved stay reserved; ports someone else reserves
    in the meantime are left alone). The undo acts on the same namespace even when called
    from elsewhere, and is idempotent.

    Reserved ports are only kept out of the kernel's *automatic* choice (``connect`` without
    ``bind``, ``bind`` to port 0); an explicit ``bind`` to one still succeeds.
    """
    if not (1 <= low <= high <= 65535):
        raise ValueError(f"bad port range {low}-{high}")
    with _reserved_lock:
        current = _read_reserved()
        added = set(range(low, high + 1)) - current
        if added:
            _write_reserved(current | added)
    ns_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    done = False

    def undo() -> None:
        nonlocal done
        if done:
            return
        done = True
        try:
            if added:
                from xdpstackd.netns import InNetns

                with InNetns(ns_fd), _reserved_lock:
                    _write_reserved(_read_reserved() - added)
        finally:
            os.close(ns_fd)

    return undo


def reserved_ports() -> set[int]:
    """The ports in ``ip_local_reserved_ports`` of the calling thread's namespace."""
    with _reserved_lock:
        return _read_reserved()


def release_reserved_ports(ports: set[int]) -> None:
    """Remove ``ports`` from ``ip_local_reserved_ports`` (a crashed daemon's leftovers)."""
    with _reserved_lock:
        current = _read_reserved()
        if current & ports:
            _write_reserved(current - ports)
