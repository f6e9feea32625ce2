/* SYN cookies (RFC 4987 3.6): one definition for the XDP program and the TCP core.
 *
 * The XDP program (bpf/xdpstack.bpf.c, compiled by bcc with clang -target bpf) answers
 * SYNs over its rate with a cookie SYN-ACK; the core (layer4/tcp/syncookie.py, through the
 * cffi module xdpstackd.inetstack._checksum, or its pure-Python twin) answers SYNs to a
 * full SYN backlog the same way and checks the cookie in the returning ACK. Both must
 * compute the same 32 bits, so both compile this file; nothing here may need libc.
 *
 * cookie = t mod 32 (5 bits) | MSS table index (3 bits) | MAC (24 bits), with
 *   t   = CLOCK_MONOTONIC ns >> 36 (68.7 s periods; bpf_ktime_get_ns() in XDP, the
 *         daemon's time.monotonic() in the core: the same clock)
 *   MAC = SipHash-2-4(key, le64(saddr << 32 | daddr) || le64(sport << 48 | dport << 32 |
 *         peer ISN) || le64(mss index << 32 | t)) mod 2**24
 * where saddr/sport are the client's (the SYN's source) and every value is a host-order
 * integer. The MAC covers the full 32-bit t, so a cookie 32 periods old does not verify.
 */
#ifndef XDPSTACK_SYNCOOKIE_H
#define XDPSTACK_SYNCOOKIE_H

/* The XDP program defines XDPSTACK_BPF before including this (bcc parses with the host's
 * target, so __bpf__ is not a reliable test); it has the kernel's __u64 etc. already. */
#ifndef XDPSTACK_BPF
#include <linux/types.h>
#include <stddef.h>
#endif

/* t = CLOCK_MONOTONIC ns >> XDPS_SYNCOOKIE_PERIOD_SHIFT (PERIOD_SHIFT in syncookie.py) */
#define XDPS_SYNCOOKIE_PERIOD_SHIFT 36

#define XDPS_SIP_ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define XDPS_SIPROUND(v0, v1, v2, v3)                                                         \
    do {                                                                                      \
        v0 += v1;                                                                             \
        v1 = XDPS_SIP_ROTL(v1, 13);                                                           \
        v1 ^= v0;                                                                             \
        v0 = XDPS_SIP_ROTL(v0, 32);                                                           \
        v2 += v3;                                                                             \
        v3 = XDPS_SIP_ROTL(v3, 16);                                                           \
        v3 ^= v2;                                                                             \
        v0 += v3;                                                                             \
        v3 = XDPS_SIP_ROTL(v3, 21);                                                           \
        v3 ^= v0;                                                                             \
        v2 += v1;                                                                             \
        v1 = XDPS_SIP_ROTL(v1, 17);                                                           \
        v1 ^= v2;                                                                             \
        v2 = XDPS_SIP_ROTL(v2, 32);                                                           \
    } while (0)
#define XDPS_SIP_BLOCK(v0, v1, v2, v3, m)                                                     \
    do {                                                                                      \
        v3 ^= (m);                                                                            \
        XDPS_SIPROUND(v0, v1, v2, v3);                                                        \
        XDPS_SIPROUND(v0, v1, v2, v3);                                                        \
        v0 ^= (m);                                                                            \
    } while (0)

/* 3 bits of MSS in the cookie: the largest entry not above the client's MSS (536, the
 * RFC 9293 default, when it sent none). 48 is the core's floor (MIN_SND_MSS); the others
 * are common path MSS values: IPv4 minimum, IPv6-tunnelled, IPsec and PPPoE, Ethernet,
 * jumbo. Keep in step with MSS_TABLE in syncookie.py (a test checks). */
#define XDPS_SYNCOOKIE_MSS_0 48
#define XDPS_SYNCOOKIE_MSS_1 536
#define XDPS_SYNCOOKIE_MSS_2 1220
#define XDPS_SYNCOOKIE_MSS_3 1300
#define XDPS_SYNCOOKIE_MSS_4 1360
#define XDPS_SYNCOOKIE_MSS_5 1452
#define XDPS_SYNCOOKIE_MSS_6 1460
#define XDPS_SYNCOOKIE_MSS_7 8960

static inline __attribute__((always_inline)) __u32 xdps_syncookie_mss_index(__u32 mss)
{
    if (mss >= XDPS_SYNCOOKIE_MSS_7)
        return 7;
    if (mss >= XDPS_SYNCOOKIE_MSS_6)
        return 6;
    if (mss >= XDPS_SYNCOOKIE_MSS_5)
        return 5;
    if (mss >= XDPS_SYNCOOKIE_MSS_4)
        return 4;
    if (mss >= XDPS_SYNCOOKIE_MSS_3)
        return 3;
    if (mss >= XDPS_SYNCOOKIE_MSS_2)
        return 2;
    if (mss >= XDPS_SYNCOOKIE_MSS_1)
        return 1;
    return 0;
}

/* SipHash-2-4 of the 24-byte message le64(m0) || le64(m1) || le64(m2); k0, k1 are the
 * 16-byte key read as two little-endian 64-bit words. Unrolled: no loop for the verifier. */
static inline __attribute__((always_inline)) __u64 xdps_siphash24_3w(__u64 k0, __u64 k1,
                                                                     __u64 m0, __u64 m1,
                                                                     __u64 m2)
{
    __u64 v0 = k0 ^ 0x736f6d6570736575ULL;
    __u64 v1 = k1 ^ 0x646f72616e646f6dULL;
    __u64 v2 = k0 ^ 0x6c7967656e657261ULL;
    __u64 v3 = k1 ^ 0x7465646279746573ULL;
    __u64 last = (__u64)24 << 56;

    XDPS_SIP_BLOCK(v0, v1, v2, v3, m0);
    XDPS_SIP_BLOCK(v0, v1, v2, v3, m1);
    XDPS_SIP_BLOCK(v0, v1, v2, v3, m2);
    XDPS_SIP_BLOCK(v0, v1, v2, v3, last);
    v2 ^= 0xff;
    XDPS_SIPROUND(v0, v1, v2, v3);
    XDPS_SIPROUND(v0, v1, v2, v3);
    XDPS_SIPROUND(v0, v1, v2, v3);
    XDPS_SIPROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

/* The cookie (our ISN) for a SYN from saddr:sport to daddr:dport with ISN peer_isn. */
static inline __attribute__((always_inline)) __u32
xdps_syncookie(__u64 k0, __u64 k1, __u32 saddr, __u32 daddr, __u16 sport, __u16 dport,
               __u32 peer_isn, __u32 t, __u32 mss_index)
{
    __u64 m0 = ((__u64)saddr << 32) | daddr;
    __u64 m1 = ((__u64)sport << 48) | ((__u64)dport << 32) | peer_isn;
    __u64 m2 = ((__u64)(mss_index & 7) << 32) | t;
    __u64 mac = xdps_siphash24_3w(k0, k1, m0, m1, m2);
    return ((t & 31) << 27) | ((mss_index & 7) << 24) | (__u32)(mac & 0xffffff);
}

#ifndef XDPSTACK_BPF
/* Plain SipHash-2-4 of any byte string, for the tests' reference vectors (userspace only). */
static inline __u64 xdps_siphash24(__u64 k0, __u64 k1, const __u8 *data, size_t len)
{
    __u64 v0 = k0 ^ 0x736f6d6570736575ULL;
    __u64 v1 = k1 ^ 0x646f72616e646f6dULL;
    __u64 v2 = k0 ^ 0x6c7967656e657261ULL;
    __u64 v3 = k1 ^ 0x7465646279746573ULL;
    size_t i = 0;
    __u64 m;

    for (; i + 8 <= len; i += 8) {
        m = 0;
        for (int j = 7; j >= 0; j--)
            m = (m << 8) | data[i + j];
        XDPS_SIP_BLOCK(v0, v1, v2, v3, m);
    }
    m = (__u64)(len & 0xff) << 56;
    for (size_t j = 0; i + j < len; j++)
        m |= (__u64)data[i + j] << (8 * j);
    XDPS_SIP_BLOCK(v0, v1, v2, v3, m);
    v2 ^= 0xff;
    XDPS_SIPROUND(v0, v1, v2, v3);
    XDPS_SIPROUND(v0, v1, v2, v3);
    XDPS_SIPROUND(v0, v1, v2, v3);
    XDPS_SIPROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}
#endif

#endif /* XDPSTACK_SYNCOOKIE_H */
