"""Fixtures for the API tests: a daemon (Engine + simulated link + ApiServer) per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import Daemon

import xdpstack


@pytest.fixture
def daemon(tmp_path) -> Iterator[Daemon]:
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
