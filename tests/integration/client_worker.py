"""A client process for the integration tests: the ``xdpstack`` library in a process of its
own, driven by the test over stdin/stdout (one JSON object a line each way).

``probe`` (two such processes at once)::

    -> {"event": "ready", "qd": QD, "local": [ip, port], "client_id": N}
    <- {"other_qd": QD2}                 the other process's descriptor
    -> {"event": "probed", "results": {"getsockname": "EBADF", ...}}
    <- {"go": true}
    -> {"event": "done", "echo_ok": true} and exit 0

``stream``: connect to a sink, listen on ``--listen-port``, push data without end;
``{"event": "streaming", ...}`` once ``--report-after`` bytes are in the send buffer; runs
until killed.

Any failure: ``{"event": "error", "error": "..."}`` and exit 1.
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


def errno_name(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return f"{type(exc).__name__}: {exc}"


def echo(lib: xdpstack.Lib, qd: int, data: bytes) -> bytes:
    lib.wait(lib.push(qd, data), timeout=20)
    got = b""
    while len(got) < len(data):
        chunk = lib.wait(lib.pop(qd), timeout=20).data
        if not chunk:
            raise EOFError(f"EOF after {len(got)} bytes")
        got += chunk
    return got


def probe(args: argparse.Namespace) -> None:
    lib = xdpstack.connect(args.socket)
    qd = lib.socket()
    lib.wait(lib.connect(qd, (args.host, args.port)), timeout=20)
    mine = f"process {os.getpid()} says hello\n".encode() * 64
    if echo(lib, qd, mine) != mine:
        raise AssertionError("first echo differs")
    emit(
        {
            "event": "ready",
            "qd": qd,
            "local": list(lib.getsockname(qd)),
            "client_id": lib.client_id,
        }
    )
    other = json.loads(sys.stdin.readline())["other_qd"]
    attempts = {
        "getsockname": lambda: lib.getsockname(other),
        "getpeername": lambda: lib.getpeername(other),
        "setsockopt": lambda: lib.setsockopt(other, "TCP_NODELAY", 1),
        "push": lambda: lib.wait(lib.push(other, b"not yours"), timeout=10),
        "pop": lambda: lib.wait(lib.pop(other), timeout=10),
        "shutdown": lambda: lib.shutdown(other),
        "abort": lambda: lib.abort(other),
        "close": lambda: lib.close(other),
    }
    results = {}
    for name, attempt in attempts.items():
        try:
            value = attempt()
            results[name] = f"succeeded: {value!r}"
        except OSError as exc:
            results[name] = errno_name(exc)
    emit({"event": "probed", "results": results})
    json.loads(sys.stdin.readline())  # {"go": true}: both have probed
    again = f"process {os.getpid()} is still here\n".encode() * 64
    echo_ok = echo(lib, qd, again) == again
    lib.close(qd)
    lib.close_all()
    emit({"event": "done", "echo_ok": echo_ok})


def stream(args: argparse.Namespace) -> None:
    lib = xdpstack.connect(args.socket)
    listener = lib.socket()
    lib.bind(listener, (args.bind, args.listen_port))
    lib.listen(listener, 8)
    qd = lib.socket()
    lib.wait(lib.connect(qd, (args.host, args.port)), timeout=20)
    block = os.urandom(256 << 10)
    pushed = 0
    reported = False
    pending: list[int] = []
    while True:
        while len(pending) < 4:
            pending.append(lib.push(qd, block))
        lib.wait(pending.pop(0), timeout=30)
        pushed += len(block)
        if not reported and pushed >= args.report_after:
            reported = True
            emit(
                {
                    "event": "streaming",
                    "qd": qd,
                    "listener": listener,
                    "local": list(lib.getsockname(qd)),
                    "pushed": pushed,
                }
            )


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["probe", "stream"])
    p.add_argument("--socket", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--listen-port", type=int, default=0)
    p.add_argument("--report-after", type=int, default=1 << 20)
    args = p.parse_args()
    try:
        probe(args) if args.mode == "probe" else stream(args)
    except BaseException as exc:
        emit({"event": "error", "error": errno_name(exc), "trace": traceback.format_exc()})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
