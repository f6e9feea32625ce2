"""Command line of ``xdpstackd``, the xdpstack daemon.

The options are those of the daemon (SPEC section 6). The AF_XDP datapath and the
daemon itself are not part of this release: after parsing, :func:`main` says so on
stderr and exits with status 2. ``make demo`` runs the sans-IO stack on a simulated
network instead.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence

from xdpstackd import __version__

DEFAULT_SOCKET_PATH = "/run/xdpstack/xdpstackd.sock"
DEFAULT_CONFIG_PATH = "/etc/xdpstack/xdpstackd.toml"

NOT_IN_RELEASE = (
    "xdpstackd: the AF_XDP datapath and daemon are not part of this release; "
    "run `make demo` for the simulated-network demo of the TCP/IP stack"
)


def _ipv4_interface(text: str) -> ipaddress.IPv4Interface:
    """Parse ``A/N`` (an IPv4 address with its prefix length)."""
    if "/" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not ADDRESS/PREFIX, e.g. 10.0.0.1/24")
    try:
        return ipaddress.IPv4Interface(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdpstackd",
        description="Userspace TCP/IP stack daemon: XDP steering, AF_XDP datapath.",
    )
    parser.add_argument(
        "--interface", metavar="IF", help="network interface to attach the XDP program to"
    )
    parser.add_argument(
        "--address",
        metavar="A/N",
        type=_ipv4_interface,
        help="own this IPv4 address (answer ARP and ICMP echo for it); "
        "default: share the interface's kernel address",
    )
    parser.add_argument(
        "--queues", metavar="N", type=_positive_int, default=1, help="rx/tx queues (default: 1)"
    )
    parser.add_argument(
        "--xdp-mode",
        choices=("native", "generic"),
        default="native",
        help="XDP attach mode (default: native)",
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=DEFAULT_SOCKET_PATH,
        help=f"Unix socket for clients (default: {DEFAULT_SOCKET_PATH})",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration file (e.g. {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--sandbox",
        action="store_true",
        help="run in a network namespace and veth pair of its own, removed on exit",
    )
    parser.add_argument("--version", action="version", version=f"xdpstackd {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print(NOT_IN_RELEASE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
