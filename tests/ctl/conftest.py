"""Fixtures for the ``xdpstackctl`` tests: the API tests' daemon without a kernel
(Engine + simulated link + ApiServer in a loop thread, ``tests/api/harness.py``, imported,
not copied), and ``ctl``, which runs ``xdpstackctl`` as a function against it."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

# The API tests' harness is a module outside any package, importable as ``harness`` once
# its directory is on sys.path (as it is for tests/api itself).
_API_TESTS = str(Path(__file__).resolve().parent.parent / "api")
if _API_TESTS not in sys.path:
    sys.path.insert(0, _API_TESTS)

from harness import Daemon  # noqa: E402

import xdpstack  # noqa: E402
from xdpstack import ctl  # noqa: E402


class Result(NamedTuple):
    rc: int
    out: str
    err: str


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(str(tmp_path / "xdpstackd.sock")).start()
    try:
        yield d
        d.check_healthy()
    finally:
        d.stop()


@pytest.fixture
def lib(daemon: Daemon) -> Iterator[xdpstack.Lib]:
    with daemon.connect() as lib:
        yield lib


@pytest.fixture
def ctl_run(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """``ctl_run("ss", "--json")``: ``xdpstackctl --socket <daemon> ss --json`` as a
    function; returns (exit status, stdout, stderr)."""

    def run(*argv: str) -> Result:
        capsys.readouterr()
        rc = ctl.main(["--socket", daemon.path, *argv])
        out, err = capsys.readouterr()
        return Result(rc, out, err)

    return run
