"""SYN cookies (RFC 4987 3.6; Linux ``cookie_v4_init_sequence`` / ``cookie_v4_check``).

When a listener's SYN backlog is full, its SYN-ACK carries a cookie as ISN and nothing is
kept; the ACK that comes back proves the handshake by returning cookie + 1. The cookie
format and the MAC are defined once, in ``syncookie.h``, which the XDP program compiles too
(it answers SYNs over its rate with cookies the core must accept): the C function comes
from the cffi module ``xdpstackd.inetstack._checksum``, with a pure-Python twin below
(the tests check they agree).

Only the MSS survives in a cookie (3 bits, ``MSS_TABLE``). Window scale would need the
timestamps option, which this stack declines, so a cookie connection runs unscaled: a
64 KiB window at most, as Linux without timestamps.
"""

from __future__ import annotations

import os
import struct

#: ``XDPS_SYNCOOKIE_MSS_*`` in ``syncookie.h``, by index.
MSS_TABLE: tuple[int, ...] = (48, 536, 1220, 1300, 1360, 1452, 1460, 8960)
#: Cookie counter period: CLOCK_MONOTONIC ns >> 36, ~68.7 s. A cookie verifies during the
#: period it was made in and the next one.
PERIOD_SHIFT = 36
KEY_BYTES = 16

_M64 = (1 << 64) - 1
_LE3 = struct.Struct("<QQQ")


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def siphash24(key: bytes, data: bytes) -> int:
    """SipHash-2-4 (Aumasson and Bernstein, 2012) of ``data``: the 64-bit result."""
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:16], "little")
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _M64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _M64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _M64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _M64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    full = len(data) - len(data) % 8
    for i in range(0, full, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        rounds(2)
        v0 ^= m
    m = ((len(data) & 0xFF) << 56) | int.from_bytes(data[full:], "little")
    v3 ^= m
    rounds(2)
    v0 ^= m
    v2 ^= 0xFF
    rounds(4)
    return v0 ^ v1 ^ v2 ^ v3


def _py_mss_index(mss: int) -> int:
    for index in range(len(MSS_TABLE) - 1, 0, -1):
        if mss >= MSS_TABLE[index]:
            return index
    return 0


def _py_cookie(
    key: bytes,
    saddr: int,
    daddr: int,
    sport: int,
    dport: int,
    peer_isn: int,
    t: int,
    mss_index: int,
) -> int:
    message = _LE3.pack(
        (saddr << 32) | daddr,
        (sport << 48) | (dport << 32) | peer_isn,
        ((mss_index & 7) << 32) | t,
    )
    mac = siphash24(key, message)
    return ((t & 31) << 27) | ((mss_index & 7) << 24) | (mac & 0xFFFFFF)


try:  # syncookie.h compiled into the cffi checksum module
    from xdpstackd.inetstack._checksum import lib as _lib

    _c_cookie = _lib.xdps_syncookie
    _c_mss_index = _lib.xdps_syncookie_mss_index
except (ImportError, AttributeError):  # not built (or built before syncookie.h)
    _c_cookie = None
    _c_mss_index = None


def counter(now: float) -> int:
    """The 32-bit cookie counter for clock value ``now`` (seconds of CLOCK_MONOTONIC)."""
    return (int(now * 1e9) >> PERIOD_SHIFT) & 0xFFFFFFFF


class SynCookies:
    """Makes and checks cookies with one 16-byte key (random unless given)."""

    __slots__ = ("_k0", "_k1", "_key", "external")

    def __init__(self, key: bytes | None = None) -> None:
        self._key = b""
        self._k0 = self._k1 = 0
        #: Cookies are checked in ACKs only within two periods of the listener's last cookie
        #: (Linux: ``tcp_synq_no_recent_overflow``), unless someone else sends cookies with
        #: this key (the XDP program): then every stray ACK is checked.
        self.external = False
        self.key = key if key is not None else os.urandom(KEY_BYTES)

    @property
    def key(self) -> bytes:
        return self._key

    @key.setter
    def key(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"SYN cookie key must be {KEY_BYTES} bytes")
        self._key = bytes(key)
        self._k0 = int.from_bytes(key[:8], "little")
        self._k1 = int.from_bytes(key[8:], "little")

    @property
    def key_words(self) -> tuple[int, int]:
        """The key as SipHash's two little-endian 64-bit words (what the XDP map holds)."""
        return self._k0, self._k1

    def make(
        self, saddr: int, daddr: int, sport: int, dport: int, peer_isn: int, mss: int, now: float
    ) -> int:
        """The cookie ISN answering a SYN from ``saddr:sport`` (client) to ``daddr:dport``
        that announced ``mss`` (536 if none)."""
        t = counter(now)
        if _c_cookie is not None:
            index = _c_mss_index(mss)
            return _c_cookie(self._k0, self._k1, saddr, daddr, sport, dport, peer_isn, t, index)
        return _py_cookie(self._key, saddr, daddr, sport, dport, peer_isn, t, _py_mss_index(mss))

    def check(
        self, saddr: int, daddr: int, sport: int, dport: int, peer_isn: int, cookie: int, now: float
    ) -> int | None:
        """The MSS a valid ``cookie`` (our ISN, SEG.ACK - 1) encodes, or None. Valid: made
        for this 4-tuple and ``peer_isn`` (SEG.SEQ - 1) in this period or the one before."""
        index = (cookie >> 24) & 7
        t_bits = cookie >> 27
        now_t = counter(now)
        for t in (now_t, (now_t - 1) & 0xFFFFFFFF):
            if t & 31 != t_bits:
                continue
            if _c_cookie is not None:
                expected = _c_cookie(
                    self._k0, self._k1, saddr, daddr, sport, dport, peer_isn, t, index
                )
            else:
                expected = _py_cookie(self._key, saddr, daddr, sport, dport, peer_isn, t, index)
            if expected == cookie:
                return MSS_TABLE[index]
        return None
