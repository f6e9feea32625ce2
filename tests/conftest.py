"""Shared pytest configuration for xdpstack's tests.

Markers (declared in ``pyproject.toml``; ``--strict-markers`` rejects unknown ones):

``@pytest.mark.integration``
    The test needs the real machine: root, AF_XDP sockets, network namespaces and veth
    pairs (created by the test, with unique names). Before such a test runs, this file
    checks those prerequisites. When one is missing the test is *skipped* with the
    reason on a developer machine, but *fails* under CI (environment ``CI=true``), so a
    CI run cannot pass by quietly skipping its integration tests.

``@pytest.mark.slow``
    A long-running test (large transfers, long virtual-time runs).

Integration tests and fixtures that find some further prerequisite missing (a kernel
feature, a tool) call :func:`require_integration` with the reason, which applies the
same rule: skip locally, fail under CI::

    from integration_support import require_integration

    if shutil.which("ethtool") is None:
        require_integration("ethtool is not installed")
"""

from __future__ import annotations

import pytest
from integration_support import (  # noqa: F401  (re-exported for older imports)
    AF_XDP,
    integration_unavailable_reason,
    require_integration,
    running_under_ci,
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is not None:
        reason = integration_unavailable_reason()
        if reason is not None:
            require_integration(reason)
