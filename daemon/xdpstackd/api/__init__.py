"""The daemon's Unix-socket API: :class:`ApiServer` serves an Engine to client processes
speaking :mod:`xdpstack.protocol`; :class:`Session` is one client."""

from xdpstackd.api.server import ApiServer
from xdpstackd.api.session import Session

__all__ = ["ApiServer", "Session"]
