"""The XDP program: load ``bpf/xdpstack.bpf.c`` with bcc, attach it, drive its maps.

:class:`XdpProgram` owns one program attached to one interface, in the network namespace
of the calling thread at :meth:`XdpProgram.attach` (detach from the same namespace). Its
maps:

``steering``
    hash ``{addr, port}`` -> 1, both in network order; ``addr`` 0 matches any local address.
    The engine keeps it equal to the local ports its sockets use (:meth:`~XdpProgram.steer_add`,
    :meth:`~XdpProgram.steer_remove`, host byte order here).
``xsks``
    XSKMAP indexed by rx queue: the AF_XDP socket serving that queue
    (:meth:`~XdpProgram.set_xsk`). An empty slot makes a steered frame fall back to the
    kernel (``XDP_PASS``, counted ``no_xsk``).
``counters``
    per-CPU array, :data:`COUNTER_NAMES` (summed over CPUs by :meth:`~XdpProgram.counters`).
``config``
    the owned IPv4 address (0 = shared mode) and flags (:data:`FLAG_OWNED_TCP_ALL`).
``syncookie_cfg``, ``syn_bucket``, ``flooded``
    SYN cookies in XDP (:meth:`~XdpProgram.set_syncookies`; off until called): SYNs to a
    steered port that is flooded (:meth:`~XdpProgram.set_flooded`: its listener's SYN
    backlog overflowed lately, ``TcpPeer.flooded_ports``) and over a per-CPU rate are
    answered by the program with a cookie SYN-ACK (``XDP_TX``), computed by
    ``inetstack/layer4/tcp/syncookie.h`` with the TCP core's key, so that the core accepts
    the returning ACK. Every other SYN goes to the daemon. On a veth, ``XDP_TX`` in native
    mode needs the peer end to take XDP frames (an XDP program there, or GRO on: ``ethtool
    -K PEER gro on``); otherwise the kernel drops the replies, which is why XDP answers only
    while the daemon's own backlog is overflowing.

bcc (Debian's ``python3-bpfcc``) is imported only when a program is compiled, so this
module imports on machines without it. bcc needs the running kernel's headers; on kernels
without their own, ``scripts/setup.sh`` links Debian's ``linux-headers-6.1.0-NN-amd64``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import logging
import os
import re
import socket
import struct
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

log = logging.getLogger(__name__)

#: Counter names, in the order of ``enum xdpstack_counter`` in ``bpf/xdpstack.bpf.c``
#: (``XDPSTACK_C_PASSED`` -> ``"passed"``). Each frame adds 1 to exactly one of
#: ``passed``, ``redirected``, ``dropped`` (only SYNs over both SYN rates: ``syn_dropped``)
#: and ``tx`` (SYN cookies); the others give reasons and overlap with those four.
COUNTER_NAMES: tuple[str, ...] = (
    "passed",
    "redirected",
    "dropped",
    "malformed",
    "tcp_redirected",
    "arp_redirected",
    "icmp_redirected",
    "no_xsk",
    "fragments",
    "vlan",
    "tx",
    "syncookies_sent_xdp",
    "syn_dropped",
)

#: ``config.flags``: in owned-address mode, redirect every TCP segment to the owned
#: address, steered or not (the daemon answers closed ports with RST itself).
FLAG_OWNED_TCP_ALL = 0x1

#: The program's entry function in the C source (shown by ``ip -d link`` as its name).
FUNCTION_NAME = "xdpstack_rx"
SOURCE_NAME = "xdpstack.bpf.c"
#: Where the C source is installed by a package (the last place looked).
INSTALLED_BPF_DIR = Path("/usr/share/xdpstack/bpf")
#: Steering map size (local ports in use at once).
MAX_STEER = 16384
#: Where ``syncookie.h`` (shared with the TCP core) is: the program includes it.
SYNCOOKIE_HEADER_DIR = Path(__file__).resolve().parents[1] / "inetstack" / "layer4" / "tcp"

# linux/if_link.h
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}

_HEADERS_HINT = (
    "bcc needs kernel headers for the running kernel: install the kernel's headers package, "
    "or on a kernel without one install Debian's linux-headers-6.1.0-NN-amd64 and "
    "linux-headers-6.1.0-NN-common and link /lib/modules/{rel}/build -> "
    "/usr/src/linux-headers-6.1.0-NN-amd64 and /lib/modules/{rel}/source -> "
    "/usr/src/linux-headers-6.1.0-NN-common (scripts/setup.sh does all of this)"
)


class XdpError(RuntimeError):
    """The XDP program could not be found, compiled, loaded, attached or updated."""


def find_bpf_source() -> Path:
    """The C source: ``$XDPSTACK_BPF_DIR``, the repository's ``bpf/``, or the installed copy."""
    candidates: list[Path] = []
    env = os.environ.get("XDPSTACK_BPF_DIR")
    if env:
        candidates.append(Path(env) / SOURCE_NAME)
    # daemon/xdpstackd/datapath/xdp_program.py -> <repository>/bpf (editable install)
    candidates.append(Path(__file__).resolve().parents[3] / "bpf" / SOURCE_NAME)
    candidates.append(INSTALLED_BPF_DIR / SOURCE_NAME)
    for path in candidates:
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise XdpError(
        f"cannot find the XDP program source {SOURCE_NAME}; looked in: {tried} "
        f"(set XDPSTACK_BPF_DIR to the directory that holds it)"
    )


def counter_names_in_source(text: str) -> tuple[str, ...]:
    """The counter names of ``enum xdpstack_counter`` in the C source, lower case."""
    match = re.search(r"enum\s+xdpstack_counter\s*\{(.*?)\}", text, re.S)
    if match is None:
        raise XdpError("enum xdpstack_counter not found in the XDP program source")
    body = re.sub(r"/\*.*?\*/|//[^\n]*", "", match.group(1), flags=re.S)
    names = [m.group(1).lower() for m in re.finditer(r"XDPSTACK_C_(\w+)", body)]
    return tuple(n for n in names if n != "max")


def kernel_headers_problem() -> str | None:
    """Why bcc will not find kernel headers, or None when it should."""
    rel = os.uname().release
    if os.environ.get("BCC_KERNEL_SOURCE"):
        if Path(os.environ["BCC_KERNEL_SOURCE"]).is_dir():
            return None
        return f"BCC_KERNEL_SOURCE={os.environ['BCC_KERNEL_SOURCE']} is not a directory"
    build = Path(f"/lib/modules/{rel}/build")
    if build.is_dir():
        return None
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        return None  # CONFIG_IKHEADERS: bcc unpacks the kernel's own headers
    what = "a dangling symlink" if build.is_symlink() else "missing"
    return f"{build} is {what}; " + _HEADERS_HINT.format(rel=rel)


def _prog_id(fd: int) -> int | None:
    """The kernel's id of the BPF program behind ``fd`` (from /proc/self/fdinfo)."""
    try:
        text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    except OSError:
        return None
    match = re.search(r"^prog_id:\s*(\d+)", text, re.M)
    return int(match.group(1)) if match else None


# rtnetlink, just enough to read and clear an interface's XDP slots. Plain sockets rather
# than pyroute2: its synchronous IPRoute cannot be used while an event loop runs in the
# thread (the daemon's uvloop), and these calls happen at start-up and shutdown.
_NETLINK_ROUTE = 0
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_RTM_NEWLINK = 16
_RTM_GETLINK = 18
_RTM_SETLINK = 19
_NLA_F_NESTED = 0x8000
_IFLA_IFNAME = 3
_IFLA_XDP = 43
_IFLA_XDP_FD = 1
_IFLA_XDP_FLAGS = 3
_IFLA_XDP_DRV_PROG_ID = 5
_IFLA_XDP_SKB_PROG_ID = 6
_MODE_PROG_ATTR = {"native": _IFLA_XDP_DRV_PROG_ID, "generic": _IFLA_XDP_SKB_PROG_ID}
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_NLATTR = struct.Struct("=HH")
_nl_seq = itertools.count(1)


def _nla(kind: int, payload: bytes) -> bytes:
    attr = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return attr + b"\0" * (-len(attr) % 4)


def _parse_nlas(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + _NLATTR.size <= len(data):
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            break
        attrs[kind & ~_NLA_F_NESTED] = data[offset + _NLATTR.size : offset + length]
        offset += (length + 3) & ~3
    return attrs


def _rtnl(msg_type: int, flags: int, body: bytes, ifname: str) -> bytes | None:
    """Send one rtnetlink request; the RTM_NEWLINK payload of the answer, or None for an ack."""
    seq = next(_nl_seq)
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, _NLM_F_REQUEST | flags, seq, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE) as sock:
            sock.bind((0, 0))
            sock.settimeout(5.0)
            sock.send(header + body)
            return _rtnl_answer(sock, seq, ifname)
    except OSError as exc:
        raise XdpError(f"{ifname}: netlink: {exc}") from exc


def _rtnl_answer(sock: socket.socket, seq: int, ifname: str) -> bytes | None:
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _, rseq, _ = _NLMSGHDR.unpack_from(data, offset)
            if length < _NLMSGHDR.size:
                raise XdpError(f"{ifname}: bad netlink answer")
            payload = data[offset + _NLMSGHDR.size : offset + length]
            offset += (length + 3) & ~3
            if rseq != seq:
                continue
            if kind == _NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", payload)
                if err == 0:
                    return None
                if -err == errno.ENODEV:
                    raise XdpError(f"{ifname}: no such interface")
                raise XdpError(f"{ifname}: netlink: {os.strerror(-err)}")
            if kind == _RTM_NEWLINK:
                return payload
            if kind == _NLMSG_DONE:
                return None


def attached_programs(ifname: str) -> dict[str, int]:
    """The XDP programs on ``ifname`` (this thread's namespace): ``{"native"|"generic": id}``.

    Raises :class:`XdpError` when there is no such interface.
    """
    if not ifname or len(ifname) >= 16 or "/" in ifname:
        raise XdpError(f"{ifname!r}: no such interface (not an interface name)")
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
    body += _nla(_IFLA_IFNAME, ifname.encode() + b"\0")
    payload = _rtnl(_RTM_GETLINK, 0, body, ifname)
    if payload is None:
        raise XdpError(f"{ifname}: no such interface")
    attrs = _parse_nlas(payload[_IFINFOMSG.size :])
    xdp = _parse_nlas(attrs.get(_IFLA_XDP, b""))
    found: dict[str, int] = {}
    for mode, attr in _MODE_PROG_ATTR.items():
        if len(xdp.get(attr, b"")) >= 4:
            (prog,) = struct.unpack_from("=I", xdp[attr])
            if prog:
                found[mode] = prog
    return found


def _remove_xdp(ifname: str, mode: str) -> None:
    """Clear the ``mode`` XDP slot of ``ifname`` (this thread's namespace)."""
    try:
        index = socket.if_nametoindex(ifname)
    except OSError as exc:
        raise XdpError(f"{ifname}: no such interface") from exc
    xdp = _nla(_IFLA_XDP_FD, struct.pack("=i", -1))
    xdp += _nla(_IFLA_XDP_FLAGS, struct.pack("=I", _MODE_FLAGS[mode]))
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0)
    body += _nla(_IFLA_XDP | _NLA_F_NESTED, xdp)
    _rtnl(_RTM_SETLINK, _NLM_F_ACK, body, ifname)


@contextlib.contextmanager
def _capture_stderr():
    """Collect what C code writes to fd 2 (clang diagnostics, the verifier log).

    Yields a list that holds the captured text once the block ends.
    """
    out: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            try:
                yield out
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))


def _tail(text: str, lines: int = 25) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


class XdpProgram:
    """The xdpstack XDP program on one interface.

    >>> with XdpProgram("veth0", mode="generic") as prog:  # doctest: +SKIP
    ...     prog.steer_add(0, 8080)
    ...     prog.set_xsk(0, xsk.fileno())
    """

    def __init__(
        self,
        ifname: str,
        *,
        mode: str = "native",
        owned_address: int | None = None,
        max_queues: int = 64,
        owned_tcp_all: bool = False,
    ) -> None:
        if mode not in _MODE_FLAGS:
            raise ValueError(f"mode must be 'native' or 'generic', not {mode!r}")
        if not 1 <= max_queues <= 4096:
            raise ValueError(f"max_queues must be 1..4096, not {max_queues}")
        if owned_address is not None and not 0 < owned_address < 1 << 32:
            raise ValueError(f"owned_address must be a non-zero IPv4 address, not {owned_address}")
        if owned_tcp_all and owned_address is None:
            raise ValueError("owned_tcp_all needs owned_address")
        self.ifname = ifname
        self.mode = mode
        self.owned_address = owned_address
        self.max_queues = max_queues
        self.owned_tcp_all = owned_tcp_all
        self._bpf: Any = None
        self._prog_id: int | None = None
        self._attached = False
        self._flooded_words: dict[int, int] = {}  # what the flooded map holds (non-zero)

    # -- life cycle ----------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def prog_id(self) -> int | None:
        """The kernel's id of the loaded program (``ip -d link`` shows it), once attached."""
        return self._prog_id

    def attach(self) -> None:
        """Compile the program with bcc, load it (verifier) and attach it to the interface."""
        if self._attached:
            raise XdpError(f"{self.ifname}: the XDP program is already attached")
        try:
            if_index = socket.if_nametoindex(self.ifname)
        except OSError as exc:
            raise XdpError(f"{self.ifname}: no such interface") from exc
        source = find_bpf_source()
        text = source.read_text()
        names = counter_names_in_source(text)
        if names != COUNTER_NAMES:
            raise XdpError(
                f"{source}: counters {names} do not match xdp_program.COUNTER_NAMES {COUNTER_NAMES}"
            )
        problem = kernel_headers_problem()
        if problem is not None:
            raise XdpError(f"{self.ifname}: cannot compile the XDP program: {problem}")
        try:
            from bcc import BPF
        except ImportError as exc:
            raise XdpError(
                f"{self.ifname}: cannot import bcc ({exc}); install Debian's python3-bpfcc and "
                "use a Python that sees /usr/lib/python3/dist-packages (scripts/setup.sh)"
            ) from exc

        cflags = [
            f"-DXDPSTACK_MAX_QUEUES={self.max_queues}",
            f"-DXDPSTACK_MAX_STEER={MAX_STEER}",
            f"-I{SYNCOOKIE_HEADER_DIR}",
            "-Wno-unused-function",
        ]
        bpf = None
        with _capture_stderr() as compile_log:
            try:
                bpf = BPF(text=text.encode(), cflags=cflags)
            except Exception as exc:
                compile_exc: Exception | None = exc
            else:
                compile_exc = None
        log_text = compile_log[0]
        if compile_exc is not None:
            detail = _tail(log_text)
            if "kernel headers" in log_text:
                detail += "\n" + _HEADERS_HINT.format(rel=os.uname().release)
            raise XdpError(
                f"{self.ifname}: bcc could not compile {source}: {compile_exc}\n{detail}"
            ) from compile_exc
        if log_text.strip():
            log.debug("bcc compile output for %s:\n%s", source, log_text)
        try:
            with _capture_stderr() as verifier_log:
                try:
                    fn = bpf.load_func(FUNCTION_NAME.encode(), BPF.XDP)
                except Exception as exc:
                    load_exc: Exception | None = exc
                else:
                    load_exc = None
            if load_exc is not None:
                raise XdpError(
                    f"{self.ifname}: the kernel refused the XDP program {FUNCTION_NAME} "
                    f"({load_exc}); verifier log tail:\n{_tail(verifier_log[0])}"
                ) from load_exc
            self._bpf = bpf
            self._write_config()
            flags = _MODE_FLAGS[self.mode] | XDP_FLAGS_UPDATE_IF_NOEXIST
            with _capture_stderr() as attach_log:
                try:
                    BPF.attach_xdp(self.ifname.encode(), fn, flags)
                except Exception as exc:
                    attach_exc: Exception | None = exc
                else:
                    attach_exc = None
            if attach_exc is not None:
                raise XdpError(self._attach_failure(attach_exc, attach_log[0])) from attach_exc
        except BaseException:
            self._bpf = None
            bpf.cleanup()
            raise
        self._prog_id = _prog_id(fn.fd)
        self._attached = True
        log.info(
            "XDP program %s (id %s) attached to %s (ifindex %d) in %s mode%s",
            FUNCTION_NAME,
            self._prog_id,
            self.ifname,
            if_index,
            self.mode,
            f", owned address {_ip_str(self.owned_address)}" if self.owned_address else "",
        )

    def _attach_failure(self, exc: Exception, output: str) -> str:
        cause = str(exc).rsplit(": ", 1)[-1]  # bcc: "Failed to attach BPF to device b'x': why"
        text = f"{self.ifname}: cannot attach the XDP program in {self.mode} mode: {cause}"
        if "busy" in cause.lower() or "exists" in cause.lower():
            try:
                others = attached_programs(self.ifname)
            except XdpError:
                others = {}
            text += (
                f" (an XDP program is already attached: {others or 'see ip -d link'}; a "
                "crashed earlier run leaves one behind, XdpProgram.detach_stale() removes it)"
            )
        elif self.mode == "native" and "not supported" in cause.lower():
            text += " (the driver has no native XDP; use mode='generic')"
        if output.strip():
            text += "\n" + _tail(output, 5)
        return text

    def detach(self) -> None:
        """Empty the steering map and the XSKMAP, detach and unload. Idempotent."""
        bpf = self._bpf
        if bpf is None:
            return
        try:
            with contextlib.suppress(Exception):
                bpf[b"steering"].clear()
            with contextlib.suppress(Exception):
                xsks = bpf[b"xsks"]
                for queue_id in range(self.max_queues):
                    with contextlib.suppress(Exception):
                        del xsks[ctypes.c_int(queue_id)]
            if self._attached:
                self._detach_from_interface()
        finally:
            self._attached = False
            self._bpf = None
            self._flooded_words = {}
            bpf.cleanup()

    def _detach_from_interface(self) -> None:
        try:
            present = attached_programs(self.ifname)
        except XdpError:
            log.info("%s is gone; nothing to detach", self.ifname)
            return
        current = present.get(self.mode)
        if current is None:
            log.warning("%s: the XDP program was already detached", self.ifname)
            return
        if self._prog_id is not None and current != self._prog_id:
            log.warning(
                "%s: the %s XDP slot holds program %d, not ours (%d); leaving it",
                self.ifname,
                self.mode,
                current,
                self._prog_id,
            )
            return
        try:
            _remove_xdp(self.ifname, self.mode)
        except XdpError as exc:
            if "no such interface" in str(exc):
                return  # gone in the meantime: so is the program
            raise XdpError(f"{self.ifname}: cannot detach the XDP program: {exc}") from exc
        log.info("XDP program detached from %s (%s mode)", self.ifname, self.mode)

    @staticmethod
    def detach_stale(ifname: str) -> bool:
        """Remove XDP programs left on ``ifname`` (native and generic slots), e.g. by a crash.

        Returns whether one was removed. Only for interfaces the daemon's own code created
        or that the operator named: whatever program is there is removed.
        """
        present = attached_programs(ifname)
        for mode, prog_id in present.items():
            log.warning("%s: removing stale %s XDP program id %d", ifname, mode, prog_id)
            try:
                _remove_xdp(ifname, mode)
            except Exception as exc:
                raise XdpError(
                    f"{ifname}: cannot remove the stale {mode} XDP program {prog_id}: {exc}"
                ) from exc
        return bool(present)

    def __enter__(self) -> Self:
        if not self._attached:
            self.attach()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()

    def __repr__(self) -> str:
        state = f"attached id {self._prog_id}" if self._attached else "detached"
        return f"<XdpProgram {self.ifname} {self.mode} {state}>"

    # -- maps ----------------------------------------------------------------------------

    def _table(self, name: str) -> Any:
        if self._bpf is None:
            raise XdpError(f"{self.ifname}: the XDP program is not attached")
        return self._bpf[name.encode()]

    def _write_config(self) -> None:
        table = self._table("config")
        leaf = table.Leaf()
        leaf.owned_addr = _hton32(self.owned_address or 0)
        leaf.flags = FLAG_OWNED_TCP_ALL if self.owned_tcp_all else 0
        table[ctypes.c_int(0)] = leaf

    def set_syncookies(
        self,
        key_words: tuple[int, int],
        *,
        rate: int,
        mss: int,
        window: int = 0xFFFF,
        burst: int | None = None,
        cookie_rate: int = 0,
        skip_ports: tuple[int, int] = (1, 0),
    ) -> None:
        """Answer SYNs to steered ports over ``rate`` a second (per CPU; 0 = off: every
        SYN goes to the daemon) with cookie SYN-ACKs made with ``key_words`` (SipHash's
        two 64-bit words, ``SynCookies.key_words``), announcing ``mss`` and ``window``.
        ``burst`` SYNs may pass back to back (default: a tenth of a second's worth). Over
        ``cookie_rate`` cookies a second (per CPU; 0: no limit) SYNs are dropped. SYNs to the
        ports ``skip_ports`` (first, last; the daemon's ephemeral ports, where its own
        connections are and no listener) always go to the daemon."""
        if rate < 0 or not 0 < mss < 1 << 16 or not 0 <= window < 1 << 16:
            raise ValueError(f"bad SYN cookie settings: rate {rate}, mss {mss}, window {window}")
        table = self._table("syncookie_cfg")
        leaf = table.Leaf()
        leaf.k0, leaf.k1 = key_words
        if rate:
            ns_per_syn = max(1, 1_000_000_000 // rate)
            burst = burst if burst is not None else max(1, rate // 10)
            leaf.ns_per_syn = ns_per_syn
            leaf.burst_ns = ns_per_syn * max(1, burst)
        else:
            leaf.ns_per_syn = leaf.burst_ns = 0
        if rate and cookie_rate:
            ns_per_cookie = max(1, 1_000_000_000 // cookie_rate)
            leaf.ns_per_cookie = ns_per_cookie
            leaf.cookie_burst_ns = ns_per_cookie * max(1, cookie_rate // 10)
        else:
            leaf.ns_per_cookie = leaf.cookie_burst_ns = 0
        leaf.skip_lo, leaf.skip_hi = skip_ports
        leaf.mss = mss
        leaf.window = window
        table[ctypes.c_int(0)] = leaf

    def set_flooded(self, ports: Iterable[int]) -> None:
        """The listening ports (host order) whose SYNs over the rate the program answers
        with cookies (``TcpPeer.flooded_ports``); SYNs to any other port go to the daemon.
        The map is a bitmap of all 65,536 ports; only the words that change are written."""
        words: dict[int, int] = {}
        for port in ports:
            if not 0 < port < 1 << 16:
                raise ValueError(f"not a TCP port: {port!r}")
            words[port >> 6] = words.get(port >> 6, 0) | 1 << (port & 63)
        old = self._flooded_words
        if words == old:
            return
        table = self._table("flooded")
        for index in old.keys() | words.keys():
            value = words.get(index, 0)
            if old.get(index, 0) != value:
                table[ctypes.c_int(index)] = ctypes.c_uint64(value)
        self._flooded_words = words

    def flooded(self) -> list[int]:
        """The ports the ``flooded`` map holds, sorted (read back from the kernel)."""
        table = self._table("flooded")
        return sorted(
            (k.value << 6) + bit
            for k, v in table.items()
            if v.value
            for bit in range(64)
            if v.value >> bit & 1
        )

    def _steer_key(self, ip: int, port: int) -> Any:
        if not 0 <= ip < 1 << 32:
            raise ValueError(f"not an IPv4 address (host byte order int): {ip!r}")
        if not 0 < port < 1 << 16:
            raise ValueError(f"not a TCP port: {port!r}")
        key = self._table("steering").Key()
        key.addr = _hton32(ip)
        key.port = socket.htons(port)
        key.pad = 0
        return key

    def steer_add(self, ip: int, port: int) -> None:
        """Send TCP to ``ip``:``port`` (host byte order; ip 0 = any local address) to the daemon."""
        table = self._table("steering")
        key = self._steer_key(ip, port)
        try:
            table[key] = table.Leaf(1)
        except Exception as exc:
            raise XdpError(
                f"{self.ifname}: cannot steer {_ip_str(ip)}:{port}: {exc}"
                f" (the map holds at most {MAX_STEER} entries)"
            ) from exc

    def steer_remove(self, ip: int, port: int) -> bool:
        """Stop steering ``ip``:``port``; returns whether it was steered."""
        table = self._table("steering")
        key = self._steer_key(ip, port)
        try:
            del table[key]
        except KeyError:
            return False
        return True

    def steering(self) -> list[tuple[int, int]]:
        """The steered (ip, port) pairs, host byte order, sorted."""
        table = self._table("steering")
        return sorted((_ntoh32(k.addr), socket.ntohs(k.port)) for k in table)

    def set_xsk(self, queue_id: int, xsk_fd: int) -> None:
        """Put the AF_XDP socket ``xsk_fd`` in the XSKMAP slot of rx queue ``queue_id``."""
        self._check_queue(queue_id)
        table = self._table("xsks")
        try:
            table[ctypes.c_int(queue_id)] = ctypes.c_int(xsk_fd)
        except Exception as exc:
            err = ctypes.get_errno()
            why = os.strerror(err) if err else str(exc)
            raise XdpError(
                f"{self.ifname}: cannot put fd {xsk_fd} in the XSKMAP slot of queue "
                f"{queue_id}: {why} (is it an AF_XDP socket?)"
            ) from exc

    def clear_xsk(self, queue_id: int) -> None:
        """Empty the XSKMAP slot of rx queue ``queue_id`` (steered frames then go to the kernel)."""
        self._check_queue(queue_id)
        table = self._table("xsks")
        try:
            del table[ctypes.c_int(queue_id)]
        except KeyError:
            pass
        except Exception as exc:
            if ctypes.get_errno() not in (0, errno.ENOENT):
                raise XdpError(
                    f"{self.ifname}: cannot clear the XSKMAP slot of queue {queue_id}: {exc}"
                ) from exc

    def _check_queue(self, queue_id: int) -> None:
        if not 0 <= queue_id < self.max_queues:
            raise ValueError(f"queue_id must be 0..{self.max_queues - 1}, not {queue_id}")

    def counters(self) -> dict[str, int]:
        """The program's counters, summed over CPUs (names: :data:`COUNTER_NAMES`)."""
        table = self._table("counters")
        return {name: int(table.sum(ctypes.c_int(i)).value) for i, name in enumerate(COUNTER_NAMES)}


_hton32 = socket.htonl
_ntoh32 = socket.ntohl


def _ip_str(ip: int | None) -> str:
    return socket.inet_ntoa((ip or 0).to_bytes(4, "big"))
