#!/usr/bin/env python3
"""The client and server programs of ``bench/compare.py``: one code for both stacks.

The *server* runs at the stack end of the veth pair on either stack: ``--stack kernel`` uses
the standard library's :mod:`socket` (the kernel's TCP, run inside the stack namespace),
``--stack xdpstack`` uses :mod:`xdpstack.socket` (the client library's drop-in for it, over
the daemon's Unix socket). The code after the import is the same for both. The *client*
runs in the client namespace on the kernel's TCP (the standard library) in every run, so
the two runs differ only in the stack that serves.

Each process prints JSON lines on stdout (``ready``, ``progress``, ``result``, ``holding``,
``error``) and is started, read and stopped (by PID) by ``compare.py``.

Modes (server / client):

``sink`` / ``bulk-up``
    The client sends for ``--seconds``, then SHUT_WR; the server reads to EOF and answers
    the byte count (8 bytes); the client's goodput is that count over the time from its
    first send to that answer.
``source`` / ``bulk-down``
    The client asks for ``--seconds`` of data (8 bytes); the server sends for that long and
    closes; the client's goodput is what it read over the time from its request to EOF.
``echo`` / ``rr``
    Round trips of ``--msg`` bytes on one connection (TCP_NODELAY on both ends), for
    ``--seconds`` after a warm-up: latency percentiles and round trips per second.
``cps`` / ``cps``
    Sequential connections: connect, one ``--msg``-byte request and response, close. The
    server closes first (FIN after its response); the client closes with SO_LINGER 0, an
    RST, so no side keeps a TIME_WAIT that could distort later runs.
``hold`` / ``hold``
    The client opens up to ``--conns`` idle connections (at most ``--window`` connecting at
    once) within ``--seconds``; the server accepts and keeps them. The client says why it
    stopped (``holding``), keeps them until a ``release`` line on stdin, then resets them.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any

COUNT = struct.Struct("!Q")
LINGER_RST = struct.pack("ii", 1, 0)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def rss_kb(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def errno_name(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return type(exc).__name__


def recv_exactly(sock: Any, size: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        data = sock.recv(size - len(out))
        if not data:
            raise ConnectionError(f"EOF after {len(out)} of {size} bytes")
        out += data
    return bytes(out)


# =====================================================================================
# the server: the same code on both stacks
# =====================================================================================
def load_socket_module(stack: str, socket_path: str | None) -> Any:
    """The standard library's ``socket`` (kernel) or ``xdpstack.socket`` (the daemon)."""
    if stack == "kernel":
        return socket
    if socket_path:
        os.environ["XDPSTACK_SOCKET"] = socket_path
    from xdpstack import socket as xsocket

    return xsocket


def serve(args: argparse.Namespace) -> int:
    sockmod = load_socket_module(args.stack, args.socket)
    if args.mode == "hold":
        raise_nofile(args.conns + 1024)
    srv = sockmod.create_server(("", args.port), backlog=args.backlog)
    emit("ready", port=args.port, pid=os.getpid(), rss_kb=rss_kb())
    chunk = bytearray(args.chunk)
    if args.mode == "sink":
        conn, _ = srv.accept()
        view = memoryview(chunk)
        total = 0
        while True:
            n = conn.recv_into(view)
            if not n:
                break
            total += n
        conn.sendall(COUNT.pack(total))
        conn.close()
        emit("result", bytes=total)
    elif args.mode == "source":
        conn, _ = srv.accept()
        (duration_ms,) = COUNT.unpack(recv_exactly(conn, COUNT.size))
        view = memoryview(chunk)
        total = 0
        end = time.perf_counter() + duration_ms / 1000
        while time.perf_counter() < end:
            conn.sendall(view)
            total += len(view)
        conn.close()
        emit("result", bytes=total)
    elif args.mode == "echo":
        conn, _ = srv.accept()
        conn.setsockopt(sockmod.IPPROTO_TCP, sockmod.TCP_NODELAY, 1)
        rounds = 0
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)
            rounds += 1
        conn.close()
        emit("result", rounds=rounds)
    elif args.mode == "cps":
        served = errors = 0
        while True:  # until compare.py stops it
            conn, _ = srv.accept()
            try:
                conn.setsockopt(sockmod.IPPROTO_TCP, sockmod.TCP_NODELAY, 1)
                conn.sendall(recv_exactly(conn, args.msg))
                served += 1
            except (OSError, ConnectionError):
                errors += 1
            finally:
                conn.close()
    elif args.mode == "hold":
        held = []
        srv.settimeout(0.2)
        reported = -1
        while True:  # until compare.py stops it; reports every 1000 and when idle
            try:
                conn, _ = srv.accept()
                held.append(conn)
                if len(held) % 1000:
                    continue
            except TimeoutError:
                if len(held) == reported:
                    continue
            except OSError as exc:  # EMFILE: RLIMIT_NOFILE (the kernel's server only)
                emit("accept_error", error=errno_name(exc), accepted=len(held))
                while True:
                    time.sleep(1)
            reported = len(held)
            emit("progress", accepted=reported, rss_kb=rss_kb())
    srv.close()
    return 0


# =====================================================================================
# the client: always the kernel's TCP, through the standard library
# =====================================================================================
def client(args: argparse.Namespace) -> int:
    addr = (args.host, args.port)
    if args.mode == "bulk-up":
        sock = socket.create_connection(addr, timeout=args.io_timeout)
        view = memoryview(bytes(range(256)) * (args.chunk // 256))
        sent = 0
        t0 = time.perf_counter()
        end = t0 + args.seconds
        while time.perf_counter() < end:
            sock.sendall(view)
            sent += len(view)
        sock.shutdown(socket.SHUT_WR)
        (received,) = COUNT.unpack(recv_exactly(sock, COUNT.size))
        elapsed = time.perf_counter() - t0
        sock.close()
        if received != sent:
            raise RuntimeError(f"the server read {received} of {sent} bytes")
        emit("result", bytes=received, seconds=elapsed, bits_per_s=received * 8 / elapsed)
    elif args.mode == "bulk-down":
        sock = socket.create_connection(addr, timeout=args.io_timeout)
        buf = bytearray(args.chunk)
        view = memoryview(buf)
        t0 = time.perf_counter()
        sock.sendall(COUNT.pack(int(args.seconds * 1000)))
        total = 0
        while True:
            n = sock.recv_into(view)
            if not n:
                break
            total += n
        elapsed = time.perf_counter() - t0
        sock.close()
        emit("result", bytes=total, seconds=elapsed, bits_per_s=total * 8 / elapsed)
    elif args.mode == "rr":
        sock = socket.create_connection(addr, timeout=args.io_timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"r" * args.msg
        for _ in range(args.warmup):
            sock.sendall(msg)
            recv_exactly(sock, len(msg))
        samples: list[int] = []
        clock = time.perf_counter_ns
        t0 = clock()
        end = t0 + int(args.seconds * 1e9)
        now = t0
        while now < end and len(samples) < args.max_count:
            sock.sendall(msg)
            recv_exactly(sock, len(msg))
            later = clock()
            samples.append(later - now)
            now = later
        elapsed = (now - t0) / 1e9
        sock.close()
        emit("result", **latency_summary(samples), round_trips=len(samples), seconds=elapsed)
    elif args.mode == "cps":
        msg = b"c" * args.msg
        samples = []
        errors: dict[str, int] = {}
        clock = time.perf_counter_ns
        t0 = clock()
        end = t0 + int(args.seconds * 1e9)
        now = t0
        while now < end and len(samples) < args.max_count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(args.io_timeout)
                sock.connect(addr)
                sock.sendall(msg)
                recv_exactly(sock, len(msg))
            except (OSError, ConnectionError) as exc:
                name = errno_name(exc)
                errors[name] = errors.get(name, 0) + 1
                if sum(errors.values()) > args.max_errors:
                    break
            else:
                samples.append(clock() - now)
            finally:
                sock.close()  # SO_LINGER 0: an RST, no TIME_WAIT here or at the server
            now = clock()
        elapsed = (now - t0) / 1e9
        emit(
            "result",
            **latency_summary(samples),
            connections=len(samples),
            seconds=elapsed,
            errors=errors,
        )
    elif args.mode == "hold":
        return hold(args)
    return 0


def latency_summary(samples_ns: list[int]) -> dict[str, float]:
    if not samples_ns:
        return {"p50_us": 0.0, "p99_us": 0.0, "mean_us": 0.0}
    ordered = sorted(samples_ns)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] / 1000

    return {
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "mean_us": sum(ordered) / len(ordered) / 1000,
    }


def hold(args: argparse.Namespace) -> int:
    """Open idle connections up to ``--conns`` within ``--seconds``; see the docstring."""
    raise_nofile(args.conns + 1024)
    addr = (args.host, args.port)
    sel = selectors.DefaultSelector()
    connecting: dict[socket.socket, float] = {}  # -> started
    held: list[socket.socket] = []
    errors: dict[str, int] = {}
    t0 = time.monotonic()
    deadline = t0 + args.seconds
    reason = ""
    next_report = 1000
    while True:
        now = time.monotonic()
        if len(held) >= args.conns:
            reason = f"reached the bound of {args.conns} connections"
            break
        if now >= deadline:
            reason = f"time budget of {args.seconds:g} s used up"
            break
        failures = sum(errors.values())
        if failures > args.max_errors:
            worst = max(errors, key=lambda k: errors[k])
            reason = f"{failures} connection attempts failed (most: {worst})"
            break
        while len(connecting) < args.window and len(held) + len(connecting) < args.conns:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
                sock.setblocking(False)
                err = sock.connect_ex(addr)
            except OSError as exc:  # EMFILE, ENOBUFS, EADDRNOTAVAIL...
                sock.close()
                name = errno_name(exc)
                errors[name] = errors.get(name, 0) + 1
                break
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                name = errno.errorcode.get(err, str(err))
                errors[name] = errors.get(name, 0) + 1
                break
            connecting[sock] = now
            sel.register(sock, selectors.EVENT_WRITE)
        for key, _ in sel.select(timeout=0.05):
            sock = key.fileobj  # type: ignore[assignment]
            sel.unregister(sock)
            del connecting[sock]
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                sock.close()
                name = errno.errorcode.get(err, str(err))
                errors[name] = errors.get(name, 0) + 1
            else:
                held.append(sock)
        now = time.monotonic()
        for sock, started in list(connecting.items()):
            if now - started > args.connect_timeout:
                sel.unregister(sock)
                del connecting[sock]
                sock.close()
                errors["ETIMEDOUT"] = errors.get("ETIMEDOUT", 0) + 1
        if len(held) >= next_report:
            emit("progress", established=len(held), seconds=time.monotonic() - t0)
            next_report += 1000
    for sock in connecting:
        sock.close()
    emit(
        "holding",
        established=len(held),
        seconds=time.monotonic() - t0,
        reason=reason,
        errors=errors,
    )
    sys.stdin.readline()  # "release" (or EOF: compare.py went away)
    # SO_LINGER 0: each close sends an RST. Paced: a burst of thousands of RSTs overruns
    # the receiver's rings (xdpstackd's AF_XDP fill ring), and the connections would stay.
    for start in range(0, len(held), args.release_batch):
        for sock in held[start : start + args.release_batch]:
            sock.close()
        time.sleep(args.release_pause)
    emit("released", count=len(held))
    return 0


# =====================================================================================
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--mode", required=True)
    parser.add_argument("--stack", choices=["kernel", "xdpstack"], default="kernel")
    parser.add_argument("--socket", help="the daemon's API socket (--stack xdpstack)")
    parser.add_argument("--host", default="10.77.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--chunk", type=int, default=256 << 10)
    parser.add_argument("--msg", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--max-count", type=int, default=10_000_000)
    parser.add_argument("--max-errors", type=int, default=50)
    parser.add_argument("--conns", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument("--release-batch", type=int, default=100)
    parser.add_argument("--release-pause", type=float, default=0.02)
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    parser.add_argument("--io-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return serve(args) if args.role == "server" else client(args)
    except (KeyboardInterrupt, SystemExit):
        return 0
    except BaseException as exc:
        emit("error", error=f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
