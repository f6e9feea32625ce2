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

    from conftest import require_integration

    if shutil.which("ethtool") is None:
        require_integration("ethtool is not installed")
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
from typing import NoReturn

import pytest

#: Address family number of AF_XDP sockets (Linux); older Pythons lack the constant.
AF_XDP = getattr(socket, "AF_XDP", 44)


def running_under_ci() -> bool:
    """True when the environment says this is a CI run (``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_integration(reason: str) -> NoReturn:
    """Stop an integration test that cannot run here, saying why.

    Skips the test with ``reason`` on a developer machine; under ``CI=true`` fails it
    instead, because CI machines are meant to run every integration test.
    """
    if running_under_ci():
        pytest.fail(f"integration test cannot run under CI=true: {reason}", pytrace=False)
    pytest.skip(f"integration test cannot run here: {reason}")


@functools.cache
def integration_unavailable_reason() -> str | None:
    """Why integration tests cannot run on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, XDP and AF_XDP)"
    try:
        sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
    except OSError as exc:
        return f"AF_XDP sockets are unavailable: {exc.strerror or exc}"
    sock.close()
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("integration") is not None:
        reason = integration_unavailable_reason()
        if reason is not None:
            require_integration(reason)
