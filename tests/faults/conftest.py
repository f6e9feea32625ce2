"""Fixtures for the fault tests: the real ``xdpstackd`` (started by the integration tests'
harness, ``tests/integration/xdpd_harness.py``) with its datapath's impairment stage
configured, against the kernel's TCP in another namespace.

``fault_lab`` is a :class:`~xdpd_harness.DaemonLab`: ``fault_lab.daemon(config_text=...)``
starts a daemon on a fresh veth pair; teardown stops it (SIGTERM, exit 0, no XDP program
left: asserted) and removes everything. A failing test's report carries the daemons' logs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_support import require_integration
from netfixtures import require_netns, stop_all_peers

_INTEGRATION = str(Path(__file__).resolve().parent.parent / "integration")
if _INTEGRATION not in sys.path:
    sys.path.insert(0, _INTEGRATION)

from xdpd_harness import DAEMONS_KEY, DaemonLab, DaemonProcess, daemon_executable  # noqa: E402

from xdpstackd.netns import cleanup_stale  # noqa: E402

_stale_cleaned = False


@pytest.fixture
def fault_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DaemonLab]:
    require_netns()
    if daemon_executable() is None:
        require_integration("xdpstackd is not installed in .venv (run scripts/setup.sh)")
    global _stale_cleaned
    if not _stale_cleaned:
        _stale_cleaned = True
        cleanup_stale()
    lab = DaemonLab(request.node, tmp_path)
    try:
        yield lab
    finally:
        stop_all_peers()
        lab.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    daemons: list[DaemonProcess] = list(item.stash.get(DAEMONS_KEY, []))
    for daemon in daemons:
        pid = daemon.proc.pid if daemon.proc is not None else None
        report.sections.append((f"{daemon.name} log (pid {pid})", daemon.log_tail()))
