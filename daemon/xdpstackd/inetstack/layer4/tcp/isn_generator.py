"""Initial sequence numbers per RFC 6528: ISN = M + F(4-tuple, secretkey).

M is a 4-microsecond timer taken from the caller's ``now`` (the stack never reads a
clock); F is a keyed hash (BLAKE2s keyed with a secret drawn per stack instance), so
an off-path attacker cannot predict the ISN of a connection it does not see.

It also holds the SYN cookie maker (``cookies``): a cookie is an ISN too, keyed with a
second secret derived from the first (settable, so that the XDP program can share it).
"""

from __future__ import annotations

import hashlib
import os
import struct

from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber
from xdpstackd.inetstack.layer4.tcp.syncookie import KEY_BYTES, SynCookies

_TUPLE = struct.Struct("!IHIH")


class IsnGenerator:
    __slots__ = ("_key", "cookies")

    def __init__(self, secret: bytes | None = None) -> None:
        self._key = secret if secret is not None else os.urandom(32)
        if not 1 <= len(self._key) <= 32:
            raise ValueError("ISN secret must be 1..32 bytes")
        self.cookies = SynCookies(
            hashlib.blake2s(b"syncookie", key=self._key, digest_size=KEY_BYTES).digest()
        )

    def generate(
        self, local_ip: int, local_port: int, remote_ip: int, remote_port: int, now: float
    ) -> SeqNumber:
        digest = hashlib.blake2s(
            _TUPLE.pack(local_ip, local_port, remote_ip, remote_port),
            key=self._key,
            digest_size=4,
        ).digest()
        timer_4us = int(now * 250_000)
        return SeqNumber(int.from_bytes(digest, "big") + timer_4us)
