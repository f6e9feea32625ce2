#!/usr/bin/env python3
"""A Redis client (RESP2) on ``xdpstack.socket``: ordinary blocking-socket code.

The client is written against the standard library's socket interface
(``create_connection``, ``sendall``, ``makefile('rb')``) and gets its socket module as
a parameter: ``xdpstack.socket`` by default, the kernel's with ``--kernel``. Nothing else
changes.

    python examples/redis_client.py --host 10.0.0.2 ping
    python examples/redis_client.py --host 10.0.0.2 set greeting hello
    python examples/redis_client.py --host 10.0.0.2 get greeting
    python examples/redis_client.py --host 10.0.0.2 check --size 1048576

``check`` SETs a random value of ``--size`` bytes, GETs it back, compares the two
(SHA-256), DELetes the key and prints the timings; exit status 0 when they match.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

try:  # run from a checkout without installing: the client library is in ../client
    import xdpstack  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))


class RedisError(Exception):
    """An error reply (``-ERR ...``) from the server."""


class Redis:
    def __init__(
        self, host: str, port: int = 6379, *, timeout: float = 10.0, socket_module: ModuleType
    ) -> None:
        self.sock = socket_module.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb")

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()

    def __enter__(self) -> Redis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def encode(*args: Any) -> bytes:
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, int):
                arg = str(arg).encode()
            out += [f"${len(arg)}\r\n".encode(), arg, b"\r\n"]
        return b"".join(out)

    def command(self, *args: Any) -> Any:
        self.sock.sendall(self.encode(*args))
        return self.read_reply()

    def read_reply(self) -> Any:
        line = self.rfile.readline()
        if not line.endswith(b"\r\n"):
            raise ConnectionError("the server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rfile.read(n + 2)
            if len(data) != n + 2:
                raise ConnectionError("the server closed the connection in a reply")
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read_reply() for _ in range(n)]
        raise RedisError(f"unexpected reply {line!r}")


def check(redis: Redis, size: int) -> bool:
    key = f"xdpstack-example:{os.getpid()}:{time.time_ns()}"
    value = os.urandom(size)
    t0 = time.perf_counter()
    assert redis.command("SET", key, value) == "OK"
    t1 = time.perf_counter()
    got = redis.command("GET", key)
    t2 = time.perf_counter()
    redis.command("DEL", key)
    want = hashlib.sha256(value).hexdigest()
    have = hashlib.sha256(got or b"").hexdigest()
    ok = got == value
    print(
        f"SET {size} bytes in {(t1 - t0) * 1e3:.1f} ms, GET {len(got or b'')} bytes in "
        f"{(t2 - t1) * 1e3:.1f} ms; sha256 sent {want} received {have}: "
        f"{'match' if ok else 'DIFFER'}",
        flush=True,
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A Redis (RESP2) client on xdpstack.socket.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--socket", help="the daemon's socket (default: $XDPSTACK_SOCKET)")
    parser.add_argument("--kernel", action="store_true", help="use the kernel's TCP instead")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ping")
    p_set = sub.add_parser("set")
    p_set.add_argument("key")
    p_set.add_argument("value")
    p_get = sub.add_parser("get")
    p_get.add_argument("key")
    p_check = sub.add_parser("check", help="SET a random value, GET it back, compare")
    p_check.add_argument("--size", type=int, default=1 << 20)
    args = parser.parse_args(argv)

    if args.kernel:
        import socket as socket_module
    else:
        if args.socket:
            os.environ["XDPSTACK_SOCKET"] = args.socket
        from xdpstack import socket as socket_module
    try:
        with Redis(
            args.host, args.port, timeout=args.timeout, socket_module=socket_module
        ) as redis:
            if args.cmd == "ping":
                print(redis.command("PING"))
            elif args.cmd == "set":
                print(redis.command("SET", args.key, args.value))
            elif args.cmd == "get":
                value = redis.command("GET", args.key)
                if value is None:
                    print("(nil)")
                    return 1
                sys.stdout.buffer.write(value + b"\n")
            else:
                return 0 if check(redis, args.size) else 1
    except (OSError, RedisError) as exc:
        print(f"{os.path.basename(sys.argv[0])}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
