"""Command line of ``xdpstackd``, the xdpstack daemon.

The options are those of the daemon (SPEC section 6); they override the TOML file's
values. A configuration error exits 2 naming the key; a start-up failure exits 1 with
one line saying what to do.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from xdpstackd import __version__
from xdpstackd.datapath.impair import Impairments, parse_spec
from xdpstackd.settings import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_SOCKET_PATH,
    LOG_LEVELS,
    ConfigError,
    Settings,
    load_file,
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


def _impair_spec(text: str) -> tuple[tuple[str, ...], dict[str, float]]:
    """``[rx:|tx:]KEY=VALUE,...`` (see :func:`xdpstackd.datapath.impair.parse_spec`)."""
    try:
        directions, values = parse_spec(text)
        Impairments(**values)  # ranges checked here, so the error names the option
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return directions, values


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
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
        "--queues", metavar="N", type=_positive_int, help="rx/tx queues (default: 1)"
    )
    parser.add_argument(
        "--xdp-mode",
        choices=("native", "generic"),
        help="XDP attach mode (default: native)",
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
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
    parser.add_argument("--log-level", choices=LOG_LEVELS, help="default: info")
    parser.add_argument(
        "--impair",
        metavar="[rx:|tx:]K=V,...",
        type=_impair_spec,
        action="append",
        help="fault injection in the datapath (repeatable; without rx:/tx: both directions): "
        "loss, reorder, reorder_delay, duplicate, corrupt (probabilities), delay, jitter "
        "(seconds); e.g. --impair loss=0.02,reorder=0.02 --impair rx:corrupt=0.01",
    )
    parser.add_argument(
        "--impair-seed",
        metavar="N",
        type=_non_negative_int,
        help="seed of the impairment stage's random decisions (default: 0)",
    )
    parser.add_argument("--version", action="version", version=f"xdpstackd {__version__}")
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Defaults, then the config file, then the command line (which wins)."""
    path = args.config
    if path is None and Path(DEFAULT_CONFIG_PATH).exists() and not args.sandbox:
        path = DEFAULT_CONFIG_PATH
    settings = load_file(path) if path else Settings()
    if args.interface is not None:
        settings.interface = args.interface
    if args.address is not None:
        settings.address = str(args.address)
    if args.queues is not None:
        settings.queues = args.queues
    if args.xdp_mode is not None:
        settings.xdp_mode = args.xdp_mode
    if args.socket is not None:
        settings.socket = args.socket
    if args.log_level is not None:
        settings.log_level = args.log_level
    settings.sandbox = args.sandbox
    impair = settings.impair
    for directions, values in getattr(args, "impair", None) or ():
        for direction in directions:
            setattr(impair, direction, dataclasses.replace(getattr(impair, direction), **values))
    if getattr(args, "impair_seed", None) is not None:
        impair.seed = args.impair_seed
    settings.validate()
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"xdpstackd: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s xdpstackd[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pyroute2").setLevel(logging.WARNING)  # its debug is per message
    from xdpstackd.daemon import DaemonError, run

    try:
        return run(settings)
    except DaemonError as exc:
        print(f"xdpstackd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
