"""Every example runs and explains itself (``--help``), and fails clearly without a
daemon."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from examples_support import EXAMPLES, run_example

NAMES = ["echo_lowlevel.py", "http_aio_server.py", "redis_client.py"]


def test_the_examples_are_all_listed() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_help(name: str) -> None:
    proc = run_example(name, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    assert "xdpstack" in proc.stdout


@pytest.mark.parametrize("name", NAMES)
def test_help_from_a_checkout_without_the_venv(name: str) -> None:
    """Debian's python3, nothing installed: the examples find ../client themselves."""
    python = Path("/usr/bin/python3")
    if not python.exists():
        pytest.skip("no /usr/bin/python3")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [str(python), "-S", str(EXAMPLES / name), "--help"],
        capture_output=True, text=True, timeout=60, env=env, cwd="/",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("echo_lowlevel.py", ["client", "--host", "10.0.0.2"]),
        ("redis_client.py", ["--host", "10.0.0.2", "ping"]),
    ],
)
def test_no_daemon_is_a_clear_error(name: str, args: list[str], tmp_path) -> None:
    missing = str(tmp_path / "nothing.sock")
    proc = run_example(name, "--socket", missing, *args)
    assert proc.returncode == 1
    assert "cannot reach xdpstackd" in proc.stderr and missing in proc.stderr
