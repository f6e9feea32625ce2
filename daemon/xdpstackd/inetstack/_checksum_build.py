"""cffi build script for ``xdpstackd.inetstack._checksum`` (API mode, out-of-line).

Built at install time through ``cffi_modules`` in ``setup.py``; by hand::

    .venv/bin/python daemon/xdpstackd/inetstack/_checksum_build.py

The stack does not depend on it: ``layer3/checksum.py`` and ``layer4/tcp/syncookie.py``
fall back to pure Python when the module is not built.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef(
    """
    uint32_t xdps_ones_complement_sum(const uint8_t *data, size_t len, uint32_t initial);
    uint32_t xdps_syncookie(uint64_t k0, uint64_t k1, uint32_t saddr, uint32_t daddr,
                            uint16_t sport, uint16_t dport, uint32_t peer_isn, uint32_t t,
                            uint32_t mss_index);
    uint32_t xdps_syncookie_mss_index(uint32_t mss);
    uint64_t xdps_siphash24(uint64_t k0, uint64_t k1, const uint8_t *data, size_t len);
    """
)
# syncookie.h is shared with the XDP program (bpf/xdpstack.bpf.c): SYN cookies computed
# here and in XDP must agree bit for bit.
ffibuilder.set_source(
    "xdpstackd.inetstack._checksum",
    '#include "csum.h"\n#include "syncookie.h"',
    include_dirs=[str(HERE), str(HERE / "layer4" / "tcp")],
    extra_compile_args=["-O2"],
)

if __name__ == "__main__":
    import os

    os.chdir(HERE.parents[1])  # daemon/: the package root, so the module lands in place
    ffibuilder.compile(verbose=False)
