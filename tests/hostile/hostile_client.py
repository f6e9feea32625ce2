"""A greedy client process for the hostile API tests: it takes what the daemon lets it.

``hog``: a listener, ``--sockets`` more descriptors, a connection to ``--host:--port``
(a peer that does not read), then 1 MiB pushes without waiting until the daemon refuses
one (ENOBUFS, the per-client limit); prints ``{"event": "holding", ...}`` and waits to be
killed (SIGKILL, by PID). Any failure: ``{"event": "error", ...}``, exit 1.

Run with the repository's Python (it imports ``xdpstack``).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import traceback

import xdpstack


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def hog(args: argparse.Namespace) -> None:
    lib = xdpstack.connect(args.socket)
    listener = lib.socket()
    lib.bind(listener, (args.bind, args.listen_port))
    lib.listen(listener, 8)
    extra = [lib.socket() for _ in range(args.sockets)]
    qd = lib.socket()
    lib.wait(lib.connect(qd, (args.host, args.port)), timeout=20)
    block = os.urandom(1 << 20)
    pushed = 0
    tokens = []
    while pushed < args.max_bytes:
        try:
            tokens.append(lib.push(qd, block))
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            break
        pushed += len(block)
    emit(
        {
            "event": "holding",
            "pid": os.getpid(),
            "client_id": lib.client_id,
            "descriptors": 2 + len(extra),
            "pushed": pushed,
            "local": list(lib.getsockname(qd)),
        }
    )
    sys.stdin.readline()  # until killed


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["hog"])
    p.add_argument("--socket", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--listen-port", type=int, default=0)
    p.add_argument("--sockets", type=int, default=0)
    p.add_argument("--max-bytes", type=int, default=1 << 30)
    args = p.parse_args()
    try:
        hog(args)
    except BaseException as exc:
        emit({"event": "error", "error": repr(exc), "trace": traceback.format_exc()})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
