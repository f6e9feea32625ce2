"""SYN cookies (RFC 4987 3.6): a SYN to a full SYN backlog gets a cookie SYN-ACK and no
state; the ACK returning the cookie opens the connection; a forged or stale one is reset.
Also that the C cookie (``syncookie.h``, shared with the XDP program) and its pure-Python
twin agree, and that SipHash-2-4 is SipHash-2-4."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from xdpstackd.inetstack.completion import OpCode
from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer4.tcp import syncookie
from xdpstackd.inetstack.layer4.tcp.header import (
    ACK,
    RST,
    SYN,
    TcpHeader,
    TcpOptions,
    build_tcp,
    parse_tcp,
)
from xdpstackd.inetstack.layer4.tcp.passive_open import FLOOD_HOLD_S
from xdpstackd.inetstack.layer4.tcp.peer import TcpPeer
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber as S

A, B = 0x0A000001, 0x0A000002  # 10.0.0.1 the stack, 10.0.0.2 the client
PORT = 80
BACKLOG = 4
PERIOD_S = (1 << syncookie.PERIOD_SHIFT) / 1e9
T0 = 1000.0  # the clock at the flood (a monotonic clock is far from 0)
HEADER = Path(syncookie.__file__).with_name("syncookie.h")


def seg(sport: int, flags: int, seq: int, ack: int, opts=None, data: bytes = b"") -> bytes:
    return build_tcp(TcpHeader(sport, PORT, S(seq), S(ack), flags, 65535, opts), data, B, A)


def listening(**config) -> tuple[TcpPeer, int]:
    p = TcpPeer(TcpConfig(syn_backlog=BACKLOG, **config), A, isn_secret=b"k" * 16)
    lqd = p.socket()
    p.bind(lqd, ("10.0.0.1", PORT))
    p.listen(lqd, 16)
    return p, lqd


def sent(p: TcpPeer) -> list[tuple[TcpHeader, bytes]]:
    return [(h, bytes(d)) for h, d in (parse_tcp(s, A, B) for _, _, s in p.poll_transmit())]


def fill_backlog(p: TcpPeer) -> None:
    for i in range(BACKLOG):
        p.receive(B, A, seg(5000 + i, SYN, 100, 0, TcpOptions(mss=1460)), T0)
    assert len(sent(p)) == BACKLOG
    assert p.counters["tcp_syncookies_sent"] == 0


def cookie_synack(p: TcpPeer, sport: int, isn: int, mss: int | None = 1460) -> TcpHeader:
    opts = TcpOptions(mss=mss, window_scale=7) if mss else TcpOptions(window_scale=7)
    p.receive(B, A, seg(sport, SYN, isn, 0, opts), T0)
    ((synack, _),) = sent(p)
    return synack


def test_a_syn_to_a_full_backlog_gets_a_cookie_synack_and_its_ack_opens_a_connection() -> None:
    p, lqd = listening()
    fill_backlog(p)
    conns_before = len(p.conns)
    synack = cookie_synack(p, 6000, 7777)
    assert synack.flags == SYN | ACK and synack.ack_num == S(7778)
    assert synack.options is not None and synack.options.mss == 1460
    assert synack.options.window_scale is None  # cannot be encoded: not offered
    assert synack.window == 65535
    assert len(p.conns) == conns_before  # no state for it
    assert p.counters["tcp_syncookies_sent"] == 1
    assert p.counters["tcp_drop_syn_backlog_full"] == 0

    p.receive(B, A, seg(6000, ACK, 7778, synack.seq_num.value + 1, data=b"hello"), T0 + 0.01)
    assert p.counters["tcp_syncookies_recv"] == 1
    p.accept(lqd)
    (accepted,) = p.poll_completions()
    assert accepted.opcode is OpCode.ACCEPT and accepted.addr == ("10.0.0.2", 6000)
    qd = accepted.new_qd
    snap = p.snapshot(qd)
    assert snap["connection_management"]["state"] == "ESTABLISHED"
    assert snap["flow_control"]["snd_wscale"] == snap["flow_control"]["rcv_wscale"] == 0
    # the data on the completing ACK was kept, and data flows back
    p.pop(qd, None, T0 + 0.02)
    (popped,) = p.poll_completions()
    assert popped.data == b"hello"
    p.push(qd, b"world", T0 + 0.03)
    data = [(h, d) for h, d in sent(p) if d]
    assert data and data[-1][1] == b"world"
    assert data[-1][0].seq_num == synack.seq_num + 1 and data[-1][0].ack_num == S(7778 + 5)


@pytest.mark.parametrize(
    ("announced", "recovered"),
    [(1460, 1460), (1400, 1360), (9000, 8960), (None, 536), (100, 48)],
)
def test_the_cookie_connection_uses_the_clients_mss_rounded_down_to_the_table(
    announced: int | None, recovered: int
) -> None:
    p, lqd = listening(mss=9000)
    fill_backlog(p)
    synack = cookie_synack(p, 6001, 5, announced)
    p.receive(B, A, seg(6001, ACK, 6, synack.seq_num.value + 1), T0 + 0.01)
    p.accept(lqd)
    (accepted,) = p.poll_completions()
    assert p.snapshot(accepted.new_qd)["flow_control"]["mss"] == max(recovered, 48)


def test_a_cookie_from_the_previous_period_is_accepted() -> None:
    p, _ = listening()
    fill_backlog(p)
    synack = cookie_synack(p, 6002, 42)
    p.receive(B, A, seg(6002, ACK, 43, synack.seq_num.value + 1), T0 + PERIOD_S)
    assert p.counters["tcp_syncookies_recv"] == 1
    assert not [h for h, _ in sent(p) if h.flags & RST]


def test_a_forged_cookie_ack_is_reset_and_counted() -> None:
    p, _ = listening()
    fill_backlog(p)
    synack = cookie_synack(p, 6003, 42)
    before = len(p.conns)
    cookie = synack.seq_num.value
    for bad in (cookie ^ 1, cookie ^ 0x00800000, cookie ^ 0x01000000, cookie ^ 0x08000000):
        p.receive(B, A, seg(6003, ACK, 43, bad + 1), T0 + 0.01)  # MAC, MSS index, counter
    p.receive(B, A, seg(6003, ACK, 44, cookie + 1), T0 + 0.01)  # another client ISN
    p.receive(B, A, seg(6004, ACK, 43, cookie + 1), T0 + 0.01)  # another port
    assert p.counters["tcp_syncookies_failed"] == 6
    assert p.counters["tcp_syncookies_recv"] == 0
    assert [h.flags for h, _ in sent(p)] == [RST] * 6
    assert len(p.conns) == before


def test_a_cookie_older_than_two_periods_is_reset() -> None:
    p, _ = listening()
    fill_backlog(p)
    synack = cookie_synack(p, 6005, 42)
    p.receive(B, A, seg(6005, SYN, 1, 0), T0 + PERIOD_S)  # another cookie keeps checks on
    sent(p)
    p.receive(B, A, seg(6005, ACK, 43, synack.seq_num.value + 1), T0 + 2 * PERIOD_S + 0.01)
    assert p.counters["tcp_syncookies_failed"] == 1
    assert [h.flags for h, _ in sent(p)] == [RST]


def test_stray_acks_are_not_checked_for_cookies_unless_cookies_were_sent_lately() -> None:
    p, _ = listening()
    p.receive(B, A, seg(6006, ACK, 1, 12345), T0)
    assert [h.flags for h, _ in sent(p)] == [RST]
    assert p.counters["tcp_syncookies_failed"] == 0
    p.isn.cookies.external = True  # the XDP program sends cookies with this key
    p.receive(B, A, seg(6006, ACK, 1, 12345), T0)
    assert [h.flags for h, _ in sent(p)] == [RST]
    assert p.counters["tcp_syncookies_failed"] == 1


def test_a_cookie_made_elsewhere_with_the_shared_key_is_accepted() -> None:
    """What the XDP program does: a cookie made with the key, the daemon's ACK check."""
    p, lqd = listening()
    p.isn.cookies.external = True
    maker = syncookie.SynCookies(p.isn.cookies.key)
    cookie = maker.make(B, A, 6007, PORT, 999, 1460, T0)
    p.receive(B, A, seg(6007, ACK, 1000, cookie + 1), T0 + 1.0)
    assert p.counters["tcp_syncookies_recv"] == 1
    p.accept(lqd)
    (accepted,) = p.poll_completions()
    assert accepted.addr == ("10.0.0.2", 6007)


def test_a_valid_cookie_ack_with_the_accept_queue_full_is_ignored_not_reset() -> None:
    p = TcpPeer(TcpConfig(syn_backlog=1), A, isn_secret=b"k" * 16)
    lqd = p.socket()
    p.bind(lqd, ("10.0.0.1", PORT))
    p.listen(lqd, 1)
    p.receive(B, A, seg(5000, SYN, 100, 0), T0)  # half-open: the SYN backlog is full
    p.receive(B, A, seg(5001, SYN, 200, 0), T0)  # a cookie
    (half, _), (cookie, _) = sent(p)
    assert p.counters["tcp_syncookies_sent"] == 1
    p.receive(B, A, seg(5000, ACK, 101, half.seq_num.value + 1), T0)  # accept queue full
    p.receive(B, A, seg(5001, ACK, 201, cookie.seq_num.value + 1), T0)
    assert p.counters["tcp_drop_accept_queue_full"] == 1
    assert p.counters["tcp_syncookies_recv"] == 0
    assert not [h for h, _ in sent(p) if h.flags & RST]
    p.accept(lqd)
    assert [c.addr for c in p.poll_completions()] == [("10.0.0.2", 5000)]


def test_without_syncookies_a_full_backlog_drops_the_syn() -> None:
    p, _ = listening(syncookies=False)
    fill_backlog(p)
    p.receive(B, A, seg(6008, SYN, 1, 0), T0)
    assert sent(p) == []
    assert p.counters["tcp_drop_syn_backlog_full"] == 1
    assert p.counters["tcp_syncookies_sent"] == 0
    p.receive(B, A, seg(6008, ACK, 2, 12345), T0)
    assert [h.flags for h, _ in sent(p)] == [RST]


# -- flooded listeners (what lets the XDP program answer SYNs with cookies) -------------------
def run_timers_out(p: TcpPeer) -> None:
    """Timers at each next_deadline() until none is left (bounded: a deadline that never
    goes away fails here rather than hanging)."""
    for _ in range(100):
        deadline = p.next_deadline()
        if deadline is None:
            return
        p.handle_timers(deadline)
        assert p.flooded_ports() == frozenset()
    raise AssertionError(f"a deadline stays: {p.next_deadline()}")


def test_a_listener_is_flooded_from_its_first_cookie_and_ports_version_says_so() -> None:
    p, _ = listening()
    fill_backlog(p)
    version = p.ports_version
    assert p.flooded_ports() == frozenset()  # a full backlog is not yet an overflow
    cookie_synack(p, 6100, 1)
    assert p.flooded_ports() == {PORT}
    assert p.ports_version == version + 1  # the engine pushes the set to XDP on a change
    cookie_synack(p, 6101, 1)
    assert p.ports_version == version + 1  # still flooded: no change to push


def test_a_flooded_listener_stops_being_flooded_a_hold_after_its_last_overflow() -> None:
    p, _ = listening()
    fill_backlog(p)
    cookie_synack(p, 6102, 1)
    p.receive(B, A, seg(6103, SYN, 1, 0), T0 + 1.0)  # another overflow renews the hold
    sent(p)
    version = p.ports_version
    # the clock driven as the engine drives it: timers at each next_deadline()
    left_at = None
    for _ in range(100):
        deadline = p.next_deadline()
        assert deadline is not None, "the flood's end must have a deadline"
        p.handle_timers(deadline)
        if not p.flooded_ports():
            left_at = deadline
            break
        assert p.ports_version == version
    assert left_at == T0 + 1.0 + FLOOD_HOLD_S
    assert p.ports_version == version + 1


def test_no_listener_is_flooded_and_no_flood_deadline_without_an_overflow() -> None:
    p, _ = listening()
    version = p.ports_version
    assert p.next_deadline() is None
    fill_backlog(p)  # half-open entries, their SYN-ACKs, their timers
    p.receive(B, A, seg(6104, ACK, 1, 12345), T0)  # a stray ACK: reset
    p.receive(B, A, seg(5000, SYN, 100, 0), T0)  # a duplicate SYN of a half-open one
    assert p.flooded_ports() == frozenset() and p.flooded == {}
    assert p.ports_version == version
    run_timers_out(p)  # the half-open ones time out; nothing is flooded meanwhile


def test_without_syncookies_a_full_backlog_floods_nothing() -> None:
    p, _ = listening(syncookies=False)
    fill_backlog(p)
    p.receive(B, A, seg(6105, SYN, 1, 0), T0)
    assert p.counters["tcp_drop_syn_backlog_full"] == 1
    assert p.flooded_ports() == frozenset()


def test_closing_a_flooded_listener_unfloods_its_port() -> None:
    p, lqd = listening()
    fill_backlog(p)
    cookie_synack(p, 6106, 1)
    version = p.ports_version
    p.close(lqd, T0 + 0.1)
    assert p.flooded_ports() == frozenset()
    assert p.ports_version > version
    run_timers_out(p)  # the flood deadline left behind ends without flooding anything


# -- the cookie function ----------------------------------------------------------------------
KEY = bytes(range(16))


def test_siphash24_matches_the_reference_papers_test_vector() -> None:
    # SipHash paper, Appendix A: key 00..0f, message 00..0e
    assert syncookie.siphash24(KEY, bytes(range(15))) == 0xA129CA6149BE45E5


def test_the_c_siphash_matches_the_python_one_and_the_reference_vector() -> None:
    lib = pytest.importorskip("xdpstackd.inetstack._checksum").lib
    k0, k1 = syncookie.SynCookies(KEY).key_words
    assert lib.xdps_siphash24(k0, k1, bytes(range(15)), 15) == 0xA129CA6149BE45E5
    rng = random.Random(7)
    for n in (0, 1, 7, 8, 9, 16, 24, 63):
        data = rng.randbytes(n)
        assert lib.xdps_siphash24(k0, k1, data, n) == syncookie.siphash24(KEY, data)


def test_the_c_cookie_matches_the_python_cookie() -> None:
    lib = pytest.importorskip("xdpstackd.inetstack._checksum").lib
    rng = random.Random(11)
    for _ in range(200):
        key = rng.randbytes(16)
        k0, k1 = syncookie.SynCookies(key).key_words
        args = (
            rng.getrandbits(32),
            rng.getrandbits(32),
            rng.getrandbits(16),
            rng.getrandbits(16),
            rng.getrandbits(32),
            rng.getrandbits(32),
            rng.randrange(8),
        )
        assert lib.xdps_syncookie(k0, k1, *args) == syncookie._py_cookie(key, *args)
    for mss in (0, 47, 48, 535, 536, 1219, 1220, 1459, 1460, 8959, 8960, 65535):
        assert lib.xdps_syncookie_mss_index(mss) == syncookie._py_mss_index(mss)


def test_the_mss_table_is_the_one_in_the_shared_header() -> None:
    defines = dict(re.findall(r"#define XDPS_SYNCOOKIE_MSS_(\d) (\d+)", HEADER.read_text()))
    assert tuple(int(defines[str(i)]) for i in range(8)) == syncookie.MSS_TABLE


def test_the_cookie_layout_is_counter_mss_index_and_mac() -> None:
    cookies = syncookie.SynCookies(KEY)
    now = 12345.0
    cookie = cookies.make(B, A, 6000, PORT, 1, 1452, now)
    assert cookie >> 27 == syncookie.counter(now) & 31
    assert (cookie >> 24) & 7 == syncookie.MSS_TABLE.index(1452)
    assert cookies.check(B, A, 6000, PORT, 1, cookie, now) == 1452
    assert syncookie.SynCookies(bytes(16)).check(B, A, 6000, PORT, 1, cookie, now) is None
