"""Fixtures for the hostile tests: a real ``xdpstackd`` on a veth pair (the integration
harness, ``tests/integration/xdpd_harness.py``) attacked from the peer namespace, and the
simulated-datapath daemon of ``tests/api/harness.py`` for API-only abuse.

``hostile_daemon(config_text=...)`` (per module: ``module_lab``) starts a daemon; teardown
stops it with SIGTERM and asserts exit status 0 and no XDP program left, as the
integration tests do. A failing test's report carries the daemons' logs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for _sub in ("integration", "api"):
    _path = str(HERE.parent / _sub)
    if _path not in sys.path:
        sys.path.insert(0, _path)
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from integration_support import require_integration  # noqa: E402
from netfixtures import require_netns  # noqa: E402
from xdpd_harness import DAEMONS_KEY, DaemonLab, DaemonProcess, daemon_executable  # noqa: E402

from xdpstackd.netns import cleanup_stale  # noqa: E402

_stale_cleaned = False


def require_daemon() -> None:
    require_netns()
    if daemon_executable() is None:
        require_integration("xdpstackd is not installed in .venv (run scripts/setup.sh)")
    global _stale_cleaned
    if not _stale_cleaned:
        _stale_cleaned = True
        cleanup_stale()


@pytest.fixture(scope="module")
def module_lab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonLab]:
    """Veth pairs and daemons shared by the tests of one module."""
    require_daemon()
    lab = DaemonLab(request.node, tmp_path_factory.mktemp("hostile"))
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def daemon_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DaemonLab]:
    require_daemon()
    lab = DaemonLab(request.node, tmp_path)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture(autouse=True)
def _stop_kernel_peers() -> Iterator[None]:
    """Kernel peers a test started do not outlive it; a module's (started by a module
    fixture before the test) stay until the module's lab closes."""
    import netfixtures

    with netfixtures._live_lock:
        before = set(map(id, netfixtures._live_peers))
    yield
    with netfixtures._live_lock:
        started = [p for p in netfixtures._live_peers if id(p) not in before]
    for peer in started:
        try:
            peer.stop()
        except Exception:
            pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    daemons: list[DaemonProcess] = list(item.stash.get(DAEMONS_KEY, []))
    module = item.getparent(pytest.Module)
    if module is not None:
        daemons += module.stash.get(DAEMONS_KEY, [])
    for daemon in daemons:
        pid = daemon.proc.pid if daemon.proc is not None else None
        report.sections.append((f"{daemon.name} log (pid {pid})", daemon.log_tail()))
