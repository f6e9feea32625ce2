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

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netfixtures import require_integration, require_netns, stop_all_peers
from xdpd_harness import DaemonProcess, daemon_executable

from xdpstackd.netns import VethPair, cleanup_stale, create_veth_pair, destroy, unique_prefix

# pytest imports every conftest.py outside a package as the module "conftest", so once
# this one is loaded, ``from conftest import ...`` elsewhere finds it instead of
# tests/conftest.py: re-export that one's helpers so such imports keep working.
from netfixtures import _root_conftest  # noqa: E402  isort: skip

AF_XDP = _root_conftest.AF_XDP
running_under_ci = _root_conftest.running_under_ci
integration_unavailable_reason = _root_conftest.integration_unavailable_reason

DAEMONS_KEY = pytest.StashKey[list[DaemonProcess]]()
_stale_cleaned = False


def _require_daemon() -> None:
    require_netns()
    if daemon_executable() is None:
        require_integration("xdpstackd is not installed in .venv (run scripts/setup.sh)")
    global _stale_cleaned
    if not _stale_cleaned:
        _stale_cleaned = True
        cleanup_stale()  # leftovers of test processes that died


def _remember(node: pytest.Item | pytest.Collector, daemon: DaemonProcess) -> None:
    node.stash.setdefault(DAEMONS_KEY, []).append(daemon)


class DaemonLab:
    """Veth pairs and daemons on them; everything removed by :meth:`close`."""

    def __init__(self, node: pytest.Item | pytest.Collector, workdir: Path) -> None:
        self.node = node
        self.workdir = workdir
        self.pairs: list[VethPair] = []
        self.daemons: list[DaemonProcess] = []

    def pair(self, **kwargs: Any) -> VethPair:
        kwargs.setdefault("prefix", unique_prefix("it"))
        kwargs.setdefault("host_ns", "new")
        pair = create_veth_pair(**kwargs)
        self.pairs.append(pair)
        return pair

    def daemon(
        self, pair: VethPair | None = None, *, name: str | None = None, start: bool = True, **kw: Any
    ) -> DaemonProcess:
        """A daemon on ``pair`` (a new pair if None), started unless ``start=False``."""
        if pair is None:
            pair = self.pair()
        name = name or f"xdpstackd-{len(self.daemons) + 1}"
        daemon = DaemonProcess(pair=pair, workdir=self.workdir, name=name, **kw)
        self.daemons.append(daemon)
        _remember(self.node, daemon)
        if start:
            daemon.start()
        return daemon

    def close(self) -> None:
        """Stop every daemon still running (SIGTERM, status 0, no XDP left: asserted),
        then remove everything, whatever happened. Raises the first failure."""
        errors: list[BaseException] = []
        stop_all_peers()
        for daemon in reversed(self.daemons):
            try:
                if daemon.running:
                    daemon.stop_and_check()
            except BaseException as exc:  # noqa: BLE001 (collected, re-raised below)
                errors.append(exc)
            finally:
                with contextlib.suppress(Exception):
                    daemon.force_cleanup()
        for pair in reversed(self.pairs):
            try:
                destroy(pair)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
        if errors:
            raise errors[0]


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
