"""Byte-stream semantics between two stacks: what goes in one end comes out the other,
in order, exactly once; pop sizes; when a push completes; end of stream."""

from __future__ import annotations

import hashlib
import random

from pair import PeerPair

from xdpstackd.inetstack.completion import OpCode
from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.layer4.tcp.header import FIN
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber


def pattern(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_bulk_data_both_ways_at_once_arrives_intact() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    up, down = pattern(300_000, 1), pattern(200_000, 2)
    push_up = p.a.push(cqd, up, p.now)
    push_down = p.b.push(sqd, down, p.now)
    got_up = bytearray()
    got_down = bytearray()
    pop_b = p.b.pop(sqd, None, p.now)
    pop_a = p.a.pop(cqd, None, p.now)
    while len(got_up) < len(up) or len(got_down) < len(down):
        assert p.step(p.now + 10) or p.completions["a"] or p.completions["b"], "stalled"
        if (c := p.take("b", pop_b)) is not None:
            got_up += c.data
            pop_b = p.b.pop(sqd, None, p.now)
        if (c := p.take("a", pop_a)) is not None:
            got_down += c.data
            pop_a = p.a.pop(cqd, None, p.now)
    assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
    assert p.wait("a", push_up).errno == 0 and p.wait("b", push_down).errno == 0
    # every byte was acknowledged, nothing is left anywhere
    p.run_for(1)
    a_rod = p.a.snapshot(cqd)["ordered_delivery"]
    b_rod = p.b.snapshot(sqd)["ordered_delivery"]
    assert a_rod["snd_una"] == a_rod["snd_max"] == b_rod["rcv_nxt"]
    assert b_rod["snd_una"] == b_rod["snd_max"] == a_rod["rcv_nxt"]
    assert (SeqNumber(b_rod["rcv_nxt"]) - SeqNumber(a_rod["iss"] + 1)) == len(up)
    assert a_rod["retransmits"] == 0 and b_rod["retransmits"] == 0


def test_many_small_pushes_arrive_in_order_as_one_stream() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    rng = random.Random(3)
    chunks = [f"<{i}:{'x' * rng.randrange(0, 300)}>".encode() for i in range(600)]
    qts = [p.a.push(cqd, chunk, p.now) for chunk in chunks]
    expected = b"".join(chunks)
    assert p.read("b", sqd, len(expected)) == expected
    done = [p.wait("a", qt) for qt in qts]
    assert all(c.opcode is OpCode.PUSH and c.errno == 0 for c in done)


def test_pop_with_a_size_returns_between_one_and_size_bytes() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    data = pattern(20_000, 4)
    p.a.push(cqd, data, p.now)
    got = bytearray()
    sizes = [1, 7, 100, 1460, 3000]
    i = 0
    while len(got) < len(data):
        size = sizes[i % len(sizes)]
        c = p.wait("b", p.b.pop(sqd, size, p.now))
        assert 1 <= len(c.data) <= size
        got += c.data
        i += 1
    assert bytes(got) == data


def test_pop_issued_before_data_completes_when_data_arrives() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    qt = p.b.pop(sqd, 10, p.now)
    p.run_for(1)
    assert p.take("b", qt) is None  # nothing to read yet: the pop waits
    assert p.b.snapshot(sqd)["ordered_delivery"]["pending_pops"] == 1
    p.a.push(cqd, b"hello world", p.now)
    c = p.wait("b", qt)
    assert c.data == b"hello worl"
    assert p.wait("b", p.b.pop(sqd, None, p.now)).data == b"d"


def test_push_completes_at_once_when_the_send_buffer_has_room() -> None:
    p = PeerPair()
    _, cqd, _ = p.connect()
    qt = p.a.push(cqd, b"x" * 1000, p.now)
    p.flush()
    assert p.take("a", qt) is not None  # completed by the push call itself


def test_push_larger_than_the_send_buffer_completes_only_after_acks_free_room() -> None:
    sndbuf = 4096
    p = PeerPair()
    _, cqd, sqd = p.connect()
    p.a.setsockopt(cqd, "SO_SNDBUF", sndbuf)
    data = pattern(20_000, 5)
    iss = p.a.snapshot(cqd)["ordered_delivery"]["iss"]
    qt = p.a.push(cqd, data, p.now)
    p.flush()
    assert p.take("a", qt) is None
    rod = p.a.snapshot(cqd)["ordered_delivery"]
    assert rod["pending_pushes"] == 1
    assert rod["unacked_bytes"] + rod["unsent_bytes"] <= sndbuf
    second = p.a.push(cqd, b"tail", p.now)  # queued behind the first, in order
    pop = p.b.pop(sqd, None, p.now)
    got = bytearray()
    while p.take("a", qt) is None:
        assert p.step(p.now + 10) or p.completions["b"], "stalled"
        if (c := p.take("b", pop)) is not None:
            got += c.data
            pop = p.b.pop(sqd, None, p.now)
    # at completion every byte of the push is in the buffer: all but <= SO_SNDBUF acked
    acked = SeqNumber(p.a.snapshot(cqd)["ordered_delivery"]["snd_una"]) - SeqNumber(iss + 1)
    assert acked >= len(data) - sndbuf
    assert p.wait("a", second).errno == 0
    while len(got) < len(data) + 4:
        got += p.wait("b", pop).data
        pop = p.b.pop(sqd, None, p.now)
    assert bytes(got) == data + b"tail"


def test_eof_pops_return_empty_bytes_every_time() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    p.a.push(cqd, b"last words", p.now)
    p.a.close(cqd, p.now)
    assert p.read("b", sqd, 10) == b"last words"
    for _ in range(3):
        c = p.wait("b", p.b.pop(sqd, None, p.now))
        assert c.errno == 0 and c.data == b""
    assert p.b.snapshot(sqd)["ordered_delivery"]["eof"] is True


def test_pending_pop_completes_with_eof_when_the_fin_arrives() -> None:
    p = PeerPair()
    _, cqd, sqd = p.connect()
    qt = p.b.pop(sqd, None, p.now)
    p.a.shutdown(cqd, p.now)
    c = p.wait("b", qt)
    assert c.errno == 0 and c.data == b""
    fins = p.sent("a", flags=FIN | 0x10)
    assert len(fins) == 1


def test_fin_follows_the_last_byte_of_queued_data() -> None:
    p = PeerPair(TcpConfig(send_buffer_bytes=8192))
    _, cqd, sqd = p.connect()
    data = pattern(50_000, 6)
    p.a.push(cqd, data, p.now)
    p.a.close(cqd, p.now)  # graceful: queued data first, then FIN
    assert p.read_to_eof("b", sqd) == data
    fin = [(h, d) for _, h, d in p.sent("a") if h.flags & FIN]
    assert fin, "no FIN sent"
    h, d = fin[0]
    iss = p.b.snapshot(sqd)["ordered_delivery"]["irs"]
    assert (h.seq_num + len(d)) - SeqNumber(iss + 1) == len(data)


class FixedIsn:
    """Stands in for the RFC 6528 generator: every connection starts at ``value``."""

    def __init__(self, value: int) -> None:
        self.value = value

    def generate(self, *args: object) -> SeqNumber:
        return SeqNumber(self.value)


def test_streams_cross_the_sequence_number_wrap_intact_even_with_loss() -> None:
    p = PeerPair()
    p.a.isn = FixedIsn(2**32 - 20_000)
    p.b.isn = FixedIsn(2**32 - 7_000)
    _, cqd, sqd = p.connect()
    for qd, peer in ((cqd, p.a), (sqd, p.b)):
        peer.setsockopt(qd, "TCP_NODELAY", 1)
    # lose the segments that straddle the wrap, once each
    lost: set = set()

    def drop_across_wrap(who, h, d) -> bool:
        end = h.seq_num.value + len(d)
        if d and end > 2**32 and (who, h.seq_num) not in lost:
            lost.add((who, h.seq_num))
            return False
        return True

    p.filter = drop_across_wrap
    up, down = pattern(60_000, 7), pattern(30_000, 8)
    p.a.push(cqd, up, p.now)
    p.b.push(sqd, down, p.now)
    assert p.read("b", sqd, len(up)) == up
    assert p.read("a", cqd, len(down)) == down
    assert {who for who, _ in lost} == {"a", "b"}
    p.run_for(1)
    a_rod = p.a.snapshot(cqd)["ordered_delivery"]
    assert a_rod["snd_una"] == (2**32 - 20_000 + 1 + len(up)) % 2**32
    assert a_rod["snd_una"] == a_rod["snd_max"]
