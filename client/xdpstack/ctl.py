"""``xdpstackctl``: inspect and manage a running ``xdpstackd``.

Subcommands: ``status``, ``connections`` (alias ``ss``), ``show ID``, ``stats``,
``steering``, ``capture -w FILE.pcap`` and ``abort ID``, each with ``--json``.

The daemon and its protocol are not part of this release. The command connects to the
daemon's Unix socket; when that fails (as it does while no daemon exists) it prints one
line naming the socket path and exits 1. Should it connect, it says the protocol is not
implemented and exits 1.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

from xdpstack import DEFAULT_SOCKET_PATH, __version__, default_socket_path

CONNECT_TIMEOUT_S = 5.0


def build_parser() -> argparse.ArgumentParser:
    # --json and --socket are accepted before or after the subcommand. The copies on the
    # subcommands default to SUPPRESS so they do not overwrite a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help="daemon socket")

    parser = argparse.ArgumentParser(
        prog="xdpstackctl", description="Inspect and manage a running xdpstackd."
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=None,
        help=f"daemon socket (default: $XDPSTACK_SOCKET or {DEFAULT_SOCKET_PATH})",
    )
    parser.add_argument("--version", action="version", version=f"xdpstackctl {__version__}")

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("status", parents=[common], help="daemon, interface and queue status")
    sub.add_parser(
        "connections", aliases=["ss"], parents=[common], help="list connections, like ss"
    )
    show = sub.add_parser(
        "show", parents=[common], help="every field of one connection's control block"
    )
    show.add_argument("id", metavar="ID", help="connection id (from `connections`)")
    sub.add_parser("stats", parents=[common], help="stack and datapath counters")
    sub.add_parser("steering", parents=[common], help="XDP steering map and counters")
    capture = sub.add_parser("capture", parents=[common], help="capture frames to a pcap file")
    capture.add_argument("-w", dest="file", metavar="FILE.pcap", required=True)
    abort = sub.add_parser("abort", parents=[common], help="abort a connection (send RST)")
    abort.add_argument("id", metavar="ID", help="connection id (from `connections`)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = args.socket or default_socket_path()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(path)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        print(f"xdpstackctl: cannot reach xdpstackd at {path}: {reason}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    print("xdpstackctl: the daemon protocol is not implemented in this release", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
