"""``examples/echo_lowlevel.py`` against the simulated-link daemon: its server with
far-end clients, its client with a far-end echo server."""

from __future__ import annotations

import hashlib

from examples_support import read_line_with, run_example, start_example, stop
from farapps import FarApps
from harness import FAR_IP, OUR_IP, Daemon, pattern


def test_echo_server_serves_concurrent_clients(sim_daemon: Daemon, far: FarApps) -> None:
    server = start_example(
        "echo_lowlevel.py",
        "--socket", sim_daemon.path,
        "server", "--port", "7000", "--connections", "3",
    )  # fmt: skip
    try:
        read_line_with(server, "listening on")
        payloads = [pattern(n, seed=n) for n in (1, 100_000, 3_000_000)]
        futures = [far.client((OUR_IP, 7000), p) for p in payloads]
        for payload, future in zip(payloads, futures):
            got = future.result(60)
            assert got.errno == 0
            assert hashlib.sha256(got.data).hexdigest() == hashlib.sha256(payload).hexdigest()
        assert server.wait(30) == 0  # exits after its 3 connections
    finally:
        out, err = stop(server)
    assert "served 3 connections" in out, (out, err)


def test_echo_client_checks_the_echo(sim_daemon: Daemon, far: FarApps) -> None:
    far.echo_server(7000)
    proc = run_example(
        "echo_lowlevel.py",
        "--socket", sim_daemon.path,
        "client", "--host", FAR_IP, "--port", "7000", "--bytes", "5000000",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "echoed 5000000 of 5000000 bytes" in proc.stdout
    assert "matches" in proc.stdout


def test_echo_client_refused(sim_daemon: Daemon) -> None:
    proc = run_example(
        "echo_lowlevel.py", "--socket", sim_daemon.path, "client", "--host", FAR_IP,
        "--port", "9",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "refused" in proc.stderr.lower()
