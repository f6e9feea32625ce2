"""Helpers for the examples' tests (a module of its own: ``conftest`` is not importable
by name reliably).

``sim_daemon`` / ``far``: the simulated-link daemon of ``tests/api/harness.py`` with the
far-end applications of ``tests/highlevel/farapps.py`` (fast, no root); the examples run
as subprocesses of this interpreter with ``$XDPSTACK_SOCKET`` naming the daemon.

``real_daemon``: the real ``xdpstackd`` on a veth pair (``tests/integration/xdpd_harness``'s
``DaemonLab``), for the integration tests; the peer end's namespace runs kernel programs
(curl, redis-server).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
EXAMPLES = REPO / "examples"
for extra in ("api", "highlevel", "integration"):
    if str(TESTS / extra) not in sys.path:
        sys.path.insert(0, str(TESTS / extra))


def example_command(name: str, *args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / name), *args]


def run_example(
    name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        example_command(name, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, **(env or {})),
        cwd=REPO,
    )


def start_example(name: str, *args: str, env: dict[str, str] | None = None) -> Any:
    """The example in the background; stdout and stderr in pipes (text)."""
    return subprocess.Popen(
        example_command(name, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
        cwd=REPO,
    )


def stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> tuple[str, str]:
    """SIGTERM (then SIGKILL) the example by its PID; its output."""
    if proc.poll() is None:
        proc.terminate()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=timeout)
    return out, err


def read_line_with(proc: subprocess.Popen[str], needle: str, timeout: float = 30.0) -> str:
    """Wait for a stdout line containing ``needle``.

    Reads the pipe's descriptor directly: ``select`` on a text-mode pipe with
    ``readline`` misses lines already pulled into the file object's buffer."""
    import os
    import selectors
    import time

    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    pending = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace") + "\n"
                seen.append(line)
                if needle in line:
                    return line
    out, err = stop(proc)
    raise AssertionError(
        f"no {needle!r} from {proc.args}: stdout {''.join(seen) + out!r}, stderr {err!r}"
    )
