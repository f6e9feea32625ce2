"""cffi build script for ``xdpstackd.inetstack._checksum`` (API mode, out-of-line).

Built at install time through ``cffi_modules`` in ``setup.py``; by hand::

    .venv/bin/python daemon/xdpstackd/inetstack/_checksum_build.py

The stack does not depend on it: ``layer3/checksum.py`` falls back to pure Python when
the module is not built.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef(
    "uint32_t xdps_ones_complement_sum(const uint8_t *data, size_t len, uint32_t initial);"
)
ffibuilder.set_source(
    "xdpstackd.inetstack._checksum",
    '#include "csum.h"',
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2"],
)

if __name__ == "__main__":
    import os

    os.chdir(HERE.parents[1])  # daemon/: the package root, so the module lands in place
    ffibuilder.compile(verbose=False)
