/*
 * _xsk.c: a small AF_XDP socket against the kernel UAPI (<linux/if_xdp.h>), no libxdp/libbpf.
 *
 * Built by _xsk_build.py into the cffi extension xdpstackd.datapath._xsk (API mode,
 * out-of-line); xsk.py wraps it as XskSocket. The declarations cffi sees are in
 * _xsk_build.py (CDEF) and must match the ones marked "API" below.
 *
 * One socket owns one UMEM of `nframes` frames of `frame_size` bytes (aligned chunk mode,
 * frame_size a power of two) and the four rings:
 *
 *   fill ring  (user produces, kernel consumes): empty frames for the kernel to receive into
 *   rx ring    (kernel produces, user consumes): received frames (addr, len)
 *   tx ring    (user produces, kernel consumes): frames to send
 *   completion (kernel produces, user consumes): sent frames, free again
 *
 * Frame ownership, kept exact in user space (xsk_audit checks it):
 *
 *   n_free          frames on the free stack, ours
 *   rx_outstanding  frames given to the kernel for reception: in the fill ring, held by the
 *                   kernel between the fill and rx rings, or waiting in the rx ring
 *   tx_outstanding  frames in the tx ring or sent and waiting in the completion ring
 *
 *   n_free + rx_outstanding + tx_outstanding == nframes, always.
 *
 * Reception and transmission share the UMEM: frames handed to the kernel for reception
 * (rx_outstanding) are capped at fill_target, which is what the fill and rx rings can hold
 * together (2 * ring size) less a reserve for transmission (ring size, at most half the
 * UMEM); the rest serve transmission. The fill ring is topped up to that cap, or to what
 * it and the free frames allow, on every rx batch, including the frames still waiting in
 * the rx ring, so a burst finds a full fill ring whenever we ran since it began. A
 * received frame is copied out and its frame goes straight back to the fill ring.
 *
 * Transmission takes a Python list of frames (bytes, bytearray or any contiguous buffer)
 * and copies each once into its UMEM frame. A frame that finds no free frame or tx slot,
 * even after a kick and a reclaim, is not dropped: the call stops there and says how many
 * it consumed, and the caller keeps the rest for later (xsk.py's transmit queue).
 *
 * Memory ordering (the rings are shared with the kernel, which runs on other CPUs): a
 * consumer reads the producer index with acquire before reading descriptors and publishes
 * its consumer index with release after reading them; a producer writes descriptors, then
 * publishes the producer index with release, and reads the consumer index with acquire
 * before reusing slots. Before testing a ring's need_wakeup flag after publishing, a full
 * fence orders the store of the producer index before the load of the flag.
 *
 * Not thread-safe: one thread drives one socket (the daemon's event loop).
 */
#include <Python.h> /* already included by cffi; for xsk_tx_list, which reads a list */
#include <errno.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif
#ifndef XDP_PACKET_HEADROOM
#define XDP_PACKET_HEADROOM 256
#endif

/* ---- API: shared with the cdef in _xsk_build.py ---------------------------------------- */

#define XSK_MODE_AUTO 0
#define XSK_MODE_COPY 1
#define XSK_MODE_ZEROCOPY 2

#define XSK_RING_FILL 0
#define XSK_RING_COMP 1
#define XSK_RING_RX 2
#define XSK_RING_TX 3

struct xsk_counters {
    uint64_t rx_frames;      /* frames received and copied out */
    uint64_t rx_bytes;
    uint64_t rx_truncated;   /* descriptors longer than the frame (never expected) */
    uint64_t tx_frames;      /* frames queued on the tx ring */
    uint64_t tx_bytes;
    uint64_t tx_completed;   /* frames the kernel handed back on the completion ring */
    uint64_t tx_dropped;     /* frames not queued: tx_oversize + tx_no_frame + tx_ring_full */
    uint64_t tx_oversize;    /* empty, larger than max_frame_bytes, or not a buffer */
    uint64_t tx_no_frame;    /* xsk_tx_batch: no free UMEM frame; xsk_tx_list: times it
                                stopped for want of a frame (the frames are not dropped) */
    uint64_t tx_ring_full;   /* the same for a free tx ring slot */
    uint64_t fill_starved;   /* top-ups that could not bring the fill ring to its target */
    uint64_t rx_wakeups;     /* recvfrom() kicks because the fill ring asked for a wakeup */
    uint64_t tx_wakeups;     /* sendto() kicks */
    uint64_t tx_kick_errors; /* sendto() failures other than EAGAIN/ENOBUFS/EBUSY/ENETDOWN */
    int64_t last_kick_errno;
};

struct xsk_state {
    uint32_t total_frames;
    uint32_t free_frames;
    uint32_t rx_outstanding;
    uint32_t tx_outstanding;
    uint32_t fill_target;
    uint32_t fill_ring_pending; /* fill entries the kernel has not consumed yet */
    uint32_t rx_ring_pending;   /* rx entries waiting for us */
    uint32_t tx_ring_pending;   /* tx entries the kernel has not consumed yet */
    uint32_t comp_ring_pending; /* completions waiting for us */
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

/* ---- implementation -------------------------------------------------------------------- */

struct xsk_ring {
    uint32_t *producer;
    uint32_t *consumer;
    uint32_t *flags;
    void *descs; /* struct xdp_desc[] (rx, tx) or uint64_t[] (fill, completion) */
    uint32_t size;
    uint32_t mask;
    uint32_t prod; /* producer rings: our producer index; consumer rings: last seen */
    uint32_t cons; /* consumer rings: our consumer index; producer rings: last seen */
    void *map;
    size_t map_len;
};

struct xsk_ctx {
    int fd;
    int zerocopy;
    int need_wakeup;
    uint32_t nframes;
    uint32_t frame_size;
    uint32_t max_len; /* frame_size - XDP_PACKET_HEADROOM */
    uint32_t fill_target;
    uint8_t *umem;
    size_t umem_len;
    struct xsk_ring fill, comp, rx, tx;
    uint64_t *free_stack;
    uint32_t n_free;
    uint32_t rx_outstanding;
    uint32_t tx_outstanding;
    struct xsk_counters c;
};

static inline uint32_t load_acquire(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_release(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static inline int ring_needs_wakeup(const struct xsk_ring *r)
{
    /* Order our earlier producer/consumer stores before this load (store->load needs a full
     * fence); the kernel sets the flag and then re-checks the ring on its side. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return __atomic_load_n(r->flags, __ATOMIC_RELAXED) & XDP_RING_NEED_WAKEUP;
}

/* Free slots in a producer ring. */
static inline uint32_t prod_free(struct xsk_ring *r)
{
    r->cons = load_acquire(r->consumer);
    return r->size - (r->prod - r->cons);
}

/* Entries waiting in a consumer ring. */
static inline uint32_t cons_avail(struct xsk_ring *r)
{
    r->prod = load_acquire(r->producer);
    return r->prod - r->cons;
}

static inline uint64_t frame_base(const struct xsk_ctx *x, uint64_t addr)
{
    return addr & ~(uint64_t)(x->frame_size - 1);
}

/* Move frames from the free stack to the fill ring while it has room, until
 * rx_outstanding reaches fill_target. Returns frames added. */
static uint32_t fill_top_up(struct xsk_ctx *x)
{
    if (x->rx_outstanding >= x->fill_target)
        return 0;
    uint32_t want = x->fill_target - x->rx_outstanding;
    uint32_t room = prod_free(&x->fill);
    uint32_t n = want < room ? want : room;
    if (n > x->n_free) {
        n = x->n_free;
        if (room > n)
            x->c.fill_starved++;
    }
    if (n == 0)
        return 0;
    uint64_t *ring = x->fill.descs;
    for (uint32_t i = 0; i < n; i++)
        ring[(x->fill.prod + i) & x->fill.mask] = x->free_stack[--x->n_free];
    x->fill.prod += n;
    store_release(x->fill.producer, x->fill.prod);
    x->rx_outstanding += n;
    return n;
}

static void rx_wakeup_if_needed(struct xsk_ctx *x)
{
    if (x->need_wakeup && ring_needs_wakeup(&x->fill)) {
        x->c.rx_wakeups++;
        (void)recvfrom(x->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
    }
}

/* API: move completed tx frames back to the free stack; returns the number reclaimed. */
uint32_t xsk_reclaim(struct xsk_ctx *x)
{
    uint32_t n = cons_avail(&x->comp);
    if (n == 0)
        return 0;
    const uint64_t *ring = x->comp.descs;
    for (uint32_t i = 0; i < n; i++)
        x->free_stack[x->n_free++] = frame_base(x, ring[(x->comp.cons + i) & x->comp.mask]);
    x->comp.cons += n;
    store_release(x->comp.consumer, x->comp.cons);
    x->tx_outstanding -= n;
    x->c.tx_completed += n;
    /* Reception may have been short of frames (only when nframes is small). */
    if (x->rx_outstanding < x->fill_target && fill_top_up(x))
        rx_wakeup_if_needed(x);
    return n;
}

/* API: have the kernel process the tx ring when it asks to be woken up (always in copy
 * mode, where sendto() is what transmits). Returns 0, or -errno of a hard failure. */
int xsk_kick_tx(struct xsk_ctx *x)
{
    /* Copy mode sends a bounded batch per sendto() (32 frames by default) and says EAGAIN
     * when more remain: go on while that makes progress. */
    for (int round = 0; round < 4096; round++) {
        if (x->tx.prod == load_acquire(x->tx.consumer))
            return 0; /* the kernel has taken every entry */
        if (x->need_wakeup && !ring_needs_wakeup(&x->tx))
            return 0;
        uint32_t before = load_acquire(x->tx.consumer);
        x->c.tx_wakeups++;
        if (sendto(x->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0) {
            if (x->zerocopy)
                return 0; /* the driver's NAPI runs the ring from here */
            continue;
        }
        int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK) {
            if (load_acquire(x->tx.consumer) != before)
                continue;
            /* No progress: usually the completion ring is full. Make room and retry. */
            if (xsk_reclaim(x))
                continue;
            return 0;
        }
        if (err == ENOBUFS || err == EBUSY || err == ENETDOWN || err == EINTR)
            return 0; /* transient: the entries stay queued for the next kick */
        x->c.tx_kick_errors++;
        x->c.last_kick_errno = err;
        return -err;
    }
    return 0;
}

/* API: receive up to `max` frames. Frame i is copied to buf at the sum of lens[0..i) and
 * lens[i] is set; buf must hold max * max_len bytes. Each frame goes straight back to the
 * fill ring. Returns the number of frames. */
int xsk_rx_batch(struct xsk_ctx *x, char *buf, uint32_t *lens, uint32_t max)
{
    uint32_t n = cons_avail(&x->rx);
    if (n > max)
        n = max;
    if (n == 0) {
        fill_top_up(x);
        rx_wakeup_if_needed(x);
        return 0;
    }
    /* The n frames came out of the fill budget, so the fill ring has room for them. */
    uint32_t room = prod_free(&x->fill);
    const struct xdp_desc *rxr = x->rx.descs;
    uint64_t *fr = x->fill.descs;
    size_t off = 0;
    uint32_t refilled = 0;
    for (uint32_t i = 0; i < n; i++) {
        const struct xdp_desc *d = &rxr[(x->rx.cons + i) & x->rx.mask];
        uint64_t addr = d->addr;
        uint32_t len = d->len;
        if (len > x->max_len) {
            len = x->max_len;
            x->c.rx_truncated++;
        }
        memcpy(buf + off, x->umem + addr, len);
        lens[i] = len;
        off += len;
        if (refilled < room)
            fr[(x->fill.prod + refilled++) & x->fill.mask] = frame_base(x, addr);
        else
            x->free_stack[x->n_free++] = frame_base(x, addr);
    }
    x->rx.cons += n;
    store_release(x->rx.consumer, x->rx.cons);
    x->rx_outstanding -= n - refilled;
    if (refilled) {
        x->fill.prod += refilled;
        store_release(x->fill.producer, x->fill.prod);
    }
    x->c.rx_frames += n;
    x->c.rx_bytes += off;
    fill_top_up(x);
    rx_wakeup_if_needed(x);
    return (int)n;
}

/* Room for one more frame on the tx ring: a free UMEM frame and a free slot. When either
 * runs out, publish what is queued, kick and reclaim, as long as that makes progress.
 * Returns 1 with room, 0 without (and counts why in tx_no_frame or tx_ring_full). */
static int tx_make_room(struct xsk_ctx *x, uint32_t *space)
{
    while (*space == 0 || x->n_free == 0) {
        uint32_t free_before = x->n_free, space_before = *space;
        store_release(x->tx.producer, x->tx.prod);
        xsk_kick_tx(x);
        xsk_reclaim(x);
        *space = prod_free(&x->tx);
        if (x->n_free == free_before && *space == space_before) {
            if (x->n_free == 0)
                x->c.tx_no_frame++;
            else
                x->c.tx_ring_full++;
            return 0;
        }
    }
    return 1;
}

static inline void tx_put(struct xsk_ctx *x, const void *src, uint32_t len)
{
    uint64_t addr = x->free_stack[--x->n_free];
    memcpy(x->umem + addr, src, len);
    struct xdp_desc *d = &((struct xdp_desc *)x->tx.descs)[x->tx.prod & x->tx.mask];
    d->addr = addr;
    d->len = len;
    d->options = 0;
    x->tx.prod++;
    x->tx_outstanding++;
    x->c.tx_frames++;
    x->c.tx_bytes += len;
}

/* API: queue n frames, frame i being lens[i] bytes of data at the sum of lens[0..i). Frames
 * that are empty or longer than max_len, or find no free frame or tx slot (after a kick
 * and reclaim), are dropped and counted. Returns frames queued; the rest were dropped. */
int xsk_tx_batch(struct xsk_ctx *x, const char *data, const uint32_t *lens, uint32_t n)
{
    xsk_reclaim(x);
    uint32_t space = prod_free(&x->tx);
    uint32_t start = x->tx.prod;
    size_t off = 0;
    uint32_t queued = 0;
    uint32_t i;
    for (i = 0; i < n; i++) {
        uint32_t len = lens[i];
        const char *src = data + off;
        off += len;
        if (len == 0 || len > x->max_len) {
            x->c.tx_oversize++;
            x->c.tx_dropped++;
            continue;
        }
        if (!tx_make_room(x, &space))
            break;
        tx_put(x, src, len);
        space--;
        queued++;
    }
    if (i < n) {
        /* Out of frames or ring slots: the rest is dropped (oversize ones counted as such;
         * tx_make_room counted the first of the others). */
        uint32_t no_frame = x->n_free == 0;
        for (i++; i < n; i++) {
            if (lens[i] == 0 || lens[i] > x->max_len)
                x->c.tx_oversize++;
            else if (no_frame)
                x->c.tx_no_frame++;
            else
                x->c.tx_ring_full++;
            x->c.tx_dropped++;
        }
        x->c.tx_dropped++; /* the frame that found no room */
    }
    if (x->tx.prod != start) {
        store_release(x->tx.producer, x->tx.prod);
        xsk_kick_tx(x);
    }
    return (int)queued;
}

/* API: queue the frames of the Python list `frames` (passed as its address: the caller
 * holds it alive for the call) from index `start` on, each copied once from its buffer
 * into a UMEM frame; then kick. Frames that are empty, longer than max_len or not a
 * contiguous buffer are dropped and counted (tx_oversize). Stops after `limit` frames
 * queued (0: no limit), or at the first frame that finds no free frame or tx slot even
 * after kicks and reclaims. Returns the index after
 * the last frame consumed (queued or dropped), and the number queued in *queued: the
 * caller keeps frames[return:] to send later. Negative: -errno (not a list). Runs with the
 * GIL held (cffi released it for the call). */
int xsk_tx_list(struct xsk_ctx *x, void *frames, uint32_t start, uint32_t limit,
                uint32_t *queued)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *list = (PyObject *)frames;
    if (!PyList_Check(list)) {
        PyGILState_Release(gil);
        return -EINVAL;
    }
    Py_ssize_t n = PyList_Size(list);
    uint64_t frames_before = x->c.tx_frames;
    xsk_reclaim(x);
    uint32_t space = prod_free(&x->tx);
    uint32_t first_prod = x->tx.prod;
    Py_ssize_t i;
    uint32_t put = 0;
    for (i = start; i < n; i++) {
        if (limit && put == limit)
            break;
        PyObject *f = PyList_GetItem(list, i); /* borrowed */
        const void *src;
        Py_ssize_t len;
        Py_buffer view;
        int have_view = 0;
        if (PyBytes_Check(f)) {
            src = PyBytes_AsString(f);
            len = PyBytes_Size(f);
        } else if (PyByteArray_Check(f)) {
            src = PyByteArray_AsString(f);
            len = PyByteArray_Size(f);
        } else if (PyObject_GetBuffer(f, &view, PyBUF_SIMPLE) == 0) {
            have_view = 1;
            src = view.buf;
            len = view.len;
        } else {
            PyErr_Clear();
            src = NULL;
            len = 0;
        }
        if (len <= 0 || (size_t)len > x->max_len) {
            x->c.tx_oversize++;
            x->c.tx_dropped++;
        } else if (!tx_make_room(x, &space)) {
            if (have_view)
                PyBuffer_Release(&view);
            break;
        } else {
            tx_put(x, src, (uint32_t)len);
            space--;
            put++;
        }
        if (have_view)
            PyBuffer_Release(&view);
    }
    if (x->tx.prod != first_prod) {
        store_release(x->tx.producer, x->tx.prod);
        xsk_kick_tx(x);
    }
    *queued = (uint32_t)(x->c.tx_frames - frames_before);
    PyGILState_Release(gil);
    return (int)i;
}

static void ring_unmap(struct xsk_ring *r)
{
    if (r->map && r->map != MAP_FAILED)
        munmap(r->map, r->map_len);
    r->map = NULL;
}

/* API */
void xsk_close(struct xsk_ctx *x)
{
    if (!x)
        return;
    ring_unmap(&x->rx);
    ring_unmap(&x->tx);
    ring_unmap(&x->fill);
    ring_unmap(&x->comp);
    if (x->fd >= 0)
        close(x->fd);
    if (x->umem && x->umem != MAP_FAILED)
        munmap(x->umem, x->umem_len);
    free(x->free_stack);
    free(x);
}

static int ring_map(int fd, struct xsk_ring *r, const struct xdp_ring_offset *off, uint32_t size,
                    size_t entry, off_t pgoff)
{
    r->map_len = off->desc + (size_t)size * entry;
    r->map = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, pgoff);
    if (r->map == MAP_FAILED) {
        r->map = NULL;
        return -errno;
    }
    uint8_t *base = r->map;
    r->producer = (uint32_t *)(base + off->producer);
    r->consumer = (uint32_t *)(base + off->consumer);
    r->flags = (uint32_t *)(base + off->flags);
    r->descs = base + off->desc;
    r->size = size;
    r->mask = size - 1;
    r->prod = *r->producer;
    r->cons = *r->consumer;
    return 0;
}

static int is_pow2(uint32_t v) { return v && !(v & (v - 1)); }

#define FAIL(what)                                                                         \
    do {                                                                                   \
        err = -errno;                                                                      \
        snprintf(stage, stage_len, "%s", what);                                            \
        goto fail;                                                                         \
    } while (0)

/* API: open and bind an AF_XDP socket on ifname/queue_id. mode: XSK_MODE_*. EBUSY from
 * bind is retried for busy_wait_ms. On success returns 0 and *out; on failure returns
 * -errno and names the failing step in stage. */
int xsk_open(const char *ifname, uint32_t queue_id, uint32_t nframes, uint32_t frame_size,
             uint32_t ring_size, int mode, int need_wakeup, int busy_wait_ms, struct xsk_ctx **out,
             char *stage, size_t stage_len)
{
    int err = 0;
    struct xsk_ctx *x = NULL;
    *out = NULL;
    if (stage_len)
        stage[0] = '\0';
    if (!is_pow2(frame_size) || frame_size <= XDP_PACKET_HEADROOM || !is_pow2(ring_size) ||
        nframes == 0 || (mode != XSK_MODE_AUTO && mode != XSK_MODE_COPY &&
                         mode != XSK_MODE_ZEROCOPY)) {
        snprintf(stage, stage_len, "arguments");
        return -EINVAL;
    }
    unsigned ifindex = if_nametoindex(ifname);
    if (ifindex == 0) {
        err = -errno;
        snprintf(stage, stage_len, "if_nametoindex");
        return err ? err : -ENODEV;
    }

    x = calloc(1, sizeof(*x));
    if (!x) {
        snprintf(stage, stage_len, "calloc");
        return -ENOMEM;
    }
    x->fd = -1;
    x->nframes = nframes;
    x->frame_size = frame_size;
    x->max_len = frame_size - XDP_PACKET_HEADROOM;
    x->need_wakeup = need_wakeup ? 1 : 0;
    /* Reception may hold what the fill and rx rings take together, less a reserve for
     * transmission of one ring (at most half the UMEM). */
    uint32_t tx_reserve = nframes / 2 < ring_size ? nframes / 2 : ring_size;
    x->fill_target = nframes - tx_reserve;
    if (x->fill_target > 2 * ring_size)
        x->fill_target = 2 * ring_size;
    if (x->fill_target == 0)
        x->fill_target = 1;

    x->free_stack = malloc(sizeof(uint64_t) * nframes);
    if (!x->free_stack)
        FAIL("malloc free-frame stack");
    /* Frame 0 on top of the stack: pushed last. */
    for (uint32_t i = 0; i < nframes; i++)
        x->free_stack[i] = (uint64_t)(nframes - 1 - i) * frame_size;
    x->n_free = nframes;

    x->umem_len = (size_t)nframes * frame_size;
    x->umem = mmap(NULL, x->umem_len, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (x->umem == MAP_FAILED) {
        x->umem = NULL;
        FAIL("mmap UMEM");
    }

    x->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (x->fd < 0)
        FAIL("socket(AF_XDP)");

    struct xdp_umem_reg reg;
    memset(&reg, 0, sizeof(reg));
    reg.addr = (uint64_t)(uintptr_t)x->umem;
    reg.len = x->umem_len;
    reg.chunk_size = frame_size;
    reg.headroom = 0;
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof(reg)))
        FAIL("setsockopt XDP_UMEM_REG");
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_FILL_RING, &ring_size, sizeof(ring_size)))
        FAIL("setsockopt XDP_UMEM_FILL_RING");
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, &ring_size, sizeof(ring_size)))
        FAIL("setsockopt XDP_UMEM_COMPLETION_RING");
    if (setsockopt(x->fd, SOL_XDP, XDP_RX_RING, &ring_size, sizeof(ring_size)))
        FAIL("setsockopt XDP_RX_RING");
    if (setsockopt(x->fd, SOL_XDP, XDP_TX_RING, &ring_size, sizeof(ring_size)))
        FAIL("setsockopt XDP_TX_RING");

    struct xdp_mmap_offsets mo;
    socklen_t optlen = sizeof(mo);
    memset(&mo, 0, sizeof(mo));
    if (getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &mo, &optlen))
        FAIL("getsockopt XDP_MMAP_OFFSETS");
    if (optlen != sizeof(mo)) {
        /* Kernels before 5.4 have no ring flags, hence no need_wakeup. */
        errno = EOPNOTSUPP;
        FAIL("getsockopt XDP_MMAP_OFFSETS (kernel too old: no ring flags)");
    }
    if ((err = ring_map(x->fd, &x->rx, &mo.rx, ring_size, sizeof(struct xdp_desc),
                        XDP_PGOFF_RX_RING))) {
        errno = -err;
        FAIL("mmap rx ring");
    }
    if ((err = ring_map(x->fd, &x->tx, &mo.tx, ring_size, sizeof(struct xdp_desc),
                        XDP_PGOFF_TX_RING))) {
        errno = -err;
        FAIL("mmap tx ring");
    }
    if ((err = ring_map(x->fd, &x->fill, &mo.fr, ring_size, sizeof(uint64_t),
                        XDP_UMEM_PGOFF_FILL_RING))) {
        errno = -err;
        FAIL("mmap fill ring");
    }
    if ((err = ring_map(x->fd, &x->comp, &mo.cr, ring_size, sizeof(uint64_t),
                        XDP_UMEM_PGOFF_COMPLETION_RING))) {
        errno = -err;
        FAIL("mmap completion ring");
    }

    /* Fill before bind: a zero-copy driver takes buffers when the queue is set up. */
    fill_top_up(x);
    x->c.fill_starved = 0;

    struct sockaddr_xdp sxdp;
    memset(&sxdp, 0, sizeof(sxdp));
    sxdp.sxdp_family = AF_XDP;
    sxdp.sxdp_ifindex = ifindex;
    sxdp.sxdp_queue_id = queue_id;
    /* Neither XDP_COPY nor XDP_ZEROCOPY: the kernel tries zero-copy, falls back to copy. */
    sxdp.sxdp_flags = mode == XSK_MODE_COPY ? XDP_COPY
                      : mode == XSK_MODE_ZEROCOPY ? XDP_ZEROCOPY
                                                  : 0;
    if (need_wakeup)
        sxdp.sxdp_flags |= XDP_USE_NEED_WAKEUP;
    /* A queue stays busy for a few tens of milliseconds after the socket that had it is
     * closed (the kernel releases the buffer pool from a work queue): retry EBUSY for up to
     * busy_wait_ms. A failed bind leaves the socket unbound and ready for another try. */
    for (int waited = 0;; waited += 10) {
        if (bind(x->fd, (struct sockaddr *)&sxdp, sizeof(sxdp)) == 0)
            break;
        if (errno != EBUSY || waited >= busy_wait_ms)
            FAIL("bind");
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }

    struct xdp_options opts;
    optlen = sizeof(opts);
    memset(&opts, 0, sizeof(opts));
    if (getsockopt(x->fd, SOL_XDP, XDP_OPTIONS, &opts, &optlen))
        FAIL("getsockopt XDP_OPTIONS");
    x->zerocopy = (opts.flags & XDP_OPTIONS_ZEROCOPY) ? 1 : 0;

    /* Zero-copy drivers may want a first wakeup for the fill ring. */
    rx_wakeup_if_needed(x);
    x->c.rx_wakeups = 0;
    *out = x;
    return 0;

fail:
    xsk_close(x);
    return err ? err : -EIO;
}

/* API */
int xsk_fd(const struct xsk_ctx *x) { return x->fd; }
uint32_t xsk_max_len(const struct xsk_ctx *x) { return x->max_len; }

/* API */
void xsk_get_counters(const struct xsk_ctx *x, struct xsk_counters *out) { *out = x->c; }

/* API */
void xsk_get_state(struct xsk_ctx *x, struct xsk_state *s)
{
    s->total_frames = x->nframes;
    s->free_frames = x->n_free;
    s->rx_outstanding = x->rx_outstanding;
    s->tx_outstanding = x->tx_outstanding;
    s->fill_target = x->fill_target;
    s->fill_ring_pending = x->fill.prod - load_acquire(x->fill.consumer);
    s->rx_ring_pending = load_acquire(x->rx.producer) - x->rx.cons;
    s->tx_ring_pending = x->tx.prod - load_acquire(x->tx.consumer);
    s->comp_ring_pending = load_acquire(x->comp.producer) - x->comp.cons;
    s->fill_flags = __atomic_load_n(x->fill.flags, __ATOMIC_RELAXED);
    s->tx_flags = __atomic_load_n(x->tx.flags, __ATOMIC_RELAXED);
    s->zerocopy = x->zerocopy;
    s->need_wakeup = x->need_wakeup;
}

/* API: the kernel's XDP_STATISTICS. Returns 0 or -errno. */
int xsk_get_kernel_stats(const struct xsk_ctx *x, struct xsk_kernel_stats *out)
{
    struct xdp_statistics st;
    socklen_t optlen = sizeof(st);
    memset(&st, 0, sizeof(st));
    memset(out, 0, sizeof(*out));
    if (getsockopt(x->fd, SOL_XDP, XDP_STATISTICS, &st, &optlen))
        return -errno;
    out->rx_dropped = st.rx_dropped;
    out->rx_invalid_descs = st.rx_invalid_descs;
    out->tx_invalid_descs = st.tx_invalid_descs;
    if (optlen >= sizeof(st)) {
        out->rx_ring_full = st.rx_ring_full;
        out->rx_fill_ring_empty_descs = st.rx_fill_ring_empty_descs;
        out->tx_ring_empty_descs = st.tx_ring_empty_descs;
    }
    return 0;
}

/* API: check the frame accounting. Returns 0 when free + rx_outstanding + tx_outstanding
 * equals the total and every free frame is a distinct, aligned frame of the UMEM; otherwise
 * a negative code: -1 sum mismatch, -2 a free address out of range or misaligned, -3 a
 * free frame listed twice, -4 the fill ring holds more than rx_outstanding, -5 the tx ring
 * holds more than tx_outstanding, -6 out of memory. */
int xsk_audit(struct xsk_ctx *x)
{
    if ((uint64_t)x->n_free + x->rx_outstanding + x->tx_outstanding != x->nframes)
        return -1;
    uint8_t *seen = calloc(x->nframes, 1);
    if (!seen)
        return -6;
    int rc = 0;
    for (uint32_t i = 0; i < x->n_free && rc == 0; i++) {
        uint64_t a = x->free_stack[i];
        if (a % x->frame_size || a / x->frame_size >= x->nframes)
            rc = -2;
        else if (seen[a / x->frame_size]++)
            rc = -3;
    }
    free(seen);
    if (rc == 0 && x->fill.prod - load_acquire(x->fill.consumer) > x->rx_outstanding)
        rc = -4;
    if (rc == 0 && x->tx.prod - load_acquire(x->tx.consumer) > x->tx_outstanding)
        rc = -5;
    return rc;
}

/* API, tests only: overwrite a ring's flags word. The kernel sets XDP_RING_NEED_WAKEUP on
 * the fill ring only in zero-copy mode; a test sets it by hand to drive the rx wakeup path
 * in copy mode, where the kernel never touches that word. */
void xsk_debug_set_ring_flags(struct xsk_ctx *x, int ring, uint32_t flags)
{
    struct xsk_ring *r = ring == XSK_RING_FILL   ? &x->fill
                         : ring == XSK_RING_COMP ? &x->comp
                         : ring == XSK_RING_RX   ? &x->rx
                                                 : &x->tx;
    __atomic_store_n(r->flags, flags, __ATOMIC_RELAXED);
}
