"""Tunables of the stack; defaults follow the Linux kernel where it has one."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class TcpConfig:
    """TCP tunables. Times in seconds, sizes in bytes."""

    mss: int = 1460  # our MSS; InetStack derives it from the MTU (mtu - 40)
    send_buffer_bytes: int = 1 << 20
    recv_buffer_bytes: int = 1 << 20
    ooo_max_bytes: int = 1 << 20  # bound on out-of-order bytes held per connection
    delayed_ack_s: float = 0.040
    msl_s: float = 30.0  # TIME_WAIT lasts 2 * msl_s
    fin_wait_2_timeout_s: float = 60.0  # orphaned FIN_WAIT_2, like tcp_fin_timeout
    rto_initial_s: float = 1.0
    rto_min_s: float = 0.200
    rto_max_s: float = 60.0
    syn_retries: int = 6  # Linux tcp_syn_retries
    synack_retries: int = 5  # Linux tcp_synack_retries
    retries2: int = 15  # Linux tcp_retries2: data retransmissions before ETIMEDOUT
    connect_timeout_s: float = 130.0  # upper bound regardless of syn_retries
    congestion_control: str = "cubic"  # "cubic" | "none"
    initial_cwnd_segments: int = 10  # RFC 6928
    syn_backlog: int = 256  # half-open connections per listener
    max_accept_backlog: int = 4096  # clamp for listen(backlog), like somaxconn
    syncookies: bool = True  # SYN cookies when the SYN backlog is full (tcp_syncookies = 1)
    nodelay: bool = False  # Nagle on by default
    keepalive: bool = False
    keepalive_idle_s: float = 7200.0
    keepalive_interval_s: float = 75.0
    keepalive_probes: int = 9
    zero_window_probe_max_s: float = 60.0
    challenge_ack_per_s: int = 1000  # RFC 5961 rate limit, like tcp_challenge_ack_limit
    ephemeral_ports: tuple[int, int] = (49152, 65535)
    rst_on_close_with_unread: bool = True  # as Linux does


@dataclass(slots=True)
class StackConfig:
    """Layer 2/3 tunables plus the TCP ones."""

    mtu: int = 1500
    ttl: int = 64
    arp_cache_ttl_s: float = 60.0
    arp_request_timeout_s: float = 1.0
    arp_retries: int = 3
    arp_pending_max_frames: int = 64  # per unresolved neighbour
    tcp: TcpConfig = field(default_factory=TcpConfig)
