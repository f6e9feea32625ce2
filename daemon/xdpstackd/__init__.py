"""xdpstackd: the xdpstack daemon, a userspace TCP/IP stack for Linux.

The daemon hosts the sans-IO TCP/IP core (:mod:`xdpstackd.inetstack`). The AF_XDP
datapath, the XDP steering program and the client-facing Unix socket are not part of
this release; :mod:`xdpstackd.simnet` wires stacks together over a simulated network
instead. See ``docs/ARCHITECTURE.md`` for the map of the code.
"""

__version__ = "0.1.0"
