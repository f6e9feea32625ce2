"""``examples/redis_client.py`` on the real daemon on a veth pair, talking RESP to a real
``redis-server`` (Debian's) on the kernel's TCP in the peer namespace (integration): SET a
1 MB value, GET it back, compare."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
from examples_support import read_line_with, run_example, stop
from integration_support import require_integration

REDIS_PORT = 6391


@pytest.fixture
def redis_server(real_daemon: Any, tmp_path: Any) -> Any:
    exe = shutil.which("redis-server")
    if exe is None:
        require_integration("redis-server is not installed (scripts/setup.sh installs it)")
    proc = subprocess.Popen(
        ["ip", "netns", "exec", real_daemon.peer_ns, exe,
         "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no",
         "--protected-mode", "no", "--bind", "0.0.0.0", "--daemonize", "no",
         "--dir", str(tmp_path), "--loglevel", "notice"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        read_line_with(proc, "Ready to accept connections", timeout=30)
        yield proc
    finally:
        stop(proc)  # by PID: `ip netns exec` execs redis-server in place


@pytest.mark.integration
def test_redis_set_get_1_mb(real_daemon: Any, redis_server: Any) -> None:
    common = [
        "--socket", str(real_daemon.socket_path),
        "--host", real_daemon.peer_ip, "--port", str(REDIS_PORT),
    ]  # fmt: skip
    ping = run_example("redis_client.py", *common, "ping")
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout.strip() == "PONG"

    proc = run_example("redis_client.py", *common, "check", "--size", str(1 << 20))
    print(f"\n{proc.stdout.strip()}")
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{real_daemon.log_tail(40)}"
    assert "SET 1048576 bytes" in proc.stdout and "GET 1048576 bytes" in proc.stdout
    assert ": match" in proc.stdout

    assert run_example("redis_client.py", *common, "set", "greeting", "héllo").returncode == 0
    got = run_example("redis_client.py", *common, "get", "greeting")
    assert got.returncode == 0 and got.stdout == "héllo\n"
    missing = run_example("redis_client.py", *common, "get", "no-such-key")
    assert missing.returncode == 1 and missing.stdout.strip() == "(nil)"
