"""A small kernel-TCP peer for integration tests: plain Python, standard library only.

Run inside a namespace with ``ip netns exec NS /usr/bin/python3 tests/peers/tcp_peer.py ...``
(see ``tests/netfixtures.py``). Reports on stdout, one JSON object a line:

- ``{"event": "listening", "host": ..., "port": P}`` once a server listens;
- ``{"event": "conn", ...}`` when a connection is done, with ``local``/``peer``
  (``"ip:port"``), ``rx_bytes``/``rx_sha256`` (all bytes received), ``tx_bytes``/
  ``tx_sha256`` (all bytes sent), ``error`` (None, or ``"ECONNREFUSED"``-style errno name or
  text), ``eof`` (the peer closed its side), ``duration_s``;
- ``{"event": "done"}`` when a client, or a server with ``--connections N``, has finished.

Modes, server and client alike (what this side does on each connection):

- ``echo``: send back everything received until EOF, then close (client: send ``--bytes``
  bytes while reading the echo; close once as many came back, or at EOF);
- ``sink``: read until EOF and hash it, then close;
- ``source``: send ``--bytes`` pattern bytes, shut down the write side (FIN), read and hash
  whatever comes until EOF, then close.

The pattern is :func:`pattern_bytes` (``--seed``), so the other side can check the hash.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time

CHUNK = 65536
_out_lock = threading.Lock()


def pattern_block(seed: int) -> bytes:
    """64 KiB of pseudo-random bytes from ``seed`` (SHA-256 in counter mode)."""
    key = seed.to_bytes(8, "big", signed=False)
    return b"".join(hashlib.sha256(key + i.to_bytes(4, "big")).digest() for i in range(CHUNK // 32))


def pattern_bytes(nbytes: int, seed: int = 0) -> bytes:
    """The first ``nbytes`` of the repeating pattern for ``seed``."""
    block = pattern_block(seed)
    reps, rest = divmod(nbytes, len(block))
    return block * reps + block[:rest]


def pattern_sha256(nbytes: int, seed: int = 0) -> str:
    block = pattern_block(seed)
    h = hashlib.sha256()
    left = nbytes
    while left > 0:
        n = min(left, len(block))
        h.update(block[:n])
        left -= n
    return h.hexdigest()


def emit(obj: dict) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def addr_str(addr) -> str:
    return f"{addr[0]}:{addr[1]}"


def error_name(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    if isinstance(exc, TimeoutError):
        return "ETIMEDOUT"
    return f"{type(exc).__name__}: {exc}"


class Conn:
    def __init__(self, sock: socket.socket, args: argparse.Namespace) -> None:
        self.sock = sock
        self.args = args
        self.rx = hashlib.sha256()
        self.tx = hashlib.sha256()
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.eof = False
        self.error: str | None = None
        self.start = time.monotonic()

    def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self.sock.send(view[:CHUNK])
            self.tx.update(view[:n])
            self.tx_bytes += n
            view = view[n:]

    def recv_some(self) -> bytes:
        data = self.sock.recv(CHUNK)
        if data:
            self.rx.update(data)
            self.rx_bytes += len(data)
        else:
            self.eof = True
        return data

    def drain(self, limit: int | None = None) -> None:
        while not self.eof and (limit is None or self.rx_bytes < limit):
            self.recv_some()

    def run(self) -> None:
        mode = self.args.mode
        try:
            if self.args.io_timeout > 0:
                self.sock.settimeout(self.args.io_timeout)
            if mode == "echo" and self.args.role == "server":
                while True:
                    data = self.recv_some()
                    if not data:
                        break
                    self.send_all(data)
            elif mode == "echo":
                want = self.args.bytes
                reader = threading.Thread(target=self.drain, args=(want,), daemon=True)
                reader.start()
                self.send_all(pattern_bytes(want, self.args.seed))
                reader.join()
            elif mode == "sink":
                self.drain()
            elif mode == "source":
                self.send_all(pattern_bytes(self.args.bytes, self.args.seed))
                self.sock.shutdown(socket.SHUT_WR)
                self.drain()
            else:
                raise ValueError(f"unknown mode {mode}")
        except BaseException as exc:
            self.error = error_name(exc)
        finally:
            self.report()
            try:
                if self.args.linger_rst:
                    self.sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                self.sock.close()
            except OSError:
                pass

    def report(self) -> None:
        try:
            local = addr_str(self.sock.getsockname())
        except OSError:
            local = None
        try:
            peer = addr_str(self.sock.getpeername())
        except OSError:
            peer = None
        emit(
            {
                "event": "conn",
                "mode": self.args.mode,
                "local": local,
                "peer": peer,
                "rx_bytes": self.rx_bytes,
                "rx_sha256": self.rx.hexdigest(),
                "tx_bytes": self.tx_bytes,
                "tx_sha256": self.tx.hexdigest(),
                "eof": self.eof,
                "error": self.error,
                "duration_s": round(time.monotonic() - self.start, 6),
            }
        )


def serve(args: argparse.Namespace) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.host, args.port))
    srv.listen(args.backlog)
    emit({"event": "listening", "host": args.host, "port": srv.getsockname()[1]})
    threads = []
    served = 0
    while args.connections == 0 or served < args.connections:
        sock, _ = srv.accept()
        served += 1
        t = threading.Thread(target=Conn(sock, args).run, daemon=True)
        t.start()
        threads.append(t)
    srv.close()
    for t in threads:
        t.join()
    emit({"event": "done"})


def connect_one(args: argparse.Namespace) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn = Conn(sock, args)
    try:
        if args.bind:
            sock.bind((args.bind, args.bind_port))
        sock.settimeout(args.connect_timeout)
        sock.connect((args.host, args.port))
        sock.settimeout(None)
    except BaseException as exc:
        conn.error = error_name(exc)
        conn.report()
        sock.close()
        return
    conn.run()


def client(args: argparse.Namespace) -> None:
    threads = [
        threading.Thread(target=connect_one, args=(args,), daemon=True) for _ in range(args.count)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emit({"event": "done"})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("role", choices=["server", "client"])
    p.add_argument("--host", default="0.0.0.0", help="server: bind address; client: target")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--mode", choices=["echo", "sink", "source"], default="echo")
    p.add_argument("--bytes", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--connections", type=int, default=0, help="server: stop after N (0: never)")
    p.add_argument("--backlog", type=int, default=128)
    p.add_argument("--count", type=int, default=1, help="client: parallel connections")
    p.add_argument("--bind", default="", help="client: local address")
    p.add_argument("--bind-port", type=int, default=0)
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--io-timeout", type=float, default=60.0)
    p.add_argument("--linger-rst", action="store_true", help="close with RST (SO_LINGER 0)")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if args.role == "server":
        serve(args)
    else:
        client(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
