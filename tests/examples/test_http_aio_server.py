"""``examples/http_aio_server.py``: against the simulated-link daemon with far-end
clients (fast), and on the real daemon on a veth pair with ``curl`` in the peer
namespace on the kernel's TCP (integration): a 10 MB file, SHA-256 compared."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from examples_support import read_line_with, start_example, stop
from farapps import FarApps
from harness import OUR_IP, Daemon, pattern
from integration_support import require_integration

PORT = 8080


def parse_responses(raw: bytes, heads: list[bool]) -> list[tuple[int, dict[str, str], bytes]]:
    """Split ``raw`` into responses (``heads[i]``: the i-th answers a HEAD: no body)."""
    out = []
    rest = raw
    for head_only in heads:
        header, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"no end of headers in {header[:200]!r}"
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        length = 0 if head_only else int(fields["content-length"])
        out.append((status, fields, rest[:length]))
        rest = rest[length:]
    assert rest == b"", f"trailing bytes {rest[:100]!r}"
    return out


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "hello.txt").write_text("hello, world\n")
    (root / "sub" / "data.bin").write_bytes(pattern(2_500_000, seed=9))
    (tmp_path / "secret.txt").write_text("not served\n")
    return root


@pytest.fixture
def http_server(sim_daemon: Daemon, www: Path) -> Any:
    server = start_example(
        "http_aio_server.py",
        "--socket", sim_daemon.path, "--directory", str(www), "--port", str(PORT),
    )  # fmt: skip
    try:
        read_line_with(server, "serving")
        yield server
    finally:
        _out, err = stop(server)
        assert "Traceback" not in err, err


def fetch(far: FarApps, request: bytes) -> bytes:
    got = far.client((OUR_IP, PORT), request).result(60)
    assert got.errno == 0
    return bytes(got.data)


def test_get_head_and_errors(far: FarApps, http_server: Any, www: Path) -> None:
    raw = fetch(far, b"GET /sub/data.bin HTTP/1.0\r\nHost: x\r\n\r\n")
    [(status, fields, body)] = parse_responses(raw, [False])
    data = (www / "sub" / "data.bin").read_bytes()
    assert status == 200 and fields["content-length"] == str(len(data))
    assert fields["connection"] == "close"
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()

    raw = fetch(far, b"HEAD /hello.txt HTTP/1.0\r\n\r\n")
    [(status, fields, body)] = parse_responses(raw, [True])
    assert status == 200 and fields["content-length"] == "13"
    assert fields["content-type"] == "text/plain" and body == b""

    for request, want in [
        (b"GET /missing HTTP/1.0\r\n\r\n", 404),
        (b"GET /../secret.txt HTTP/1.0\r\n\r\n", 404),
        (b"GET /%2e%2e/secret.txt HTTP/1.0\r\n\r\n", 404),
        (b"DELETE /hello.txt HTTP/1.0\r\n\r\n", 405),
        (b"GET /hello.txt HTTP/2.0\r\n\r\n", 505),
        (b"nonsense\r\n\r\n", 400),
    ]:
        [(status, fields, body)] = parse_responses(fetch(far, request), [False])
        assert status == want, (request, body)
        assert b"not served" not in body


def test_keep_alive_pipelined(far: FarApps, http_server: Any) -> None:
    requests = (
        b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
        b"HEAD /sub/data.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    responses = parse_responses(fetch(far, requests), [False, True, False])
    (s1, f1, b1), (s2, f2, _), (s3, f3, b3) = responses
    assert (s1, b1, f1["connection"]) == (200, b"hello, world\n", "keep-alive")
    assert (s2, f2["content-length"], f2["connection"]) == (200, "2500000", "keep-alive")
    assert s3 == 200 and f3["connection"] == "close"
    assert b"hello.txt" in b3 and b"sub/" in b3  # the directory listing


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.integration
def test_curl_fetches_10_mb_from_the_real_daemon(real_daemon: Any, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        require_integration("curl is not installed (scripts/setup.sh installs it)")
    root = tmp_path / "www"
    root.mkdir()
    data = os.urandom(10 << 20)
    (root / "big.bin").write_bytes(data)
    (root / "small.txt").write_text("small\n")
    want = hashlib.sha256(data).hexdigest()
    server = start_example(
        "http_aio_server.py",
        "--socket", str(real_daemon.socket_path), "--directory", str(root),
        "--port", str(PORT), "--uvloop",
    )  # fmt: skip
    try:
        read_line_with(server, "serving")
        url = f"http://{real_daemon.stack_ip}:{PORT}"
        netns = ["ip", "netns", "exec", real_daemon.peer_ns]
        out = tmp_path / "got.bin"
        started = time.monotonic()
        proc = subprocess.run(
            [*netns, curl, "-sS", "--fail", "--max-time", "120", "-o", str(out),
             "-w", "%{size_download} %{time_total} %{speed_download}", f"{url}/big.bin"],
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        assert proc.returncode == 0, f"curl: {proc.stderr}\n{real_daemon.log_tail(40)}"
        size, total, speed = proc.stdout.split()
        got = _sha256_file(out)
        print(
            f"\ncurl fetched {size} bytes in {float(total):.3f} s "
            f"({float(speed) * 8 / 1e6:.0f} Mbit/s; {elapsed:.3f} s wall), "
            f"sha256 {got} (served {want})"
        )
        assert int(size) == len(data) == out.stat().st_size
        assert got == want

        # HEAD, and two requests on one kept-alive connection
        head = subprocess.run(
            [*netns, curl, "-sS", "--fail", "-I", f"{url}/big.bin"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert head.returncode == 0, head.stderr
        assert f"Content-Length: {len(data)}" in head.stdout
        both = subprocess.run(
            [*netns, curl, "-sS", "--fail", "-v", f"{url}/small.txt", f"{url}/small.txt"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert both.returncode == 0, both.stderr
        assert both.stdout == "small\nsmall\n"
        assert "Re-using existing connection" in both.stderr
    finally:
        _out_text, err_text = stop(server)
    assert "Traceback" not in err_text, err_text
