"""cffi build script for ``xdpstackd.datapath._xsk`` (API mode, out-of-line).

Run at install time through ``cffi_modules`` in ``setup.py`` (``pip install -e .``, which
scripts/setup.sh does); by hand for a quick rebuild in place::

    .venv/bin/python daemon/xdpstackd/datapath/_xsk_build.py

The C source is ``_xsk.c`` next to this file; ``CDEF`` repeats its API declarations.
It needs gcc, ``<linux/if_xdp.h>`` (Debian's linux-libc-dev) and the Python headers
(``xsk_tx_list`` reads a list of frames with the C API), nothing else.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
MODULE = "xdpstackd.datapath._xsk"

CDEF = """
#define XSK_MODE_AUTO 0
#define XSK_MODE_COPY 1
#define XSK_MODE_ZEROCOPY 2
#define XSK_RING_FILL 0
#define XSK_RING_COMP 1
#define XSK_RING_RX 2
#define XSK_RING_TX 3
#define XDP_RING_NEED_WAKEUP 1
#define XDP_PACKET_HEADROOM 256

struct xsk_counters {
    uint64_t rx_frames;
    uint64_t rx_bytes;
    uint64_t rx_truncated;
    uint64_t tx_frames;
    uint64_t tx_bytes;
    uint64_t tx_completed;
    uint64_t tx_dropped;
    uint64_t tx_oversize;
    uint64_t tx_no_frame;
    uint64_t tx_ring_full;
    uint64_t fill_starved;
    uint64_t rx_wakeups;
    uint64_t tx_wakeups;
    uint64_t tx_kick_errors;
    int64_t last_kick_errno;
};

struct xsk_state {
    uint32_t total_frames;
    uint32_t free_frames;
    uint32_t rx_outstanding;
    uint32_t tx_outstanding;
    uint32_t fill_target;
    uint32_t fill_ring_pending;
    uint32_t rx_ring_pending;
    uint32_t tx_ring_pending;
    uint32_t comp_ring_pending;
    uint32_t fill_flags;
    uint32_t tx_flags;
    int zerocopy;
    int need_wakeup;
};

struct xsk_kernel_stats {
    uint64_t rx_dropped;
    uint64_t rx_invalid_descs;
    uint64_t tx_invalid_descs;
    uint64_t rx_ring_full;
    uint64_t rx_fill_ring_empty_descs;
    uint64_t tx_ring_empty_descs;
};

struct xsk_ctx;

int xsk_open(const char *ifname, uint32_t queue_id, uint32_t nframes, uint32_t frame_size,
             uint32_t ring_size, int mode, int need_wakeup, int busy_wait_ms,
             struct xsk_ctx **out, char *stage, size_t stage_len);
void xsk_close(struct xsk_ctx *x);
int xsk_fd(const struct xsk_ctx *x);
uint32_t xsk_max_len(const struct xsk_ctx *x);
int xsk_rx_batch(struct xsk_ctx *x, char *buf, uint32_t *lens, uint32_t max);
int xsk_tx_batch(struct xsk_ctx *x, const char *data, const uint32_t *lens, uint32_t n);
int xsk_tx_list(struct xsk_ctx *x, void *frames, uint32_t start, uint32_t limit,
                uint32_t *queued);
uint32_t xsk_reclaim(struct xsk_ctx *x);
int xsk_kick_tx(struct xsk_ctx *x);
void xsk_get_counters(const struct xsk_ctx *x, struct xsk_counters *out);
void xsk_get_state(struct xsk_ctx *x, struct xsk_state *s);
int xsk_get_kernel_stats(const struct xsk_ctx *x, struct xsk_kernel_stats *out);
int xsk_audit(struct xsk_ctx *x);
void xsk_debug_set_ring_flags(struct xsk_ctx *x, int ring, uint32_t flags);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    MODULE,
    (HERE / "_xsk.c").read_text(),
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    # The stable ABI as of 3.11 (still an abi3 module): xsk_tx_list reads frames through
    # the buffer protocol, which entered the limited API in 3.11 (the project needs 3.11).
    define_macros=[("Py_LIMITED_API", "0x030B0000")],
)

if __name__ == "__main__":
    # Build in place. Not with tmpdir=daemon/: the generated C file would be
    # xdpstackd/datapath/_xsk.c, overwriting the hand-written source.
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        built = Path(ffibuilder.compile(tmpdir=tmp, verbose=True))
        # The name pip's build gives it (cffi builds for the limited API); a
        # version-tagged copy would shadow later pip builds, so none is left behind.
        for stale in HERE.glob("_xsk.cpython-*.so"):
            stale.unlink()
        shutil.copy2(built, HERE / "_xsk.abi3.so")
        print(f"built {HERE / '_xsk.abi3.so'}")
