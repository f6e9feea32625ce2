"""xdpstack: the client library for applications using the xdpstack daemon.

Applications import this package to open TCP sockets on the userspace stack run by
``xdpstackd``, through calls that mirror ``socket / bind / listen / accept / connect /
push / pop / close``, over the daemon's Unix socket::

    import xdpstack

    with xdpstack.connect() as lib:  # $XDPSTACK_SOCKET or DEFAULT_SOCKET_PATH
        qd = lib.socket()
        lib.wait(lib.connect(qd, ("10.0.0.2", 80)))
        lib.wait(lib.push(qd, b"GET / HTTP/1.0\r\n\r\n"))
        reply = lib.wait(lib.pop(qd)).data

The library is :mod:`xdpstack.lib` (a :class:`Lib` is not thread-safe); the wire format
is :mod:`xdpstack.protocol`; ``xdpstackctl`` is :mod:`xdpstack.ctl`.
"""

import os

__version__ = "0.1.0"

#: Where the daemon listens unless ``$XDPSTACK_SOCKET`` says otherwise.
DEFAULT_SOCKET_PATH = "/run/xdpstack/xdpstackd.sock"


def default_socket_path() -> str:
    """Return ``$XDPSTACK_SOCKET`` if set and non-empty, else :data:`DEFAULT_SOCKET_PATH`."""
    return os.environ.get("XDPSTACK_SOCKET") or DEFAULT_SOCKET_PATH


from xdpstack.lib import Lib, OpCode, QResult, connect  # noqa: E402
from xdpstack.protocol import ProtocolError  # noqa: E402

__all__ = [
    "DEFAULT_SOCKET_PATH",
    "Lib",
    "OpCode",
    "ProtocolError",
    "QResult",
    "__version__",
    "connect",
    "default_socket_path",
]
