"""Only the C extension lives here; everything else is in pyproject.toml.

``xdpstackd.datapath._xsk`` (the AF_XDP rings, ``daemon/xdpstackd/datapath/_xsk.c``) is built
by cffi in API mode at install time (``pip install -e .``, as scripts/setup.sh does); it needs
gcc and ``<linux/if_xdp.h>`` (Debian's linux-libc-dev). ``xdpstackd.inetstack._checksum``
(the internet checksum for the per-packet path) is built the same way; the stack falls back
to pure Python without it.
"""

from setuptools import setup

setup(
    cffi_modules=[
        "daemon/xdpstackd/datapath/_xsk_build.py:ffibuilder",
        "daemon/xdpstackd/inetstack/_checksum_build.py:ffibuilder",
    ]
)
