"""InetStack: layers 2-4 wired together, the one sans-IO object the daemon drives.

Why one object: the daemon (and simnet, and the benchmarks) should not know how Ethernet,
ARP, IPv4, ICMP and TCP fit together. They hand frames and ``now`` in, call the
application commands, and take frames, completions and the next deadline out, in the
same shape as ``TcpPeer`` (after quinn-proto / aioquic):

    stack.receive_frame(frame, now)      # or receive_frames(batch, now)
    stack.handle_timers(now)             # when now >= stack.next_deadline()
    stack.poll_transmit() -> [frame]     # after every input or command
    stack.poll_completions() -> [Completion]

Input path: Ethernet (ours or broadcast) -> ARP (owned mode) | IPv4 (checksum, lengths,
to our address, no fragments) -> TCP (``TcpPeer.receive``) | ICMP echo (owned mode).
Every frame that is not used is counted under the reason (``<layer>_drop_<reason>``),
and nothing raises out of ``receive_frame`` whatever the bytes: parse errors are counted,
and an unexpected exception from deeper down is counted as ``stack_internal_errors`` and
kept in ``last_internal_error`` (simnet sets ``raise_internal_errors`` so tests see it).

Output path: TCP segments are wrapped in IPv4 and sent to the next hop (the destination
on-link, else the gateway) through the ``ArpCache``, which either knows the MAC, asks
the kernel's neighbour table (shared-address mode), or queues the frame while it
resolves. Frames leave in the order they were produced.

The hot path, an established connection's segments, skips the layering: the stack is
the ``TcpPeer``'s output (``layer4/tcp/output.py``), each connection gets a flow that
keeps its next hop's MAC (``ArpCache.usable_mac``) and everything else that does not
change, and a frame is then one ``struct`` pack of Ethernet + IPv4 + TCP headers with
both checksums, and one copy of the payload out of the send buffer. Frames for a
neighbour that is not resolved go the layered way (and queue in the ``ArpCache``).

Receive batches: ``receive_frames`` tells TCP that the frames arrived together, so a
connection ACKs in-order data once per batch (see ``AckBatch``).

Time: only the caller's ``now`` is used. ``poll_transmit`` frames TCP output with the
``now`` of the latest input or command, which is the time it was produced.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from xdpstackd.inetstack.completion import Completion
from xdpstackd.inetstack.config import StackConfig
from xdpstackd.inetstack.counters import Counters
from xdpstackd.inetstack.errors import ParseError
from xdpstackd.inetstack.layer2.arp import ArpCache, parse_arp
from xdpstackd.inetstack.layer2.ethernet import (
    BROADCAST_MAC,
    ETH_HEADER_LEN,
    ETHERTYPE_ARP,
    ETHERTYPE_IPV4,
    mac_to_str,
    parse_ethernet,
)
from xdpstackd.inetstack.layer3.checksum import (
    as_buffer,
    fold_sum,
    pseudo_header_sum,
    raw_sum,
)
from xdpstackd.inetstack.layer3.icmp import (
    ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST,
    build_icmp_echo,
    echo_reply_for,
    parse_icmp,
    parse_icmp_echo,
)
from xdpstackd.inetstack.layer3.ipv4 import (
    IPPROTO_ICMP,
    IPPROTO_TCP,
    build_ipv4,
    ip_from_str,
    ip_to_str,
    parse_ipv4,
)
from xdpstackd.inetstack.layer4.tcp.header import build_tcp_segment
from xdpstackd.inetstack.layer4.tcp.peer import TcpPeer

# RFC 791: every host accepts 576-byte datagrams; below that TCP's MSS gets silly.
MIN_MTU = 576
MAX_MTU = 65535
IPV4_TCP_HEADERS_LEN = 40  # 20-byte IPv4 header + 20-byte TCP header, no options
ECHO_REPLIES_KEPT = 64

# Ethernet II + IPv4 without options + TCP without options, in one pack
_FRAME = struct.Struct("!6s6sHBBHHHBBHIIHHIIBBHHH")
_VERSION_IHL = 0x45
_DF = 0x4000
_TCP_DATA_OFFSET = 0x50  # 5 words: no options
_NEVER = float("-inf")
# the receive hot path: Ethernet II + an IPv4 header without options, in one unpack
_ETH_IPV4 = struct.Struct("!6s6sHBBHHHBBHII")
_ETH_IPV4_LEN = 34
_FRAGMENT_BITS = 0x3FFF  # MF + fragment offset


class _FrameOutput:
    """``InetStack`` as its ``TcpPeer``'s output (``layer4/tcp/output.py``): frames go
    straight into the stack's transmit list, in the order TCP produces them."""

    __slots__ = ("stack",)

    def __init__(self, stack: InetStack) -> None:
        self.stack = stack

    def flow(self, local: tuple[int, int], remote: tuple[int, int]) -> _FrameFlow:
        return _FrameFlow(self.stack, local, remote)

    def raw(self, src_ip: int, dst_ip: int, segment: bytes) -> None:
        stack = self.stack
        stack._send_ipv4(src_ip, dst_ip, IPPROTO_TCP, segment, stack._now)


class _FrameFlow:
    """One established connection's frames, built in one go.

    Fixed per connection: both MACs (the next hop's kept until ``ArpCache.usable_mac``'s
    answer runs out or its ``epoch`` moves), addresses, ports, TTL, and the parts of
    both checksums they make. Per segment: the IPv4 identification and lengths, the TCP
    fields, and the one's-complement sum of the payload, taken in C where it lies.
    Byte for byte the frame ``build_tcp`` + ``build_ipv4`` + ``build_ethernet`` make."""

    __slots__ = (
        "_arp",
        "_epoch",
        "_ip_sum",
        "_mac",
        "_next_hop",
        "_stack",
        "_tcp_sum",
        "_ttl",
        "_tx",
        "_valid_until",
        "dst_ip",
        "dst_port",
        "src_ip",
        "src_port",
    )

    def __init__(self, stack: InetStack, local: tuple[int, int], remote: tuple[int, int]) -> None:
        self._stack = stack
        self._arp = stack.arp
        self._tx = stack._tx
        self.src_ip, self.src_port = src, sport = local
        self.dst_ip, self.dst_port = dst, dport = remote
        self._next_hop = stack.next_hop(dst)  # None: _send_ipv4 counts the drop
        self._mac = b""
        self._valid_until = _NEVER
        self._epoch = -1
        self._ttl = ttl = stack._ttl
        self._ip_sum = (
            (_VERSION_IHL << 8) + _DF + (ttl << 8 | IPPROTO_TCP)
            + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
        )  # fmt: skip
        self._tcp_sum = (
            pseudo_header_sum(src, dst, IPPROTO_TCP, 0) + sport + dport + (_TCP_DATA_OFFSET << 8)
        )

    def send(
        self, flags: int, seq: int, ack: int, window: int, payload: bytes | memoryview
    ) -> None:
        stack = self._stack
        now = stack._now
        if (now >= self._valid_until or self._epoch != self._arp.epoch) and not self._resolve(now):
            segment = build_tcp_segment(
                self.src_port, self.dst_port, seq, ack, flags, window, payload,
                self.src_ip, self.dst_ip,
            )  # fmt: skip
            stack._send_ipv4(self.src_ip, self.dst_ip, IPPROTO_TCP, segment, now)
            return
        n = len(payload)
        ident = stack._ip_id
        stack._ip_id = (ident + 1) & 0xFFFF
        total = 40 + n
        i = self._ip_sum + total + ident
        i = (i & 0xFFFF) + (i >> 16)
        s = self._tcp_sum + 20 + n + (seq >> 16) + (seq & 0xFFFF) + (ack >> 16) + (ack & 0xFFFF)
        s += flags + window
        s = raw_sum(as_buffer(payload), n, s) if n else fold_sum(s)
        frame = _FRAME.pack(
            self._mac, stack.mac, ETHERTYPE_IPV4,
            _VERSION_IHL, 0, total, ident, _DF, self._ttl, IPPROTO_TCP,
            ~((i & 0xFFFF) + (i >> 16)) & 0xFFFF, self.src_ip, self.dst_ip,
            self.src_port, self.dst_port, seq, ack, _TCP_DATA_OFFSET, flags, window,
            ~s & 0xFFFF, 0,
        )  # fmt: skip
        self._tx.append(frame + payload if n else frame)
        stack.counters["ipv4_packets_out"] += 1

    def _resolve(self, now: float) -> bool:
        next_hop = self._next_hop
        if next_hop is None:
            return False
        arp = self._arp
        epoch = arp.epoch
        usable = arp.usable_mac(next_hop, now)
        if usable is None:
            self._valid_until = _NEVER
            return False
        self._mac, self._valid_until = usable
        self._epoch = epoch
        return True


class InetStack:
    """Ethernet + ARP + IPv4 + ICMP echo + TCP for one interface address (sans-IO)."""

    #: Re-raise unexpected exceptions from the input path instead of only counting
    #: them. Off for the daemon (a hostile frame must never stop it); simnet turns it
    #: on so a core bug fails the test that triggered it.
    raise_internal_errors: bool = False

    def __init__(
        self,
        config: StackConfig,
        *,
        mac: bytes,
        ip: str,
        prefix_len: int,
        gateway: str | None = None,
        owned_address: bool = True,
        neighbour_lookup: Callable[[int], bytes | None] | None = None,
        isn_secret: bytes | None = None,
        seed: int | None = None,
    ) -> None:
        if not MIN_MTU <= config.mtu <= MAX_MTU:
            raise ValueError(
                f"MTU {config.mtu} is outside [{MIN_MTU}, {MAX_MTU}]; "
                f"set StackConfig.mtu to the interface MTU (usually 1500)"
            )
        if len(mac) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {len(mac)}")
        if not 0 <= prefix_len <= 32:
            raise ValueError(f"prefix length {prefix_len} is outside [0, 32]")
        if not owned_address and neighbour_lookup is None:
            raise ValueError(
                "shared-address mode (owned_address=False) needs neighbour_lookup: "
                "the kernel answers ARP, so the stack cannot resolve neighbours itself"
            )
        # Our own copy: the MSS follows from this interface's MTU, and a config object
        # shared between stacks (tests do that) must not be changed under the others.
        tcp_config = replace(config.tcp, mss=config.mtu - IPV4_TCP_HEADERS_LEN)
        self.config: StackConfig = replace(config, tcp=tcp_config)
        self.mac: bytes = bytes(mac)
        self.ip: int = ip_from_str(ip)
        self.prefix_len = prefix_len
        self.netmask: int = (0xFFFFFFFF << (32 - prefix_len)) & 0xFFFFFFFF
        self.network: int = self.ip & self.netmask
        self.subnet_broadcast: int = self.network | (~self.netmask & 0xFFFFFFFF)
        self.gateway: int | None = None
        if gateway is not None:
            gw = ip_from_str(gateway)
            if gw & self.netmask != self.network:
                raise ValueError(f"gateway {gateway} is not on-link for {ip}/{prefix_len}")
            self.gateway = gw
        self.owned_address = owned_address
        self.counters = Counters()
        self.last_internal_error: BaseException | None = None
        self._tx: list[bytes] = []
        self.arp = ArpCache(
            self.config,
            mac=self.mac,
            ip=self.ip,
            counters=self.counters,
            tx=self._tx,
            neighbour_lookup=neighbour_lookup,
        )
        self.tcp = TcpPeer(
            self.config.tcp,
            self.ip,
            counters=self.counters,
            isn_secret=isn_secret,
            rng=random.Random(seed) if seed is not None else None,
        )
        #: Echo replies to our own ``send_echo_request``: (src, identifier, sequence, now).
        self.echo_replies: deque[tuple[str, int, int, float]] = deque(maxlen=ECHO_REPLIES_KEPT)
        self._ttl = self.config.ttl
        self._ip_id = 0
        self._now = 0.0
        self.tcp.output = _FrameOutput(self)

    # ------------------------------------------------------------------ properties
    @property
    def ip_str(self) -> str:
        return ip_to_str(self.ip)

    @property
    def now(self) -> float:
        """The latest ``now`` given to any input or command."""
        return self._now

    def __repr__(self) -> str:
        mode = "owned" if self.owned_address else "shared"
        return f"InetStack({self.ip_str}/{self.prefix_len} {mac_to_str(self.mac)} {mode})"

    # ----------------------------------------------------------------------- input
    def receive_frames(self, frames: Iterable[bytes | memoryview], now: float) -> None:
        """A batch of received frames (an AF_XDP rx batch), all at ``now``: in-order data
        is ACKed once per connection at the end of the batch (``AckBatch``)."""
        self._now = now
        tcp = self.tcp
        tcp.begin_batch()
        try:
            for frame in frames:
                self.receive_frame(frame, now)
        finally:
            tcp.end_batch()

    def receive_frame(self, frame: bytes | bytearray | memoryview, now: float) -> None:
        """One received Ethernet frame. Never raises (see the module docstring)."""
        self._now = now
        counters = self.counters
        counters["eth_frames_in"] += 1
        try:
            n = len(frame)
            if n >= _ETH_IPV4_LEN:
                # The hot path, TCP to us in IPv4 without options or fragments, checked in
                # one unpack; anything else, or anything wrong, takes the layered path
                # below, which counts it under its reason.
                (
                    dst_mac, _, ethertype, vihl, tos, total, ident, frag, ttl, protocol,
                    csum, src, dst,
                ) = _ETH_IPV4.unpack_from(frame)  # fmt: skip
                if (
                    vihl == 0x45
                    and protocol == IPPROTO_TCP
                    and ethertype == ETHERTYPE_IPV4
                    and dst_mac == self.mac
                    and dst == self.ip
                    and not frag & _FRAGMENT_BITS
                    and 20 <= total <= n - ETH_HEADER_LEN
                    and 0 < src < 0xE0000000
                    and src != self.ip
                    and src >> 24 != 127
                    and (src != self.subnet_broadcast or self.prefix_len >= 31)
                ):
                    # the header checksum from the unpacked words: a sum of 0xFFFF checks
                    h = (
                        (0x4500 | tos) + total + ident + frag + (ttl << 8 | IPPROTO_TCP) + csum
                        + (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
                    )  # fmt: skip
                    h = (h & 0xFFFF) + (h >> 16)
                    if (h & 0xFFFF) + (h >> 16) == 0xFFFF:
                        counters["ipv4_packets_in"] += 1
                        try:
                            self.tcp.receive(
                                src,
                                dst,
                                memoryview(frame)[_ETH_IPV4_LEN : ETH_HEADER_LEN + total],
                                now,
                            )
                        except ParseError as exc:  # the peer counts its own: a safety net
                            counters["tcp_drop_" + exc.reason] += 1
                        return
            try:
                eth, payload = parse_ethernet(frame)
            except ParseError as exc:
                counters["eth_drop_" + exc.reason] += 1
                return
            dst = eth.dst
            if dst != self.mac and dst != BROADCAST_MAC:
                counters["eth_drop_not_for_us"] += 1
                return
            ethertype = eth.ethertype
            if ethertype == ETHERTYPE_IPV4:
                if dst != self.mac:
                    # link-layer broadcast is for ARP; IP in it is not addressed to us
                    # (Linux's TCP takes only PACKET_HOST frames)
                    counters["eth_drop_broadcast_not_arp"] += 1
                    return
                self._receive_ipv4(payload, now)
            elif ethertype == ETHERTYPE_ARP:
                self._receive_arp(payload, now)
            else:
                counters["eth_drop_unknown_ethertype"] += 1
        except Exception as exc:
            counters["stack_internal_errors"] += 1
            self.last_internal_error = exc
            if self.raise_internal_errors:
                raise

    def _receive_arp(self, data: memoryview, now: float) -> None:
        counters = self.counters
        if not self.owned_address:
            counters["arp_ignored_shared_mode"] += 1
            return
        try:
            packet = parse_arp(data)
        except ParseError as exc:
            counters["arp_drop_" + exc.reason] += 1
            return
        self.arp.receive(packet, now)

    def _receive_ipv4(self, data: memoryview, now: float) -> None:
        counters = self.counters
        counters["ipv4_packets_in"] += 1
        try:
            header, payload = parse_ipv4(data)
        except ParseError as exc:
            counters["ipv4_drop_" + exc.reason] += 1
            return
        if header.dst != self.ip:
            counters["ipv4_drop_not_for_us"] += 1
            return
        src = header.src
        if (
            src == self.ip
            or src == 0
            or src >= 0xE0000000  # multicast, reserved, limited broadcast
            or src >> 24 == 127
            or (src == self.subnet_broadcast and self.prefix_len < 31)
        ):
            counters["ipv4_drop_bad_source"] += 1
            return
        if header.more_fragments or header.fragment_offset:
            counters["ipv4_drop_fragment"] += 1
            return
        protocol = header.protocol
        if protocol == IPPROTO_TCP:
            try:
                self.tcp.receive(src, header.dst, payload, now)
            except ParseError as exc:  # the peer counts its own; this is a safety net
                counters["tcp_drop_" + exc.reason] += 1
        elif protocol == IPPROTO_ICMP:
            self._receive_icmp(src, payload, now)
        else:
            counters["ipv4_drop_unknown_protocol"] += 1

    def _receive_icmp(self, src: int, message: memoryview, now: float) -> None:
        counters = self.counters
        counters["icmp_messages_in"] += 1
        if not self.owned_address:
            counters["icmp_ignored_shared_mode"] += 1
            return
        try:
            icmp_type, _code, _rest = parse_icmp(message)
        except ParseError as exc:
            counters["icmp_drop_" + exc.reason] += 1
            return
        if icmp_type != ICMP_ECHO_REQUEST:
            if icmp_type == ICMP_ECHO_REPLY:
                echo = parse_icmp_echo(message, verify_checksum=False)
                counters["icmp_echo_replies_in"] += 1
                self.echo_replies.append((ip_to_str(src), echo.identifier, echo.sequence, now))
            else:
                counters["icmp_ignored_not_echo_request"] += 1
            return
        reply = echo_reply_for(parse_icmp_echo(message, verify_checksum=False))
        counters["icmp_echo_replies"] += 1
        self._send_ipv4(self.ip, src, IPPROTO_ICMP, reply, now)

    # ---------------------------------------------------------------------- output
    def next_hop(self, dst: int) -> int | None:
        """Where a packet for ``dst`` goes on the link: ``dst`` itself when on-link, else
        the gateway; None when it cannot be sent (our own address, no route)."""
        if dst & self.netmask == self.network:
            return None if dst == self.ip else dst
        return self.gateway

    def _send_ipv4(self, src: int, dst: int, protocol: int, payload: bytes, now: float) -> None:
        if dst & self.netmask == self.network:
            if dst == self.ip:
                self.counters["ipv4_drop_loopback_unsupported"] += 1
                return
            next_hop = dst
        elif self.gateway is not None:
            next_hop = self.gateway
        else:
            self.counters["ipv4_drop_no_route"] += 1
            return
        packet = build_ipv4(src, dst, protocol, payload, ttl=self._ttl, identification=self._ip_id)
        self._ip_id = (self._ip_id + 1) & 0xFFFF
        self.counters["ipv4_packets_out"] += 1
        self.arp.send(next_hop, ETHERTYPE_IPV4, packet, now)

    def send_echo_request(
        self, dst: str, identifier: int, sequence: int, data: bytes, now: float
    ) -> None:
        """Ping ``dst`` (owned mode: in shared mode the kernel gets the reply).

        Replies are recorded in ``echo_replies``; nothing else waits for them.
        """
        self._now = now
        message = build_icmp_echo(ICMP_ECHO_REQUEST, identifier & 0xFFFF, sequence & 0xFFFF, data)
        self.counters["icmp_echo_requests_out"] += 1
        self._send_ipv4(self.ip, ip_from_str(dst), IPPROTO_ICMP, message, now)

    def poll_transmit(self) -> list[bytes]:
        """Drain every frame to send, oldest first (TCP output, ARP, ICMP replies)."""
        segments = self.tcp.poll_transmit()
        if segments:
            now = self._now
            for src, dst, segment in segments:
                self._send_ipv4(src, dst, IPPROTO_TCP, segment, now)
        tx = self._tx
        if not tx:
            return []
        out = tx.copy()
        tx.clear()  # the ArpCache appends to this same list
        self.counters["eth_frames_out"] += len(out)
        return out

    def poll_completions(self) -> list[Completion]:
        return self.tcp.poll_completions()

    # ---------------------------------------------------------------------- timers
    def handle_timers(self, now: float) -> None:
        self._now = now
        self.tcp.handle_timers(now)
        self.arp.handle_timers(now)

    def next_deadline(self) -> float | None:
        tcp_deadline = self.tcp.next_deadline()
        arp_deadline = self.arp.next_deadline()
        if arp_deadline is None:
            return tcp_deadline
        if tcp_deadline is None:
            return arp_deadline
        return min(tcp_deadline, arp_deadline)

    # ---------------------------------------------------------- application commands
    def socket(self) -> int:
        return self.tcp.socket()

    def bind(self, qd: int, addr: tuple[str, int]) -> None:
        self.tcp.bind(qd, addr)

    def listen(self, qd: int, backlog: int) -> None:
        self.tcp.listen(qd, backlog)

    def accept(self, qd: int) -> int:
        return self.tcp.accept(qd)

    def connect(self, qd: int, addr: tuple[str, int], now: float) -> int:
        self._now = now
        return self.tcp.connect(qd, addr, now)

    def push(self, qd: int, data: bytes, now: float) -> int:
        self._now = now
        return self.tcp.push(qd, data, now)

    def pop(self, qd: int, size: int | None, now: float) -> int:
        self._now = now
        return self.tcp.pop(qd, size, now)

    def close(self, qd: int, now: float, *, discard_pending: bool = False) -> None:
        self._now = now
        self.tcp.close(qd, now, discard_pending=discard_pending)

    def abort(self, qd: int, now: float) -> None:
        self._now = now
        self.tcp.abort(qd, now)

    def setsockopt(self, qd: int, name: str, value: Any) -> None:
        self.tcp.setsockopt(qd, name, value)

    def getsockopt(self, qd: int, name: str) -> Any:
        return self.tcp.getsockopt(qd, name)

    def getsockname(self, qd: int) -> tuple[str, int]:
        return self.tcp.getsockname(qd)

    def getpeername(self, qd: int) -> tuple[str, int]:
        return self.tcp.getpeername(qd)

    def snapshot(self, qd: int) -> dict[str, dict]:
        return self.tcp.snapshot(qd)

    def connections(self) -> list[dict]:
        return self.tcp.connections()
