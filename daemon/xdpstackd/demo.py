"""``make demo``: the daemon on its embedded default (the sandbox), with traffic.

It starts ``xdpstackd --sandbox`` (its own network namespace and veth pair), runs an
echo server on the *kernel's* TCP inside that namespace, and from this process, through
the ``xdpstack`` client library, connects to it and moves data both ways: everything
pushed comes back, and the bytes are checked with SHA-256. It prints what moved and how
fast, then stops the daemon with SIGTERM and checks that it left no XDP program behind.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ECHO_SERVER = r"""
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1]))); srv.listen(8)
print("listening", flush=True)
conn, _ = srv.accept()
while True:
    data = conn.recv(1 << 20)
    if not data:
        break
    conn.sendall(data)
conn.close()
"""

READY = re.compile(r"the stack is (\S+) on (\S+); the peer side is namespace (\S+) at (\S+)")


def run_demo(megabytes: int, port: int = 5201) -> int:
    import xdpstack

    sock_path = os.path.join(tempfile.mkdtemp(prefix="xdpstack-demo-"), "xdpstackd.sock")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "xdpstackd.cli", "--sandbox", "--socket", sock_path],
        stdout=subprocess.PIPE,
        text=True,
    )
    server = None
    try:
        assert daemon.stdout is not None
        match = None
        deadline = time.monotonic() + 60
        while match is None and time.monotonic() < deadline:
            line = daemon.stdout.readline()
            if not line:
                raise SystemExit(f"demo: xdpstackd exited early (status {daemon.wait()})")
            print(f"  [xdpstackd] {line.rstrip()}")
            match = READY.search(line)
        if match is None:
            raise SystemExit("demo: xdpstackd did not become ready in 60 s")
        stack_ip, host_if, netns, peer_ip = match.groups()
        print(f"demo: the stack is {stack_ip} on {host_if}")
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, "/usr/bin/python3", "-c", ECHO_SERVER, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        server.stdout.readline()
        print(f"demo: kernel echo server on {peer_ip}:{port} in namespace {netns}")

        payload = os.urandom(megabytes << 20)
        lib = xdpstack.connect(sock_path)
        qd = lib.socket()
        t0 = time.perf_counter()
        lib.wait(lib.connect(qd, (peer_ip, port)), timeout=10)
        t_connect = time.perf_counter() - t0
        print(
            f"demo: connected {lib.getsockname(qd)} -> {lib.getpeername(qd)} "
            f"in {t_connect * 1e3:.1f} ms"
        )
        chunk = 256 << 10
        sent = 0
        received = hashlib.sha256()
        received_bytes = 0
        pending_push = None
        pending_pop = lib.pop(qd, None)
        t0 = time.perf_counter()
        while received_bytes < len(payload):
            if pending_push is None and sent < len(payload):
                pending_push = lib.push(qd, payload[sent : sent + chunk])
                sent += min(chunk, len(payload) - sent)
            tokens = [t for t in (pending_pop, pending_push) if t is not None]
            index, result = lib.wait_any(tokens, timeout=30)
            if tokens[index] == pending_pop:
                if not result.data:
                    raise SystemExit("demo: the echo server closed early")
                received.update(result.data)
                received_bytes += len(result.data)
                pending_pop = lib.pop(qd, None)
            else:
                pending_push = None
        elapsed = time.perf_counter() - t0
        lib.close(qd)
        ok = received.hexdigest() == hashlib.sha256(payload).hexdigest()
        mbit = len(payload) * 8 / elapsed / 1e6
        print(
            f"demo: {len(payload) >> 20} MiB pushed to the kernel and {received_bytes >> 20} MiB "
            f"echoed back in {elapsed:.2f} s: {mbit:.0f} Mbit/s each way, "
            f"sha256 {'matches' if ok else 'DIFFERS'}"
        )
        return 0 if ok else 1
    finally:
        if server is not None:
            server.kill()
            server.wait()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            status = daemon.wait(timeout=30)
            print(f"demo: xdpstackd stopped by SIGTERM, exit status {status}")
        leftover = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        if " xdp" in leftover and "xdps-" in leftover:
            print("demo: WARNING: an XDP program was left behind")
        Path(sock_path).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=64, help="data each way (default 64)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces, XDP, AF_XDP)", file=sys.stderr)
        return 1
    return run_demo(args.megabytes)


if __name__ == "__main__":
    sys.exit(main())
