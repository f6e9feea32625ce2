"""Frame builders and a stack factory shared by the tests in tests/stack."""

from __future__ import annotations

from collections.abc import Callable

from xdpstackd.inetstack.config import StackConfig
from xdpstackd.inetstack.layer2.ethernet import ETHERTYPE_IPV4, build_ethernet
from xdpstackd.inetstack.layer3.ipv4 import build_ipv4, ip_from_str
from xdpstackd.inetstack.stack import InetStack

OUR_MAC = bytes.fromhex("020000000001")
OUR_IP_STR = "10.0.0.1"
OUR_IP = ip_from_str(OUR_IP_STR)
PEER_MAC = bytes.fromhex("020000000002")
PEER_IP_STR = "10.0.0.2"
PEER_IP = ip_from_str(PEER_IP_STR)
GATEWAY_IP_STR = "10.0.0.254"
GATEWAY_IP = ip_from_str(GATEWAY_IP_STR)
GATEWAY_MAC = bytes.fromhex("0200000000fe")


def make_stack(
    *,
    owned_address: bool = True,
    neighbour_lookup: Callable[[int], bytes | None] | None = None,
    gateway: str | None = None,
    config: StackConfig | None = None,
) -> InetStack:
    stack = InetStack(
        config if config is not None else StackConfig(),
        mac=OUR_MAC,
        ip=OUR_IP_STR,
        prefix_len=24,
        gateway=gateway,
        owned_address=owned_address,
        neighbour_lookup=neighbour_lookup,
        isn_secret=b"k" * 16,
        seed=1,
    )
    stack.raise_internal_errors = True  # a bug below must fail the test, not be counted
    return stack


def ipv4_frame(
    payload: bytes,
    protocol: int,
    *,
    src: int = PEER_IP,
    dst: int = OUR_IP,
    dst_mac: bytes = OUR_MAC,
    src_mac: bytes = PEER_MAC,
) -> bytes:
    return build_ethernet(dst_mac, src_mac, ETHERTYPE_IPV4, build_ipv4(src, dst, protocol, payload))


def nonzero(counters: dict[str, int], prefix: str = "") -> dict[str, int]:
    """The counters that moved, optionally only those starting with ``prefix``."""
    return {k: v for k, v in counters.items() if v and k.startswith(prefix)}
