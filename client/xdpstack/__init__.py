"""xdpstack: the client library for applications using the xdpstack daemon.

Applications will import this package to open TCP sockets on the userspace stack run
by ``xdpstackd``, through calls that mirror ``socket / bind / listen / accept /
connect / push / pop / close``, over the daemon's Unix socket. This release carries
only the package skeleton and the ``xdpstackctl`` command (:mod:`xdpstack.ctl`); the
library API and the daemon protocol arrive with the daemon.
"""

import os

__version__ = "0.1.0"

#: Where the daemon listens unless ``$XDPSTACK_SOCKET`` says otherwise.
DEFAULT_SOCKET_PATH = "/run/xdpstack/xdpstackd.sock"


def default_socket_path() -> str:
    """Return ``$XDPSTACK_SOCKET`` if set and non-empty, else :data:`DEFAULT_SOCKET_PATH`."""
    return os.environ.get("XDPSTACK_SOCKET") or DEFAULT_SOCKET_PATH
