"""Client processes of one xdpstackd: isolation between them, and a client that dies.

The clients are ``client_worker.py`` processes (the ``xdpstack`` library in a process of
its own), driven over stdin/stdout; they are killed by PID, never by name.
"""

from __future__ import annotations

import errno

import pytest
from netfixtures import kernel_tcp_client, kernel_tcp_server
from xdpd_harness import DaemonProcess, Worker, echo_exchange, wait_until

pytestmark = pytest.mark.integration

IO_TIMEOUT = 20.0


def test_two_client_processes_work_at_once_and_cannot_use_each_others_descriptors(
    daemon: DaemonProcess,
) -> None:
    d = daemon
    with kernel_tcp_server(d.peer_ns, 0, "echo") as server:
        common = ["--socket", str(d.socket_path), "--host", d.peer_ip, "--port", str(server.port)]
        workers = [Worker("probe", *common), Worker("probe", *common)]
        try:
            ready = [w.expect("ready") for w in workers]
            assert ready[0]["client_id"] != ready[1]["client_id"]
            qds = [r["qd"] for r in ready]
            assert qds[0] != qds[1]

            # this (third) client cannot use them either
            lib = d.client()
            for qd in qds:
                with pytest.raises(OSError) as info:
                    lib.getpeername(qd)
                assert info.value.errno == errno.EBADF

            workers[0].send({"other_qd": qds[1]})
            workers[1].send({"other_qd": qds[0]})
            for worker in workers:
                results = worker.expect("probed")["results"]
                assert results == dict.fromkeys(results, "EBADF"), (
                    f"worker {worker.pid} used the other's descriptor: {results}"
                )
                assert len(results) == 8
            # Both probed (close and abort included): both connections must still work.
            for worker in workers:
                worker.send({"go": True})
            for worker in workers:
                assert worker.expect("done")["echo_ok"] is True
                assert worker.wait(IO_TIMEOUT) == 0, worker.stderr
        finally:
            for worker in workers:
                worker.stop()

        conns = server.results(2, timeout=IO_TIMEOUT)
        assert sorted(c["peer"] for c in conns) == sorted(
            f"{r['local'][0]}:{r['local'][1]}" for r in ready
        )
        for conn in conns:
            assert conn["error"] is None and conn["eof"] is True, conn
            assert conn["rx_sha256"] == conn["tx_sha256"]


def test_client_killed_mid_transfer_has_its_connections_closed_and_daemon_serves_others(
    daemon: DaemonProcess,
) -> None:
    d = daemon
    listen_port = 7301
    sink = kernel_tcp_server(d.peer_ns, 0, "sink", io_timeout=60.0)
    worker = Worker(
        "stream",
        "--socket", str(d.socket_path),
        "--host", d.peer_ip,
        "--port", str(sink.port),
        "--bind", d.stack_ip,
        "--listen-port", str(listen_port),
        "--report-after", str(2 << 20),
    )  # fmt: skip
    try:
        streaming = worker.expect("streaming", timeout=30)
        # its listener is reachable while it lives
        probe = kernel_tcp_client(d.peer_ns, d.stack_ip, listen_port, "sink", io_timeout=10)
        wait_until(
            lambda: any(
                c["connection_management"]["local"][1] == listen_port for c in d.connections()
            ),
            IO_TIMEOUT,
            "the kernel client's connection to the worker's listener",
            0.05,
        )
        assert d.running
        assert worker.kill() == -9
    finally:
        worker.stop()

    # The daemon closes the dead client's descriptors as a process exit would: the kernel
    # peer of its connection sees the end (FIN after the queued data, or a reset).
    (conn,) = sink.results(1, timeout=30)
    assert conn["eof"] is True or conn["error"] == "ECONNRESET", conn
    assert conn["peer"] == f"{streaming['local'][0]}:{streaming['local'][1]}"
    assert conn["rx_bytes"] >= streaming["pushed"] - (4 << 20), conn  # sent before the kill
    # the connection to the listener (never accepted) is gone too, and so is the listener
    probe_result = probe.result(timeout=30)
    assert probe_result["error"] in (None, "ECONNRESET"), probe_result
    print(f"\nkernel sink saw: {conn}\nunaccepted kernel client saw: {probe_result}")
    refused = kernel_tcp_client(d.peer_ns, d.stack_ip, listen_port, "sink", connect_timeout=5)
    assert refused.result(timeout=30)["error"] == "ECONNREFUSED"

    # ... and it serves another client
    assert d.running, d.describe()
    with kernel_tcp_server(d.peer_ns, 0, "echo") as echo_server:
        lib = d.client()
        qd = lib.socket()
        lib.wait(lib.connect(qd, (d.peer_ip, echo_server.port)), timeout=IO_TIMEOUT)
        data = b"still serving\n" * 10_000
        assert echo_exchange(lib, qd, data, IO_TIMEOUT) == data
        lib.close(qd)
    api = d.stats()["api"]
    assert api["internal_errors"] == 0, api
