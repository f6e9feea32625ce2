// SPDX-License-Identifier: GPL-2.0
/*
 * xdpstack XDP program: steer the daemon's traffic into AF_XDP sockets, pass the rest.
 *
 * Compiled and loaded at daemon start by bcc (daemon/xdpstackd/datapath/xdp_program.py),
 * which supplies these -D options:
 *   XDPSTACK_MAX_QUEUES   entries of the XSKMAP (one AF_XDP socket per rx queue)
 *   XDPSTACK_MAX_STEER    entries of the steering hash
 *
 * Per frame, in order:
 *   1. Ethernet. A frame too short for an Ethernet header is MALFORMED (passed).
 *      VLAN-tagged frames are passed untouched (counted VLAN): the daemon does not do VLANs.
 *   2. ARP (owned-address mode only): a well-formed Ethernet/IPv4 ARP packet whose target
 *      protocol address is the owned address goes to the daemon. Anything else is passed.
 *   3. IPv4: version 4, IHL >= 5, header (with options) inside the frame, total length
 *      >= IHL*4 and not past the end of the frame (trailing padding is allowed). Otherwise
 *      MALFORMED, passed so the kernel decides (and counts) what to do with it.
 *      Fragments are passed (FRAGMENTS): the daemon does not reassemble.
 *   4. ICMP to the owned address (owned mode) goes to the daemon.
 *   5. TCP: the destination port is read from the TCP header at IHL*4 (a TCP header shorter
 *      than 20 bytes is MALFORMED). The steering map is looked up with the exact
 *      {destination address, port}, then with the wildcard {0, port}. A hit goes to the
 *      daemon; in owned mode with XDPSTACK_F_OWNED_TCP_ALL, so does every TCP segment to
 *      the owned address (the daemon answers closed ports with RST itself).
 *   6. Everything else: XDP_PASS.
 *
 * SYN cookies (config in the map syncookie_cfg, off while its ns_per_syn is 0): a SYN
 * without ACK or RST to a steered port (IHL 5) is answered here only when both hold:
 *   - its port is flooded: its bit is set in the map flooded (one bit per port, written by
 *     the daemon's engine from TcpPeer.flooded_ports(): the listener's SYN backlog
 *     overflowed, and the daemon answered with a cookie of its own, within the last
 *     FLOOD_HOLD_S), as Linux sends cookies only when the SYN queue overflows. Not
 *     flooded: the SYN goes to the daemon as any other frame, whatever the rate (AF_XDP
 *     tx reaches any peer; XDP_TX on a veth reaches only a peer end that runs XDP);
 *   - it is over the rate: a per-CPU token bucket (GCRA: ns_per_syn of credit per SYN,
 *     burst_ns deep), which only SYNs to flooded ports draw on. Within it the SYN goes to
 *     the daemon, which answers it with every option it supports (and keeps the port
 *     flooded while its backlog is full).
 * Ports skip_lo..skip_hi (the daemon's ephemeral ports, which its own connections use: a
 * SYN there is for one of them, and the daemon answers it with a challenge ACK, RFC 5961,
 * or a reset; XDP does not know connections) always go to the daemon. The answer is a
 * cookie SYN-ACK built in place and sent back out with XDP_TX (counted TX and
 * SYNCOOKIES_SENT_XDP), no frame for the daemon. The cookie is xdps_syncookie() of
 * layer4/tcp/syncookie.h, the file the daemon's TCP core uses to check the ACK that
 * returns it, with the key the daemon wrote into the map. Only the MSS option is read
 * (when it is the SYN's first option, as every common stack sends it) and answered (the
 * daemon's MSS; a SYN too short to take a 4-byte option in place gets none). This is how
 * a full-rate flood stays out of the AF_XDP ring, which the daemon reads at Python speed,
 * so that established connections keep their share of it. A second bucket (ns_per_cookie,
 * off while 0) bounds the cookies sent; SYNs over both rates are dropped (counted
 * SYN_DROPPED and DROPPED: the only XDP_DROP).
 *
 * "Goes to the daemon" is bpf_redirect_map(&xsks, rx_queue_index, XDP_PASS): when the
 * rx queue's XSKMAP slot is empty (the daemon is not serving that queue, or it is starting
 * or stopping) the helper returns XDP_PASS and the kernel gets the frame (counted NO_XSK
 * and PASSED). A helper-level redirect can still fail later inside the kernel (an XSK bound
 * to another device or queue, a full rx ring); the kernel counts those drops, not us.
 *
 * The program returns XDP_DROP only for SYNs over both SYN rates (SYN cookies, above):
 * any other frame it does not want to handle is the kernel's.
 *
 * Counter accounting: each frame adds 1 to exactly one of PASSED, REDIRECTED, DROPPED or TX.
 * The other counters say why, and overlap with those four (a malformed frame counts in
 * MALFORMED and in PASSED; a redirected ARP packet in ARP_REDIRECTED and REDIRECTED).
 * Keep enum xdpstack_counter in step with COUNTER_NAMES in xdp_program.py (a test checks).
 *
 * Every packet access is checked against data_end first (the verifier insists).
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/if_arp.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>

/* SYN cookies: the same definition as the daemon's TCP core (-I from xdp_program.py) */
#define XDPSTACK_BPF 1
#include "syncookie.h"

#ifndef XDPSTACK_MAX_QUEUES
#define XDPSTACK_MAX_QUEUES 64
#endif
#ifndef XDPSTACK_MAX_STEER
#define XDPSTACK_MAX_STEER 16384
#endif
/* the flooded bitmap: one bit per TCP port, 64 ports a word (8 KiB) */
#define XDPSTACK_FLOODED_WORDS (65536 / 64)

/* config.flags */
#define XDPSTACK_F_OWNED_TCP_ALL 0x1 /* owned mode: all TCP to the owned address */

#define XDPSTACK_IP_MF 0x2000
#define XDPSTACK_IP_OFFSET 0x1fff

enum xdpstack_counter {
    XDPSTACK_C_PASSED = 0,      /* verdict XDP_PASS */
    XDPSTACK_C_REDIRECTED,      /* verdict XDP_REDIRECT (into an AF_XDP socket) */
    XDPSTACK_C_DROPPED,         /* verdict XDP_DROP: SYNs over both SYN rates only */
    XDPSTACK_C_MALFORMED,       /* truncated or inconsistent Ethernet/ARP/IPv4/TCP; passed */
    XDPSTACK_C_TCP_REDIRECTED,  /* TCP segments redirected */
    XDPSTACK_C_ARP_REDIRECTED,  /* ARP for the owned address redirected */
    XDPSTACK_C_ICMP_REDIRECTED, /* ICMP to the owned address redirected */
    XDPSTACK_C_NO_XSK,          /* for the daemon, but its queue's XSKMAP slot empty; passed */
    XDPSTACK_C_FRAGMENTS,       /* IPv4 fragments; passed */
    XDPSTACK_C_VLAN,            /* VLAN-tagged frames; passed */
    XDPSTACK_C_TX,              /* verdict XDP_TX: a reply sent back out (SYN cookies) */
    XDPSTACK_C_SYNCOOKIES_SENT_XDP, /* SYNs over the rate answered with a cookie SYN-ACK */
    XDPSTACK_C_SYN_DROPPED,     /* SYNs over both rates (to the daemon, cookies); dropped */
    XDPSTACK_C_MAX,
};

struct steer_key {
    __be32 addr; /* local IPv4 address, network order; 0 = any local address */
    __be16 port; /* local TCP port, network order */
    __u16 pad;   /* always 0 */
};

struct xdpstack_config {
    __be32 owned_addr; /* network order; 0 = shared mode */
    __u32 flags;       /* XDPSTACK_F_* */
};

struct xdpstack_syncookie {
    __u64 k0, k1;     /* SipHash key, as syncookie.h takes it */
    __u64 ns_per_syn; /* 1e9 / rate: credit one SYN costs; 0 = off (all SYNs to the daemon) */
    __u64 burst_ns;   /* bucket depth: SYNs let through back to back * ns_per_syn */
    __u64 ns_per_cookie; /* the same for cookie SYN-ACKs; 0 = no limit */
    __u64 cookie_burst_ns;
    __u32 mss;        /* the daemon's MSS, announced in the cookie SYN-ACK */
    __u32 window;     /* its window (unscaled: a cookie cannot carry a window scale) */
    __u16 skip_lo;    /* destination ports skip_lo..skip_hi (host order): always to the */
    __u16 skip_hi;    /* daemon (its ephemeral ports: its own connections, no listener) */
    __u32 pad;
};

struct syn_bucket {
    __u64 tat; /* GCRA theoretical arrival time, bpf_ktime_get_ns() */
};

struct arp_ipv4 {
    struct arphdr hdr;
    __u8 sha[ETH_ALEN];
    __u8 spa[4];
    __u8 tha[ETH_ALEN];
    __u8 tpa[4];
} __attribute__((packed));

BPF_HASH(steering, struct steer_key, __u32, XDPSTACK_MAX_STEER);
BPF_XSKMAP(xsks, XDPSTACK_MAX_QUEUES);
BPF_PERCPU_ARRAY(counters, __u64, XDPSTACK_C_MAX);
BPF_ARRAY(config, struct xdpstack_config, 1);
BPF_ARRAY(syncookie_cfg, struct xdpstack_syncookie, 1);
BPF_PERCPU_ARRAY(syn_bucket, struct syn_bucket, 2); /* SYN_BUCKET_* */
BPF_ARRAY(flooded, __u64, XDPSTACK_FLOODED_WORDS); /* bit port: its listener is flooded */

static __always_inline void count(__u32 idx)
{
    __u64 *value = counters.lookup(&idx);
    if (value)
        *value += 1; /* per-CPU: no atomics needed */
}

static __always_inline int pass(void)
{
    count(XDPSTACK_C_PASSED);
    return XDP_PASS;
}

static __always_inline int malformed(void)
{
    count(XDPSTACK_C_MALFORMED);
    return pass();
}

/* Hand the frame to the daemon's AF_XDP socket of this rx queue, or to the kernel. */
static __always_inline int to_daemon(struct xdp_md *ctx, __u32 reason)
{
    int action = xsks.redirect_map(ctx->rx_queue_index, XDP_PASS);
    if (action == XDP_REDIRECT) {
        count(XDPSTACK_C_REDIRECTED);
        count(reason);
        return XDP_REDIRECT;
    }
    count(XDPSTACK_C_NO_XSK);
    return pass();
}

static __always_inline int steered(__be32 daddr, __be16 dport)
{
    struct steer_key key = {};
    key.addr = daddr;
    key.port = dport;
    if (steering.lookup(&key))
        return 1;
    key.addr = 0;
    return steering.lookup(&key) != NULL;
}

/* Whether the daemon says the listener on this port (host order) is flooded. */
static __always_inline int port_flooded(__u16 port)
{
    __u32 idx = port >> 6;
    __u64 *word = flooded.lookup(&idx);
    return word && ((*word >> (port & 63)) & 1);
}

#define SYN_BUCKET_DAEMON 0 /* SYNs to the daemon */
#define SYN_BUCKET_COOKIE 1 /* cookie SYN-ACKs sent */

/* Whether one more SYN fits this CPU's bucket idx (and take its credit if so). */
static __always_inline int within_rate(__u32 idx, __u64 ns_per, __u64 burst_ns)
{
    struct syn_bucket *bucket = syn_bucket.lookup(&idx);
    if (!bucket)
        return 1;
    __u64 now = bpf_ktime_get_ns();
    __u64 tat = bucket->tat > now ? bucket->tat : now;
    if (tat + ns_per - now > burst_ns)
        return 0;
    bucket->tat = tat + ns_per;
    return 1;
}

static __always_inline __u32 csum_fold32(__u32 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return ~sum & 0xffff;
}

/* Sum of n 16-bit words as they lie in memory (network order in, network order out). */
static __always_inline __u32 csum_words(const __u16 *p, const int n)
{
    __u32 sum = 0;
#pragma unroll
    for (int i = 0; i < n; i++)
        sum += p[i];
    return sum;
}

/* Turn the SYN (Ethernet, IPv4 with IHL 5, TCP) into our cookie SYN-ACK, in place.
 * Returns XDP_TX, or -1 when the frame is not one this handles (the daemon gets it). */
static __always_inline int syn_cookie_reply(struct xdp_md *ctx, const struct xdpstack_syncookie *sc)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = (void *)(eth + 1);
    struct tcphdr *tcp = (void *)(ip + 1);
    __u8 *opt = (void *)(tcp + 1);

    if ((void *)(tcp + 1) > data_end || ip->ihl != 5)
        return -1;
    __u32 frame_len = data_end - data;
    __u32 peer_mss = 536; /* RFC 9293 3.7.1: no MSS option */
    int with_mss = (void *)(opt + 4) <= data_end;
    if (with_mss && tcp->doff >= 6 && opt[0] == 2 && opt[1] == 4)
        peer_mss = ((__u32)opt[2] << 8) | opt[3];

    __u32 saddr = ntohl(ip->saddr), daddr = ntohl(ip->daddr);
    __u16 sport = ntohs(tcp->source), dport = ntohs(tcp->dest);
    __u32 peer_isn = ntohl(tcp->seq);
    __u32 t = (__u32)(bpf_ktime_get_ns() >> XDPS_SYNCOOKIE_PERIOD_SHIFT);
    __u32 cookie = xdps_syncookie(sc->k0, sc->k1, saddr, daddr, sport, dport, peer_isn, t,
                                  xdps_syncookie_mss_index(peer_mss));

    __u8 mac[ETH_ALEN];
    __builtin_memcpy(mac, eth->h_source, ETH_ALEN);
    __builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
    __builtin_memcpy(eth->h_dest, mac, ETH_ALEN);

    __u32 tcp_len = with_mss ? 24 : 20;
    ip->tos = 0;
    ip->tot_len = htons(sizeof(*ip) + tcp_len);
    ip->id = 0;
    ip->frag_off = htons(0x4000); /* DF */
    ip->ttl = 64;
    ip->saddr = htonl(daddr);
    ip->daddr = htonl(saddr);
    ip->check = 0;
    ip->check = csum_fold32(csum_words((__u16 *)ip, 10));

    tcp->source = htons(dport);
    tcp->dest = htons(sport);
    tcp->seq = htonl(cookie);
    tcp->ack_seq = htonl(peer_isn + 1);
    ((__u16 *)tcp)[6] = htons(((tcp_len / 4) << 12) | 0x12); /* data offset, SYN|ACK */
    tcp->window = htons(sc->window);
    tcp->check = 0;
    tcp->urg_ptr = 0;
    /* pseudo-header: addresses, protocol, TCP length (network order words) */
    __u32 sum = (ip->saddr & 0xffff) + (ip->saddr >> 16) + (ip->daddr & 0xffff) +
                (ip->daddr >> 16) + htons(IPPROTO_TCP) + htons(tcp_len);
    if (with_mss) {
        if ((void *)(opt + 4) > data_end) /* known already; the verifier wants it here */
            return XDP_ABORTED;
        opt[0] = 2;
        opt[1] = 4;
        opt[2] = sc->mss >> 8;
        opt[3] = sc->mss & 0xff;
        tcp->check = csum_fold32(sum + csum_words((__u16 *)tcp, 12));
    } else {
        tcp->check = csum_fold32(sum + csum_words((__u16 *)tcp, 10));
    }

    /* Trim what followed (other options, padding). Should that fail, the bytes past the
     * IPv4 total length are only padding to the receiver: send it all the same. */
    int delta = (int)(sizeof(*eth) + sizeof(*ip) + tcp_len) - (int)frame_len;
    if (delta < 0)
        bpf_xdp_adjust_tail(ctx, delta);
    count(XDPSTACK_C_TX);
    count(XDPSTACK_C_SYNCOOKIES_SENT_XDP);
    return XDP_TX;
}

int xdpstack_rx(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    __u32 zero = 0;
    __be32 owned = 0;
    __u32 flags = 0;

    if ((void *)(eth + 1) > data_end)
        return malformed();

    struct xdpstack_config *cfg = config.lookup(&zero);
    if (cfg) {
        owned = cfg->owned_addr;
        flags = cfg->flags;
    }

    __be16 proto = eth->h_proto;
    if (proto == htons(ETH_P_8021Q) || proto == htons(ETH_P_8021AD)) {
        count(XDPSTACK_C_VLAN);
        return pass();
    }

    if (proto == htons(ETH_P_ARP)) {
        if (!owned)
            return pass();
        struct arp_ipv4 *arp = (void *)(eth + 1);
        if ((void *)(arp + 1) > data_end)
            return malformed();
        if (arp->hdr.ar_hrd != htons(ARPHRD_ETHER) || arp->hdr.ar_pro != htons(ETH_P_IP) ||
            arp->hdr.ar_hln != ETH_ALEN || arp->hdr.ar_pln != 4)
            return pass(); /* some other ARP flavour: not ours */
        __be32 tpa;
        __builtin_memcpy(&tpa, arp->tpa, sizeof(tpa));
        if (tpa != owned)
            return pass();
        return to_daemon(ctx, XDPSTACK_C_ARP_REDIRECTED);
    }

    if (proto != htons(ETH_P_IP))
        return pass();

    struct iphdr *ip = (void *)(eth + 1);
    if ((void *)(ip + 1) > data_end)
        return malformed();
    if (ip->version != 4 || ip->ihl < 5)
        return malformed();
    __u32 ihl_bytes = (__u32)ip->ihl * 4; /* 20..60 */
    if ((void *)ip + ihl_bytes > data_end)
        return malformed();
    __u32 tot_len = ntohs(ip->tot_len);
    if (tot_len < ihl_bytes || (void *)ip + tot_len > data_end)
        return malformed();

    if (ip->frag_off & htons(XDPSTACK_IP_MF | XDPSTACK_IP_OFFSET)) {
        count(XDPSTACK_C_FRAGMENTS);
        return pass();
    }

    __be32 daddr = ip->daddr;
    if (ip->protocol == IPPROTO_ICMP) {
        if (owned && daddr == owned)
            return to_daemon(ctx, XDPSTACK_C_ICMP_REDIRECTED);
        return pass();
    }
    if (ip->protocol != IPPROTO_TCP)
        return pass();

    struct tcphdr *tcp = (void *)ip + ihl_bytes;
    if ((void *)(tcp + 1) > data_end || tot_len < ihl_bytes + sizeof(*tcp) || tcp->doff < 5)
        return malformed();

    if (steered(daddr, tcp->dest)) {
        if (tcp->syn && !tcp->ack && !tcp->rst) {
            struct xdpstack_syncookie *sc = syncookie_cfg.lookup(&zero);
            __u16 dport = ntohs(tcp->dest);
            if (sc && sc->ns_per_syn && (dport < sc->skip_lo || dport > sc->skip_hi) &&
                port_flooded(dport) &&
                !within_rate(SYN_BUCKET_DAEMON, sc->ns_per_syn, sc->burst_ns)) {
                if (sc->ns_per_cookie &&
                    !within_rate(SYN_BUCKET_COOKIE, sc->ns_per_cookie, sc->cookie_burst_ns)) {
                    count(XDPSTACK_C_SYN_DROPPED);
                    count(XDPSTACK_C_DROPPED);
                    return XDP_DROP;
                }
                int action = syn_cookie_reply(ctx, sc);
                if (action >= 0)
                    return action;
            }
        }
        return to_daemon(ctx, XDPSTACK_C_TCP_REDIRECTED);
    }
    if (owned && daddr == owned && (flags & XDPSTACK_F_OWNED_TCP_ALL))
        return to_daemon(ctx, XDPSTACK_C_TCP_REDIRECTED);
    return pass();
}
