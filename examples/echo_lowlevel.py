#!/usr/bin/env python3
"""Echo server and client on xdpstack's low-level queue-token API.

The server accepts connections on the userspace stack and sends back every byte it
receives, for any number of connections at once, from one thread: every operation is a
queue token, and one ``wait_any`` over all of them is the whole event loop. The client
connects, pushes data while popping the echo (pipelined, so large transfers cannot
deadlock against the server), and checks the echo with SHA-256.

    python examples/echo_lowlevel.py server --port 7000
    python examples/echo_lowlevel.py client --host 10.0.0.2 --port 7000 --bytes 10000000

Both talk to the daemon at ``--socket`` (default ``$XDPSTACK_SOCKET`` or
``/run/xdpstack/xdpstackd.sock``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import time
from pathlib import Path

try:
    import xdpstack
except ImportError:  # run from a checkout without installing: the library is in ../client
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))
    import xdpstack

CHUNK = 256 << 10


def serve(lib: xdpstack.Lib, host: str, port: int, connections: int = 0) -> int:
    """Echo until interrupted, or until ``connections`` connections have finished (if
    > 0). Returns the number of connections served."""
    listener = lib.socket()
    lib.bind(listener, (host, port))
    lib.listen(listener, 128)
    print(f"echo server listening on {lib.getsockname(listener)}", flush=True)
    accept_qt = lib.accept(listener)
    pops: dict[int, int] = {}  # pop token -> qd
    pushes: dict[int, int] = {}  # push token -> qd
    finished = 0
    try:
        while connections <= 0 or finished < connections:
            tokens = [accept_qt, *pops, *pushes]
            try:
                i, result = lib.wait_any(tokens)
                qt = tokens[i]
            except OSError as exc:  # a failed operation: its token and descriptor
                qt = getattr(exc, "qt", None)
                if qt == accept_qt:
                    print(f"accept failed: {exc}", file=sys.stderr)
                    accept_qt = lib.accept(listener)
                elif qt in pops:
                    qd = pops.pop(qt)
                    print(f"connection {qd}: {exc.strerror or exc}", file=sys.stderr)
                    _close(lib, qd)
                    finished += 1
                elif qt in pushes:
                    pushes.pop(qt)  # the pop on that connection reports the error too
                else:
                    raise
                continue
            if qt == accept_qt:
                qd = result.new_qd
                assert qd is not None
                print(f"connection {qd} from {result.addr}", flush=True)
                pops[lib.pop(qd)] = qd
                accept_qt = lib.accept(listener)
            elif qt in pops:
                qd = pops.pop(qt)
                if result.data:
                    pushes[lib.push(qd, result.data)] = qd
                    pops[lib.pop(qd)] = qd
                else:  # end of stream: close after the echoes (FIN follows them)
                    lib.close(qd)
                    finished += 1
                    print(f"connection {qd} closed", flush=True)
            else:
                pushes.pop(qt)
    finally:
        _close(lib, listener)
    return finished


def _close(lib: xdpstack.Lib, qd: int) -> None:
    try:
        lib.close(qd)
    except OSError:
        pass


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that never repeat at a small stride (reordering would show)."""
    out = bytearray()
    block = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{block}".encode()).digest()
        block += 1
    return bytes(out[:n])


def client(lib: xdpstack.Lib, host: str, port: int, nbytes: int, timeout: float) -> bool:
    """Send ``nbytes`` to an echo server and check what comes back; True if it matches."""
    payload = pattern(nbytes)
    qd = lib.socket()
    started = time.perf_counter()
    lib.wait(lib.connect(qd, (host, port)), timeout)
    print(f"connected {lib.getsockname(qd)} -> {lib.getpeername(qd)}", flush=True)
    digest = hashlib.sha256()
    received = sent = 0
    push_qt: int | None = None
    pop_qt = lib.pop(qd)
    deadline = time.monotonic() + timeout
    while received < nbytes:
        if push_qt is None and sent < nbytes:
            push_qt = lib.push(qd, payload[sent : sent + CHUNK])
            sent += min(CHUNK, nbytes - sent)
        tokens = [t for t in (pop_qt, push_qt) if t is not None]
        i, result = lib.wait_any(tokens, timeout=max(0.0, deadline - time.monotonic()))
        if tokens[i] == pop_qt:
            if not result.data:
                print(f"the server closed after {received} bytes", file=sys.stderr)
                break
            digest.update(result.data)
            received += len(result.data)
            pop_qt = lib.pop(qd) if received < nbytes else None
        else:
            push_qt = None
    lib.shutdown(qd)  # our FIN; the server closes after it
    end = lib.wait(lib.pop(qd), timeout) if pop_qt is None else lib.wait(pop_qt, timeout)
    lib.close(qd)
    elapsed = time.perf_counter() - started
    ok = received == nbytes and digest.hexdigest() == hashlib.sha256(payload).hexdigest()
    print(
        f"echoed {received} of {nbytes} bytes in {elapsed:.3f} s "
        f"({received * 8 / max(elapsed, 1e-9) / 1e6:.1f} Mbit/s each way), "
        f"sha256 {digest.hexdigest()} {'matches' if ok else 'DIFFERS'}"
        f"{'' if not end.data else ' (unexpected data after the echo)'}",
        flush=True,
    )
    return ok and not end.data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Echo server and client on xdpstack's low-level queue-token API."
    )
    parser.add_argument("--socket", help="the daemon's socket (default: $XDPSTACK_SOCKET)")
    sub = parser.add_subparsers(dest="role", required=True)
    srv = sub.add_parser("server", help="echo every byte back")
    srv.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    srv.add_argument("--port", type=int, default=7000)
    srv.add_argument("--connections", type=int, default=0, help="exit after this many (0: never)")
    cli = sub.add_parser("client", help="send data to an echo server and check the echo")
    cli.add_argument("--host", required=True)
    cli.add_argument("--port", type=int, default=7000)
    cli.add_argument("--bytes", type=int, default=1 << 20, help="how much (default 1 MiB)")
    cli.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    # SIGTERM stops the server as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with xdpstack.connect(args.socket) as lib:
            if args.role == "server":
                served = serve(lib, args.host, args.port, args.connections)
                print(f"served {served} connections", flush=True)
                return 0
            return 0 if client(lib, args.host, args.port, args.bytes, args.timeout) else 1
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"{os.path.basename(sys.argv[0])}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
