"""Whether integration tests can run here, and what to do when they cannot.

Lives outside ``conftest.py`` so that any test module can ``from integration_support
import require_integration``: pytest imports every non-package ``conftest.py`` under the
one module name ``conftest``, so ``from conftest import`` finds whichever came last.
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
