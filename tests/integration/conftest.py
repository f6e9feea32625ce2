"""Fixtures for the integration tests: the real ``xdpstackd`` against the kernel's TCP.

``daemon`` (per test) and ``module_daemon`` (per module, for tests that need no isolation
from each other) make a veth pair whose stack end is in a namespace of its own and whose
peer end is in another (both new, unique names), run ``xdpstackd`` on the stack end, wait
until it serves, and give a :class:`~xdpd_harness.DaemonProcess` (paths, addresses,
namespaces, ``pid``, ``client()``, ``stats()``). Teardown sends SIGTERM, asserts exit status
0 within a bound and that ``ip -n <stack_ns> link show <stack_if>`` shows no XDP program,
and always removes the daemon, the kernel peers, the namespaces and the veth pair.

``daemon_lab`` is for tests that start, crash and restart daemons themselves.

When a test fails, the logs of the daemons it used are attached to its report.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from integration_support import require_integration
from netfixtures import require_netns, stop_all_peers
from xdpd_harness import DAEMONS_KEY, DaemonLab, DaemonProcess, daemon_executable

from xdpstackd.netns import cleanup_stale

_stale_cleaned = False


def _require_daemon() -> None:
    require_netns()
    if daemon_executable() is None:
        require_integration("xdpstackd is not installed in .venv (run scripts/setup.sh)")
    global _stale_cleaned
    if not _stale_cleaned:
        _stale_cleaned = True
        cleanup_stale()  # leftovers of test processes that died


@pytest.fixture
def daemon_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DaemonLab]:
    _require_daemon()
    lab = DaemonLab(request.node, tmp_path)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def daemon(daemon_lab: DaemonLab) -> DaemonProcess:
    """A fresh daemon on a fresh veth pair, for this test alone."""
    return daemon_lab.daemon(name="xdpstackd")


@pytest.fixture(scope="module")
def module_daemon(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    """One daemon for the tests of a module that need no isolation from each other."""
    _require_daemon()
    lab = DaemonLab(request.node, tmp_path_factory.mktemp("xdpstackd"))
    try:
        yield lab.daemon(name="xdpstackd-module")
    finally:
        lab.close()


@pytest.fixture(autouse=True)
def _stop_kernel_peers() -> Iterator[None]:
    """Kernel peers a test started do not outlive it (module daemons stay)."""
    yield
    stop_all_peers()


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
