"""``xdpstackctl``: inspect and manage a running ``xdpstackd``.

::

    xdpstackctl [--socket PATH] [--json] COMMAND
      status                      daemon, interface, address, queues, XDP, clients
      connections | ss            one line per connection, like ss -tni
      show ID                     every field of one connection's four components
      stats                       stack counters by layer, drops, datapath, XDP, API
      steering                    the (address, port) pairs steered to the daemon
      capture -w FILE [--count N] [--filter PORT]
                                  frames received and sent, to a classic pcap file
      abort ID                    reset a connection (RST), whoever owns it

``--json`` (before or after the command) prints machine-readable output with stable
keys (see :mod:`xdpstack.ctl_render`). Operator errors (no daemon, unknown connection,
unwritable file) print one line on stderr and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

from xdpstack import DEFAULT_SOCKET_PATH, __version__, default_socket_path
from xdpstack import ctl_render as R
from xdpstack.ctl_client import DEFAULT_TIMEOUT_S, ControlClient, DaemonError, Unreachable
from xdpstack.protocol import Op, ProtocolError

PROG = "xdpstackctl"


class CtlError(Exception):
    """An operator error: printed as one line, exit 1."""


class _StdoutClosed(Exception):
    """Our reader went away (``xdpstackctl ss | head``)."""


def build_parser() -> argparse.ArgumentParser:
    # --json and --socket are accepted before or after the subcommand. The copies on the
    # subcommands default to SUPPRESS so they do not overwrite a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help="daemon socket")

    parser = argparse.ArgumentParser(
        prog=PROG, description="Inspect and manage a running xdpstackd."
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=None,
        help=f"daemon socket (default: $XDPSTACK_SOCKET or {DEFAULT_SOCKET_PATH})",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help=f"how long to wait for the daemon's answers (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")

    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("status", parents=[common], help="daemon, interface, queues and clients")
    sub.add_parser(
        "connections", aliases=["ss"], parents=[common], help="list connections, like ss -tni"
    )
    show = sub.add_parser(
        "show", parents=[common], help="every field of one connection's control block"
    )
    show.add_argument("id", metavar="ID", help="connection id (from `connections`)")
    sub.add_parser("stats", parents=[common], help="stack, datapath, XDP and API counters")
    sub.add_parser("steering", parents=[common], help="the (address, port) pairs steered to us")
    capture = sub.add_parser(
        "capture", parents=[common], help="capture received and sent frames to a pcap file"
    )
    capture.add_argument(
        "-w", dest="file", metavar="FILE.pcap", required=True, help="pcap file ('-': stdout)"
    )
    capture.add_argument(
        "-c", "--count", type=int, metavar="N", default=None, help="stop after N frames"
    )
    capture.add_argument(
        "--filter",
        type=int,
        metavar="PORT",
        default=None,
        help="only TCP frames with this source or destination port",
    )
    capture.add_argument(
        "-s", "--snaplen", type=int, metavar="BYTES", default=None, help="bytes kept per frame"
    )
    abort = sub.add_parser("abort", parents=[common], help="reset a connection (send RST)")
    abort.add_argument("id", metavar="ID", help="connection id (from `connections`)")
    return parser


# =====================================================================================
# commands
# =====================================================================================
def _conn_id(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise CtlError(
            f"a connection ID is a number (see `{PROG} connections`), not {text!r}"
        ) from None
    if value < 0:
        raise CtlError(f"a connection ID is not negative: {value}")
    return value


def _emit(args: argparse.Namespace, view: Any, text: Callable[[Any], str]) -> None:
    out = json.dumps(view, indent=2) if args.json else text(view)
    try:
        print(out, flush=True)
    except BrokenPipeError:
        raise _StdoutClosed from None


def cmd_status(args: argparse.Namespace, client: ControlClient) -> int:
    status = client.request(Op.STATUS)
    if args.json:
        status = dict(status, this_client=client.client_id)
    _emit(args, status, lambda s: R.render_status(s, me=client.client_id))
    return 0


def cmd_connections(args: argparse.Namespace, client: ControlClient) -> int:
    _emit(args, R.connections_view(client.request(Op.CONNECTIONS)), R.render_connections)
    return 0


def _request_for_connection(client: ControlClient, op: Op, conn_id: int) -> Any:
    """A control request about one connection; an unknown id is an operator error."""
    try:
        return client.request(op, {"id": conn_id})
    except DaemonError as exc:
        if exc.errno == errno.ENOENT:
            raise CtlError(f"no connection {conn_id} (see `{PROG} connections`)") from None
        raise


def cmd_show(args: argparse.Namespace, client: ControlClient) -> int:
    conn_id = _conn_id(args.id)
    conn = _request_for_connection(client, Op.SHOW, conn_id)
    _emit(args, R.show_view(conn), R.render_show)
    return 0


def cmd_stats(args: argparse.Namespace, client: ControlClient) -> int:
    _emit(args, R.stats_view(client.request(Op.STATS)), R.render_stats)
    return 0


def cmd_steering(args: argparse.Namespace, client: ControlClient) -> int:
    _emit(args, client.request(Op.STEERING), R.render_steering)
    return 0


def cmd_abort(args: argparse.Namespace, client: ControlClient) -> int:
    conn_id = _conn_id(args.id)
    result = _request_for_connection(client, Op.ABORT_CONN, conn_id)

    def text(r: dict[str, Any]) -> str:
        line = f"connection {conn_id} aborted"
        if r.get("local") is not None:
            line += f" ({R.fmt_addr(r.get('local'))} -> {R.fmt_addr(r.get('remote'))}"
            line += f", was {r.get('state')})"
        owner = r.get("owner")
        if owner:
            line += f"; its owner (pid {owner.get('pid')}) sees ECONNABORTED"
        return line + "; RST sent"

    _emit(args, result, text)
    return 0


def cmd_capture(args: argparse.Namespace, client: ControlClient) -> int:
    from xdpstack.ctl_capture import run_capture

    if args.count is not None and args.count <= 0:
        raise CtlError("--count must be a positive number of frames")
    if args.filter is not None and not 0 <= args.filter <= 0xFFFF:
        raise CtlError("--filter takes a TCP port, 0-65535")
    if args.snaplen is not None and not 64 <= args.snaplen <= 65535:
        raise CtlError("--snaplen must be 64-65535")
    to_stdout = args.file == "-"
    opened: list[BinaryIO] = []

    class LazyFile:
        """Opened once the daemon has accepted the capture (no empty file on an error)."""

        def _f(self) -> BinaryIO:
            if not opened:
                if to_stdout:
                    opened.append(sys.stdout.buffer)
                else:
                    try:
                        opened.append(open(args.file, "wb"))  # noqa: SIM115
                    except OSError as exc:
                        raise CtlError(f"cannot write {args.file}: {exc.strerror or exc}") from None
            return opened[0]

        def write(self, data: bytes | memoryview) -> int:
            return self._f().write(data)

        def flush(self) -> None:
            self._f().flush()

    def started(info: dict[str, Any]) -> None:
        if args.json or to_stdout:
            return
        what = [f"TCP port {info['port']}"] if info.get("port") is not None else []
        if info.get("count"):
            what.append(f"{info['count']} frames")
        detail = f" ({', '.join(what)})" if what else ""
        print(f"{PROG}: capturing to {args.file}{detail}; Ctrl-C to stop", file=sys.stderr)

    with _stop_on_signals() as stopping:
        try:
            summary = run_capture(
                client,
                LazyFile(),  # type: ignore[arg-type]
                count=args.count,
                port=args.filter,
                snaplen=args.snaplen,
                should_stop=stopping.is_set,
                on_start=started,
            )
        finally:
            for f in opened:
                if f is not sys.stdout.buffer:
                    f.close()
    summary = {"file": args.file, **summary}
    # the file is good either way; a daemon that went away mid-capture is still a failure
    rc = 1 if summary["reason"] == "daemon closed the connection" else 0
    if to_stdout:
        if not args.json:
            print(_capture_line(summary), file=sys.stderr)
        return rc
    _emit(args, summary, _capture_line)
    return rc


def _capture_line(s: dict[str, Any]) -> str:
    line = f"{s['frames']} frames captured to {s['file']} ({s['bytes']} bytes)"
    if s.get("dropped"):
        line += f", {s['dropped']} dropped by the daemon (the reader was too slow)"
    reason = s.get("reason")
    if reason and reason not in ("count", "stopped"):
        line += f"; ended: {reason}"
    return line


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM while the block runs (main thread only; elsewhere
    the signals keep their handlers)."""
    stopping = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, lambda signum, frame: stopping.set())
    try:
        yield stopping
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


COMMANDS: dict[str, Callable[[argparse.Namespace, ControlClient], int]] = {
    "status": cmd_status,
    "connections": cmd_connections,
    "ss": cmd_connections,
    "show": cmd_show,
    "stats": cmd_stats,
    "steering": cmd_steering,
    "capture": cmd_capture,
    "abort": cmd_abort,
}


# =====================================================================================
# main
# =====================================================================================
def _fail(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = args.socket or default_socket_path()
    client = ControlClient(path, timeout=max(0.1, args.timeout))
    try:
        with client:
            return COMMANDS[args.command](args, client)
    except Unreachable as exc:
        return _fail(str(exc))
    except CtlError as exc:
        return _fail(str(exc))
    except DaemonError as exc:
        if exc.errno == errno.ENOSYS:
            return _fail(f"this xdpstackd does not support `{args.command}` ({exc.message})")
        return _fail(f"xdpstackd: {exc.message} ({errno.errorcode.get(exc.errno, exc.errno)})")
    except TimeoutError:
        return _fail(f"xdpstackd at {path} did not answer within {args.timeout:g} s")
    except ConnectionError as exc:
        return _fail(f"lost xdpstackd at {path}: {exc.strerror or exc}")
    except ProtocolError as exc:
        return _fail(f"bad data from xdpstackd at {path}: {exc}")
    except _StdoutClosed:
        # not an error worth a traceback; keep the interpreter's final flush quiet
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
