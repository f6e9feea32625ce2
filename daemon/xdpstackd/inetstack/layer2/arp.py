"""ARP (RFC 826) for Ethernet/IPv4: the wire format and the neighbour cache.

Why a cache with its own timers: every IPv4 packet we send needs the next hop's MAC. When
the stack owns its address it resolves neighbours itself, as Demikernel's inetstack does;
frames for a neighbour that is not resolved yet wait in a small per-neighbour queue while
requests are retried, and are dropped (and counted) when the neighbour never answers.

Sans-IO: every method takes ``now``; frames to send (ARP requests/replies and queued
frames released by a reply) are appended to ``tx``, a list the owner drains in order, so
released frames keep their place relative to frames sent directly afterwards.

Cache behaviour (RFC 826 "packet reception", with the usual hardening):
- a packet whose sender is already cached updates that entry (this is what makes a
  gratuitous ARP move an existing entry, and a reply refresh it);
- a packet whose target is our address also creates the entry, and a request is answered;
- other packets do not create entries (no cache pollution by third parties);
- senders with a multicast/broadcast MAC, our own MAC, or our own IP are not learned;
- an entry confirmed less than ``ARP_LOCKTIME_S`` ago keeps its MAC when a packet other
  than a gratuitous ARP claims another one (Linux's ``locktime``): of two answers in quick
  succession the first wins, which also stops a damaged duplicate (ARP has no checksum)
  from poisoning the entry.
Entries expire ``arp_cache_ttl_s`` after they were last confirmed. Shortly before that,
using an entry sends one unicast refresh request (like Linux's PROBE state), so a busy
connection does not stall while the entry is re-resolved.

Retries: the first request goes out when a frame needs the neighbour; ``arp_retries``
more follow, one every ``arp_request_timeout_s``; when the last one has gone unanswered
for ``arp_request_timeout_s`` the queued frames are dropped, each counted as
``arp_drop_unresolved``.

Shared-address mode (``neighbour_lookup`` given): the kernel owns ARP, so no ARP packets
are sent; the callable (backed by the kernel's neighbour table) is asked instead, so it
must be cheap (the daemon answers from a table it mirrors from netlink). A ``None``
answer queues the frame and the lookup is retried every
``arp_request_timeout_s / LOOKUP_RETRIES_PER_TIMEOUT`` until the same give-up time.

Per-segment use (``usable_mac``): the stack's established connections keep the MAC of
their next hop and build frames without asking again until the answer's validity ends:
in owned mode until the entry's refresh is due (or it expires, once the refresh is
sent), and ``epoch`` moves whenever an entry's MAC changes or entries are purged, which
invalidates every kept MAC at once; in shared mode for ``NEIGHBOUR_RECHECK_S``, so a
change in the kernel's table reaches a busy connection within that time (plus the
daemon's own mirror refresh) while the lookup leaves the per-segment path.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import NamedTuple

from xdpstackd.inetstack.config import StackConfig
from xdpstackd.inetstack.counters import Counters
from xdpstackd.inetstack.errors import ParseError
from xdpstackd.inetstack.layer2.ethernet import (
    BROADCAST_MAC,
    ETHERTYPE_ARP,
    build_ethernet,
    mac_to_str,
)

ARP_REQUEST = 1
ARP_REPLY = 2
ARP_HTYPE_ETHERNET = 1
ARP_PTYPE_IPV4 = 0x0800
ARP_PACKET_LEN = 28

ZERO_MAC = b"\x00" * 6

# Bounds that keep a flood of ARP traffic (or of SYNs from spoofed on-link sources,
# whose SYN-ACKs need resolution) from growing memory without limit.
MAX_ENTRIES = 4096
MAX_PENDING_NEIGHBOURS = 1024
# Linux's neigh locktime (1 s): a fresh entry's MAC is not replaced within this time.
ARP_LOCKTIME_S = 1.0
# Shared mode: how often per arp_request_timeout_s the kernel's table is asked again.
LOOKUP_RETRIES_PER_TIMEOUT = 10
# Shared mode: how long a connection may keep using a MAC the lookup returned.
NEIGHBOUR_RECHECK_S = 0.05

_HDR = struct.Struct("!HHBBH6sI6sI")


class ArpPacket(NamedTuple):
    """One ARP packet for Ethernet/IPv4; IPs are host-order ints, MACs 6-byte bytes."""

    op: int
    sender_mac: bytes
    sender_ip: int
    target_mac: bytes
    target_ip: int


def parse_arp(data: bytes | bytearray | memoryview) -> ArpPacket:
    """Decode an ARP packet; Ethernet/IPv4 only. Trailing bytes (frame padding) are ignored.

    Raises ``ParseError`` with reason ``truncated``, ``unsupported_hardware``,
    ``unsupported_protocol``, ``bad_address_length`` or ``unknown_op``.
    """
    if len(data) < ARP_PACKET_LEN:
        raise ParseError("truncated", f"{len(data)} bytes, an ARP packet needs 28")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _HDR.unpack_from(data)
    if htype != ARP_HTYPE_ETHERNET:
        raise ParseError("unsupported_hardware", f"hardware type {htype}")
    if ptype != ARP_PTYPE_IPV4:
        raise ParseError("unsupported_protocol", f"protocol type {ptype:#06x}")
    if hlen != 6 or plen != 4:
        raise ParseError("bad_address_length", f"hlen {hlen}, plen {plen}")
    if op != ARP_REQUEST and op != ARP_REPLY:
        raise ParseError("unknown_op", f"op {op}")
    return ArpPacket(op, sha, spa, tha, tpa)


def build_arp(packet: ArpPacket) -> bytes:
    """Serialise ``packet`` (28 bytes, not padded)."""
    return _HDR.pack(
        ARP_HTYPE_ETHERNET,
        ARP_PTYPE_IPV4,
        6,
        4,
        packet.op,
        packet.sender_mac,
        packet.sender_ip,
        packet.target_mac,
        packet.target_ip,
    )


class _Entry:
    __slots__ = ("expires_at", "mac", "refresh_sent", "updated_at")

    def __init__(self, mac: bytes, expires_at: float, updated_at: float) -> None:
        self.mac = mac
        self.expires_at = expires_at
        self.updated_at = updated_at
        self.refresh_sent = False


class _Pending:
    """A neighbour being resolved and the (ethertype, payload) pairs waiting for it."""

    __slots__ = ("deadline", "frames", "give_up_at", "requests_sent")

    def __init__(self, deadline: float, give_up_at: float) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.requests_sent = 0
        self.deadline = deadline
        self.give_up_at = give_up_at


class ArpCache:
    """Neighbour resolution for one interface address (see the module docstring)."""

    def __init__(
        self,
        config: StackConfig,
        *,
        mac: bytes,
        ip: int,
        counters: Counters,
        tx: list[bytes] | None = None,
        neighbour_lookup: Callable[[int], bytes | None] | None = None,
    ) -> None:
        self.mac = bytes(mac)
        self.ip = ip
        self.counters = counters
        self.tx: list[bytes] = tx if tx is not None else []
        self.neighbour_lookup = neighbour_lookup
        self.ttl_s = config.arp_cache_ttl_s
        self.request_timeout_s = config.arp_request_timeout_s
        self.retries = config.arp_retries
        self.pending_max_frames = config.arp_pending_max_frames
        # Give up this long after the first request: the request plus its retries, each
        # given arp_request_timeout_s to be answered.
        self.resolve_budget_s = (1 + max(0, config.arp_retries)) * config.arp_request_timeout_s
        # Refresh an entry in use this long before it expires (one unicast request).
        self.refresh_window_s = min(self.ttl_s / 2, self.resolve_budget_s)
        self._entries: dict[int, _Entry] = {}
        self._pending: dict[int, _Pending] = {}
        self._purge_at = 0.0
        #: moves when a kept MAC may have become wrong (an entry changed its MAC, or
        #: entries were purged): what callers of ``usable_mac`` compare to drop theirs
        self.epoch = 0

    # ------------------------------------------------------------------ lookups
    def lookup(self, ip: int, now: float) -> bytes | None:
        """The MAC of ``ip`` if a live entry exists (never sends anything)."""
        entry = self._entries.get(ip)
        if entry is None or now >= entry.expires_at:
            return None
        return entry.mac

    def insert(self, ip: int, mac: bytes, now: float) -> None:
        """Add or confirm an entry (as a reply would) and release frames waiting for it."""
        self._learn(ip, bytes(mac), now)

    def entries(self, now: float) -> dict[int, bytes]:
        """Live entries, for inspection (CLI, tests)."""
        return {ip: e.mac for ip, e in self._entries.items() if now < e.expires_at}

    def pending(self) -> dict[int, int]:
        """Neighbours being resolved and how many frames wait for each."""
        return {ip: len(p.frames) for ip, p in self._pending.items()}

    # ------------------------------------------------------------------ sending
    def usable_mac(self, next_hop_ip: int, now: float) -> tuple[bytes, float] | None:
        """The MAC to send to now, and until when it may be used without asking again
        (unless ``epoch`` moves); None when a frame has to go through ``send`` (queued
        while the neighbour resolves). Like ``send``, it sends an entry's refresh
        request when that is due."""
        lookup = self.neighbour_lookup
        if lookup is not None:
            if next_hop_ip in self._pending:
                return None  # frames already wait: the next ones queue behind them
            mac = lookup(next_hop_ip)
            if mac is None:
                return None
            return mac, now + NEIGHBOUR_RECHECK_S
        entry = self._entries.get(next_hop_ip)
        if entry is None or now >= entry.expires_at:
            return None
        if not entry.refresh_sent:
            refresh_at = entry.expires_at - self.refresh_window_s
            if now < refresh_at:
                return entry.mac, refresh_at
            entry.refresh_sent = True
            self._send_request(next_hop_ip, entry.mac)
        return entry.mac, entry.expires_at

    def send(self, next_hop_ip: int, ethertype: int, payload: bytes, now: float) -> None:
        """Frame ``payload`` for ``next_hop_ip`` into ``tx``, or queue it until resolved."""
        usable = self.usable_mac(next_hop_ip, now)
        if usable is not None:
            self.tx.append(build_ethernet(usable[0], self.mac, ethertype, payload))
            return
        pending = self._pending.get(next_hop_ip)
        if pending is None:
            if len(self._pending) >= MAX_PENDING_NEIGHBOURS:
                self.counters["arp_drop_too_many_pending"] += 1
                return
            pending = self._start_resolution(next_hop_ip, now)
        if len(pending.frames) >= self.pending_max_frames:
            self.counters["arp_drop_pending_overflow"] += 1
            return
        pending.frames.append((ethertype, payload))

    def _start_resolution(self, ip: int, now: float) -> _Pending:
        if self.neighbour_lookup is not None:
            interval_s = self.request_timeout_s / LOOKUP_RETRIES_PER_TIMEOUT
            pending = _Pending(now + interval_s, now + self.resolve_budget_s)
        else:
            pending = _Pending(now + self.request_timeout_s, now + self.resolve_budget_s)
            self._send_request(ip, None)
            pending.requests_sent = 1
        self._pending[ip] = pending
        return pending

    def _send_request(self, target_ip: int, known_mac: bytes | None) -> None:
        """Broadcast a request, or unicast it to ``known_mac`` (a refresh)."""
        packet = ArpPacket(ARP_REQUEST, self.mac, self.ip, ZERO_MAC, target_ip)
        dst = known_mac if known_mac is not None else BROADCAST_MAC
        self.tx.append(build_ethernet(dst, self.mac, ETHERTYPE_ARP, build_arp(packet)))
        self.counters["arp_requests_out"] += 1

    def _release(self, ip: int, mac: bytes) -> None:
        pending = self._pending.pop(ip, None)
        if pending is None:
            return
        for ethertype, payload in pending.frames:
            self.tx.append(build_ethernet(mac, self.mac, ethertype, payload))
        self.counters["arp_frames_released"] += len(pending.frames)

    # ---------------------------------------------------------------- receiving
    def receive(self, packet: ArpPacket, now: float) -> None:
        """Process one received ARP packet (RFC 826 reception algorithm, see module doc)."""
        counters = self.counters
        counters["arp_packets_in"] += 1
        sender_ip = packet.sender_ip
        sender_mac = packet.sender_mac
        for_us = packet.target_ip == self.ip
        if sender_ip == 0:
            # An RFC 5227 probe: someone checks whether an address is free. Answer for
            # ours (defend it), learn nothing.
            if for_us and packet.op == ARP_REQUEST:
                self._send_reply(sender_mac, 0)
            else:
                counters["arp_ignored_probe"] += 1
            return
        if sender_mac[0] & 1 or sender_mac == self.mac:
            counters["arp_drop_bad_sender_mac"] += 1
            return
        if sender_ip == self.ip:
            counters["arp_drop_address_conflict"] += 1
            return
        entry = self._entries.get(sender_ip)
        if entry is not None:
            if entry.mac != sender_mac:
                gratuitous = sender_ip == packet.target_ip
                locked = now < entry.expires_at and now - entry.updated_at < ARP_LOCKTIME_S
                if locked and not gratuitous:
                    counters["arp_ignored_locktime"] += 1
                    return
                counters["arp_entries_updated"] += 1
            self._learn(sender_ip, sender_mac, now)
        elif for_us:
            self._learn(sender_ip, sender_mac, now)
        if not for_us:
            counters["arp_ignored_not_for_us"] += 1
            return
        if packet.op == ARP_REQUEST:
            self._send_reply(sender_mac, sender_ip)
        else:
            counters["arp_replies_in"] += 1

    def _send_reply(self, to_mac: bytes, to_ip: int) -> None:
        reply = ArpPacket(ARP_REPLY, self.mac, self.ip, to_mac, to_ip)
        self.tx.append(build_ethernet(to_mac, self.mac, ETHERTYPE_ARP, build_arp(reply)))
        self.counters["arp_replies_out"] += 1

    def _learn(self, ip: int, mac: bytes, now: float) -> None:
        entry = self._entries.get(ip)
        if entry is None:
            if len(self._entries) >= MAX_ENTRIES:
                self._purge(now)
                if len(self._entries) >= MAX_ENTRIES:
                    self.counters["arp_drop_cache_full"] += 1
                    return
            self._entries[ip] = _Entry(mac, now + self.ttl_s, now)
        else:
            if entry.mac != mac:
                self.epoch += 1
            entry.mac = mac
            entry.updated_at = now
            entry.expires_at = now + self.ttl_s
            entry.refresh_sent = False
        self._release(ip, mac)

    # ------------------------------------------------------------------- timers
    def next_deadline(self) -> float | None:
        """The earliest retry or give-up time; None when nothing is being resolved.

        Entry expiry needs no timer: expired entries are ignored on lookup and purged
        during ``handle_timers``.
        """
        if not self._pending:
            return None
        return min(p.deadline for p in self._pending.values())

    def handle_timers(self, now: float) -> None:
        """Retry requests (or kernel lookups) that are due; give up on the hopeless."""
        if now >= self._purge_at:
            self._purge(now)
        if not self._pending:
            return
        due = [ip for ip, p in self._pending.items() if now >= p.deadline]
        lookup = self.neighbour_lookup
        for ip in due:
            pending = self._pending[ip]
            if lookup is not None:
                mac = lookup(ip)
                if mac is not None:
                    self._release(ip, mac)
                    continue
            if now >= pending.give_up_at:
                del self._pending[ip]
                self.counters["arp_drop_unresolved"] += len(pending.frames)
                self.counters["arp_resolution_failures"] += 1
                continue
            if lookup is not None:
                pending.deadline = min(
                    now + self.request_timeout_s / LOOKUP_RETRIES_PER_TIMEOUT, pending.give_up_at
                )
            else:
                self._send_request(ip, None)
                pending.requests_sent += 1
                self.counters["arp_request_retries"] += 1
                pending.deadline = min(now + self.request_timeout_s, pending.give_up_at)

    def _purge(self, now: float) -> None:
        expired = [ip for ip, e in self._entries.items() if now >= e.expires_at]
        for ip in expired:
            del self._entries[ip]
        if expired:
            self.epoch += 1
        self._purge_at = now + self.ttl_s

    def __repr__(self) -> str:
        return (
            f"ArpCache({mac_to_str(self.mac)}, {len(self._entries)} entries, "
            f"{len(self._pending)} pending)"
        )
