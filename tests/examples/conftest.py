"""Fixtures for the examples' tests (helpers in ``examples_support``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import examples_support  # noqa: F401  (puts tests/api, highlevel, integration on sys.path)
import pytest
from farapps import FarApps
from harness import Daemon


@pytest.fixture
def sim_daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(str(tmp_path / "xdpstackd.sock")).start()
    try:
        yield d
        d.check_healthy()
    finally:
        d.stop()


@pytest.fixture
def far(sim_daemon: Daemon) -> FarApps:
    return FarApps(sim_daemon)


@pytest.fixture
def real_daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The real daemon on a fresh veth pair (integration tests only)."""
    from integration_support import require_integration
    from netfixtures import require_netns
    from xdpd_harness import DaemonLab, daemon_executable

    require_netns()
    if daemon_executable() is None:
        require_integration("xdpstackd is not installed in .venv (run scripts/setup.sh)")
    lab = DaemonLab(request.node, tmp_path)
    try:
        daemon = lab.daemon(name="xdpstackd")
        yield daemon
    except BaseException:
        if lab.daemons:
            print(lab.daemons[0].log_tail(80), file=sys.stderr)
        raise
    finally:
        lab.close()
