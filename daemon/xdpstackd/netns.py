"""Network namespaces and veth pairs: for ``xdpstackd --sandbox``, the tests and the bench.

A :func:`create_veth_pair` makes a namespace ``<prefix>-peer`` for the kernel peer (and
``<prefix>-host`` for the stack end when asked with ``host_ns="new"``), a veth pair between
them, addresses, links up, ``lo`` up, IPv6 off on the pair (no router solicitations, MLD or
DAD frames in the way), and tx checksum offload off on the peer end (SPEC section 3: a
Linux sender with it on puts only the pseudo-header sum in the TCP checksum field).
:func:`destroy` undoes exactly that and is idempotent.

Leftovers from a crashed run: before creating anything, :func:`create_veth_pair` writes
``/run/xdpstack/netns/<prefix>.json`` with the creator's PID (and its start time, against PID
reuse) and what it is about to create; :func:`cleanup_stale` removes what such files
describe when their creator is gone, and also namespaces named by :func:`unique_prefix`
(which carries the PID) that have no state file. Nothing else is ever touched.

Namespace switching is per *thread* (``setns(2)`` with ``CLONE_NEWNET`` changes only the
calling thread): :class:`InNetns` switches the current thread and always switches back;
the functions here do their namespace work in a short-lived worker thread, so the caller's
thread never changes namespace, and pyroute2's synchronous ``IPRoute`` (which runs an
asyncio loop of its own) also works when the caller is inside a running event loop.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "NETNS_RUN_DIR",
    "STATE_DIR",
    "InNetns",
    "VethPair",
    "cleanup_stale",
    "create_netns",
    "create_veth_pair",
    "delete_netns",
    "destroy",
    "list_netns",
    "netns_pids",
    "run_in_netns",
    "set_tx_checksum_offload",
    "tx_checksum_offload",
    "unique_prefix",
]

NETNS_RUN_DIR = "/run/netns"
STATE_DIR = "/run/xdpstack/netns"
DEFAULT_PREFIX = "xdps-"
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 16  # including the NUL: names are at most 15 characters

T = TypeVar("T")

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def _setns_unless_current(fd: int, current_fd: int) -> bool:
    """setns(fd) unless it is the thread's namespace already (setns(2) needs CAP_SYS_ADMIN
    even then, which a daemon run with only CAP_NET_ADMIN does not have). True if switched."""
    target, current = os.fstat(fd), os.fstat(current_fd)
    if (target.st_dev, target.st_ino) == (current.st_dev, current.st_ino):
        return False
    _setns(fd)
    return True


def _netns_path(netns: str) -> str:
    return netns if "/" in netns else os.path.join(NETNS_RUN_DIR, netns)


class InNetns:
    """Run the current thread in a network namespace for the ``with`` block.

    ``netns`` is a name under /run/netns, a path (``/proc/PID/ns/net``) or an open fd
    (not closed here); ``None`` means "stay where you are". Sockets opened inside keep
    the namespace after the block. Restores the thread's previous namespace on the way out,
    exceptions included; nests. Only the calling thread moves: other threads, and
    ``/proc/self/...`` (the main thread's view), are not affected; ``/proc/sys/net`` and
    ``/proc/thread-self/...`` follow the thread. ``/sys/class/net`` does not (sysfs shows
    the namespace it was mounted in): use netlink or ioctls for interface facts.
    """

    def __init__(self, netns: str | int | None) -> None:
        self.netns = netns
        self._saved: int | None = None

    def __enter__(self) -> InNetns:
        if self.netns is None:
            return self
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if isinstance(self.netns, int):
                switched = _setns_unless_current(self.netns, saved)
            else:
                fd = os.open(_netns_path(self.netns), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    switched = _setns_unless_current(fd, saved)
                finally:
                    os.close(fd)
        except BaseException:
            os.close(saved)
            raise
        if switched:
            self._saved = saved
        else:
            os.close(saved)
        return self

    def __exit__(self, *exc: object) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        try:
            _setns(saved)
        finally:
            os.close(saved)


def _in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread (starting in the caller's namespace); return or raise."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="xdpstack-netns")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# --------------------------------------------------------------------------- names
_counter = itertools.count()
_PREFIX_PID_RE = re.compile(r"^xdps-.*-(\d+)-\d+-(?:peer|host)$")


def unique_prefix(tag: str = "ns") -> str:
    """A unique, short name prefix: ``xdps-<tag>-<pid>-<counter>``.

    The PID in it lets :func:`cleanup_stale` recognise leftovers of dead processes.
    The tag is cut to 8 characters ``[a-z0-9]``.
    """
    clean = re.sub(r"[^a-z0-9]", "", tag.lower())[:8] or "ns"
    return f"{DEFAULT_PREFIX}{clean}-{os.getpid()}-{next(_counter)}"


def veth_names(prefix: str) -> tuple[str, str]:
    """The (host, peer) interface names for ``prefix``: short, unique, valid (<= 15 chars).

    Interface names cannot hold the whole prefix, so they carry a hash of it:
    ``xs<10 hex>h`` and ``xs<10 hex>p``.
    """
    digest = hashlib.blake2s(prefix.encode(), digest_size=5).hexdigest()
    return f"xs{digest}h", f"xs{digest}p"


# --------------------------------------------------------------------------- namespaces
def list_netns() -> list[str]:
    """Named network namespaces (``ip netns list``)."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip") or "/usr/sbin/ip"
    proc = subprocess.run([ip, *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise OSError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def create_netns(name: str) -> None:
    """``ip netns add NAME`` (iproute2 sets up the /run/netns mount propagation right)."""
    _ip("netns", "add", name)


def netns_pids(name: str) -> list[int]:
    """PIDs whose (main thread's) network namespace is ``name`` (``ip netns pids``)."""
    try:
        st = os.stat(_netns_path(name))
    except FileNotFoundError:
        return []
    key = (st.st_dev, st.st_ino)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            pst = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (pst.st_dev, pst.st_ino) == key:
            pids.append(int(entry))
    return pids


def delete_netns(name: str, *, kill_processes: bool = True) -> None:
    """Remove namespace ``name`` if it exists; first SIGKILL the processes still in it.

    (A process inside keeps a namespace and its interfaces alive after the name is gone.)
    This process itself is never killed.
    """
    if name not in list_netns():
        return
    if kill_processes:
        me = os.getpid()
        for pid in netns_pids(name):
            if pid != me:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
    proc = _ip("netns", "delete", name, check=False)
    if proc.returncode != 0 and name in list_netns():
        raise OSError(f"`ip netns delete {name}` failed: {proc.stderr.strip()}")


def run_in_netns(netns: str | None, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen:
    """Start ``argv`` in namespace ``netns`` (``ip netns exec``); ``None``: right here."""
    if netns is None:
        return subprocess.Popen(argv, **popen_kwargs)
    ip = shutil.which("ip") or "/usr/sbin/ip"
    return subprocess.Popen([ip, "netns", "exec", netns, *argv], **popen_kwargs)


# --------------------------------------------------------------------------- ethtool
def _tx_csum_features(features: Any) -> list[str]:
    return [name for name in list(features.keys()) if name.startswith("tx-checksum-")]


def tx_checksum_offload(ifname: str, netns: str | None = None) -> bool:
    """True when any ``tx-checksum-*`` feature of ``ifname`` is active (``ethtool -k``)."""

    def work() -> bool:
        from pyroute2.ethtool.ioctl import IoctlEthtool

        with InNetns(netns):
            eth = IoctlEthtool(ifname)
        try:
            features = eth.get_features()
            return any(features.is_active(n) for n in _tx_csum_features(features))
        finally:
            eth.close()

    return _in_thread(work)


def set_tx_checksum_offload(ifname: str, enabled: bool, netns: str | None = None) -> None:
    """``ethtool -K IF tx on|off`` through pyroute2's ethtool ioctls (the command if that fails).

    Turning tx checksumming off also makes the kernel drop the features that need it
    (TSO and friends), as ``ethtool`` does.
    """

    def work() -> None:
        from pyroute2.ethtool.ioctl import IoctlEthtool

        with InNetns(netns):
            eth = IoctlEthtool(ifname)
        try:
            features = eth.get_features()
            for name in _tx_csum_features(features):
                if features.is_available(name) or features.is_active(name):
                    features[name] = enabled
            eth.set_features(features)
        finally:
            eth.close()

    try:
        _in_thread(work)
    except Exception as exc:
        ethtool = shutil.which("ethtool")
        if ethtool is None:
            raise OSError(f"cannot set tx checksum offload on {ifname}: {exc}") from exc
        argv = [ethtool, "-K", ifname, "tx", "on" if enabled else "off"]
        proc = run_in_netns(netns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise OSError(f"{' '.join(argv)} failed: {err.decode().strip()}") from exc
    if not enabled and tx_checksum_offload(ifname, netns):
        raise OSError(f"tx checksum offload on {ifname} is still on after turning it off")


# --------------------------------------------------------------------------- state files
def _proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_alive(pid: int, start_time: int | None) -> bool:
    now = _proc_start_time(pid)
    if now is None:
        return False
    return start_time is None or now == start_time


def _state_path(prefix: str) -> str:
    return os.path.join(STATE_DIR, f"{prefix}.json")


def _write_state(prefix: str, state: dict[str, Any]) -> None:
    os.makedirs(STATE_DIR, exist_ok=True)
    path = _state_path(prefix)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def _remove_state(prefix: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_state_path(prefix))


# --------------------------------------------------------------------------- veth pairs
@dataclass
class VethPair:
    """A veth pair: the stack's end ``host_if`` and the kernel peer's end ``peer_if``."""

    host_if: str
    peer_if: str
    netns: str  # the peer's namespace
    host_ns: str | None  # the stack end's namespace; None: the creator's own
    host_addr: str | None  # CIDR on host_if, None when left without an address
    peer_addr: str  # CIDR on peer_if
    host_mac: bytes
    peer_mac: bytes
    prefix: str = ""
    created_netns: list[str] = field(default_factory=list)  # what destroy() removes
    mtu: int = 1500

    @property
    def host_ip(self) -> str | None:
        return self.host_addr.split("/")[0] if self.host_addr else None

    @property
    def peer_ip(self) -> str:
        return self.peer_addr.split("/")[0]


def _mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _disable_ipv6(ifname: str) -> None:
    """Per-interface sysctl, in the current thread's namespace (before the link goes up)."""
    path = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"
    # Missing when IPv6 is compiled out or disabled at boot.
    with contextlib.suppress(FileNotFoundError), open(path, "w") as f:
        f.write("1\n")


def _setup_end(
    netns: str | None, ifname: str, cidr: str | None, *, lo_up: bool, ipv6: bool
) -> bytes:
    """Address ``ifname`` in ``netns``, bring it (and lo) up; return its MAC."""
    from pyroute2 import IPRoute

    with InNetns(netns):
        if not ipv6:
            _disable_ipv6(ifname)
        ipr = IPRoute()
    try:
        index = ipr.link_lookup(ifname=ifname)[0]
        if cidr is not None:
            address, prefixlen = cidr.split("/")
            ipr.addr("add", index=index, address=address, prefixlen=int(prefixlen))
        ipr.link("set", index=index, state="up")
        if lo_up:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return _mac_bytes(ipr.link("get", index=index)[0].get_attr("IFLA_ADDRESS"))
    finally:
        ipr.close()


def create_veth_pair(
    *,
    prefix: str,
    host_addr: str | None = "10.77.0.1/24",
    peer_addr: str = "10.77.0.2/24",
    host_ns: str | None = None,
    mtu: int = 1500,
    peer_tx_checksum_offload: bool = False,
    queues: int | None = None,
    ipv6: bool = False,
) -> VethPair:
    """Create namespace ``<prefix>-peer`` and a veth pair into it; see the module docstring.

    ``host_ns``: ``None`` keeps the stack end in the caller's namespace, ``"new"`` makes
    ``<prefix>-host`` for it, any other name uses that existing namespace (not removed by
    :func:`destroy`). ``host_addr=None`` leaves the stack end without a kernel address
    (the daemon's owned-address mode). ``queues`` sets the rx/tx queue count of both ends.
    On failure, whatever was made is removed again before the error propagates.
    """
    if "/" in prefix or len(prefix) > 200:
        raise ValueError(f"bad prefix {prefix!r}")
    host_if, peer_if = veth_names(prefix)
    peer_ns = f"{prefix}-peer"
    new_host_ns = f"{prefix}-host" if host_ns == "new" else None
    stack_ns = new_host_ns or host_ns
    created = [peer_ns] + ([new_host_ns] if new_host_ns else [])
    pair = VethPair(
        host_if=host_if,
        peer_if=peer_if,
        netns=peer_ns,
        host_ns=stack_ns,
        host_addr=host_addr,
        peer_addr=peer_addr,
        host_mac=b"",
        peer_mac=b"",
        prefix=prefix,
        created_netns=created,
        mtu=mtu,
    )
    _write_state(
        prefix,
        {
            "pid": os.getpid(),
            "start_time": _proc_start_time(os.getpid()),
            "netns": created,
            "host_if": host_if,
            "host_ns": stack_ns,
        },
    )
    try:
        for name in created:
            create_netns(name)

        def make_link() -> None:
            from pyroute2 import IPRoute

            peer_fd = os.open(_netns_path(peer_ns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                with InNetns(stack_ns):
                    ipr = IPRoute()
                try:
                    peer: dict[str, Any] = {"ifname": peer_if, "net_ns_fd": peer_fd, "mtu": mtu}
                    extra: dict[str, Any] = {}
                    if queues is not None:
                        extra = {"num_rx_queues": queues, "num_tx_queues": queues}
                        peer.update(extra)
                    ipr.link("add", ifname=host_if, kind="veth", mtu=mtu, peer=peer, **extra)
                finally:
                    ipr.close()
            finally:
                os.close(peer_fd)

        _in_thread(make_link)
        pair.host_mac = _in_thread(
            lambda: _setup_end(
                stack_ns, host_if, host_addr, lo_up=new_host_ns is not None, ipv6=ipv6
            )
        )
        pair.peer_mac = _in_thread(
            lambda: _setup_end(peer_ns, peer_if, peer_addr, lo_up=True, ipv6=ipv6)
        )
        if not peer_tx_checksum_offload:
            set_tx_checksum_offload(peer_if, False, peer_ns)
    except BaseException:
        with contextlib.suppress(Exception):
            destroy(pair)
        raise
    return pair


def _delete_link(ifname: str, netns: str | None) -> None:
    def work() -> None:
        from pyroute2 import IPRoute

        if netns is not None and "/" not in netns and netns not in list_netns():
            return
        with InNetns(netns):
            ipr = IPRoute()
        try:
            found = ipr.link_lookup(ifname=ifname)
            if found:
                with contextlib.suppress(Exception):  # gone meanwhile (its peer's ns died)
                    ipr.link("del", index=found[0])
        finally:
            ipr.close()

    _in_thread(work)


def destroy(pair: VethPair, *, kill_processes: bool = True) -> None:
    """Remove the veth pair and the namespaces :func:`create_veth_pair` made. Idempotent.

    Processes still running in those namespaces are killed first (they would keep the
    namespace, and the veth in it, alive), unless ``kill_processes`` is False.
    """
    errors: list[BaseException] = []
    try:
        _delete_link(pair.host_if, pair.host_ns)
    except Exception as exc:
        errors.append(exc)
    for name in pair.created_netns:
        try:
            delete_netns(name, kill_processes=kill_processes)
        except Exception as exc:
            errors.append(exc)
    if pair.prefix and not errors:
        _remove_state(pair.prefix)
    if errors:
        raise errors[0]


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove leftovers, with names starting with ``prefix``, of processes that are gone.

    Uses the state files under /run/xdpstack/netns/ and, for namespaces without one, the
    PID inside names made by :func:`unique_prefix`. Returns the pair prefixes and namespace
    names removed. Leftovers of live processes, and names it cannot attribute, stay.
    """
    removed: list[str] = []
    covered: set[str] = set()
    try:
        files = sorted(os.listdir(STATE_DIR))
    except FileNotFoundError:
        files = []
    for filename in files:
        if not (filename.endswith(".json") and filename.startswith(prefix)):
            continue
        pair_prefix = filename[: -len(".json")]
        try:
            with open(os.path.join(STATE_DIR, filename)) as f:
                state = json.load(f)
        except (OSError, ValueError):
            continue
        names = list(state.get("netns", []))
        covered.update(names)
        if _pid_alive(int(state.get("pid", 0)), state.get("start_time")):
            continue
        pair = VethPair(
            host_if=state.get("host_if", ""),
            peer_if="",
            netns=f"{pair_prefix}-peer",
            host_ns=state.get("host_ns"),
            host_addr=None,
            peer_addr="",
            host_mac=b"",
            peer_mac=b"",
            prefix=pair_prefix,
            created_netns=names,
        )
        try:
            destroy(pair)
            removed.append(pair_prefix)
        except Exception:
            pass  # try again next time
    for name in list_netns():
        if not name.startswith(prefix) or name in covered:
            continue
        match = _PREFIX_PID_RE.match(name)
        if match is None or _pid_alive(int(match.group(1)), None):
            continue
        try:
            delete_netns(name)
            removed.append(name)
        except Exception:
            pass
    return removed


@contextlib.contextmanager
def veth_pair(**kwargs: Any) -> Iterator[VethPair]:
    """``create_veth_pair(**kwargs)`` as a context manager that always destroys it."""
    pair = create_veth_pair(**kwargs)
    try:
        yield pair
    finally:
        destroy(pair)
