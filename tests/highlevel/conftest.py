"""Fixtures for the high-level API tests: the API tests' daemon (Engine + simulated link +
ApiServer in a loop thread, ``tests/api/harness.py``), with ``$XDPSTACK_SOCKET`` pointing
at it so that ``xdpstack.socket`` and ``xdpstack.aio`` find it as applications would."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from farapps import FarApps
from harness import Daemon

from xdpstack import socket as xsocket


def _daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_uvloop: bool) -> Iterator[Daemon]:
    d = Daemon(str(tmp_path / "xdpstackd.sock"), use_uvloop=use_uvloop).start()
    monkeypatch.setenv("XDPSTACK_SOCKET", d.path)
    xsocket.reset_default_lib()
    try:
        yield d
        xsocket.reset_default_lib()
        d.check_healthy()
    finally:
        xsocket.reset_default_lib()
        d.stop()


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    """A daemon on a simulated link; ``$XDPSTACK_SOCKET`` names it."""
    yield from _daemon(tmp_path, monkeypatch, use_uvloop=True)


@pytest.fixture
def far(daemon: Daemon) -> FarApps:
    """Event-driven applications on the far end's stack (10.0.0.2)."""
    return FarApps(daemon)
