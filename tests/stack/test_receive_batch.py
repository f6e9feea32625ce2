"""``InetStack.receive_frames`` is one receive batch for TCP: in-order data is ACKed once
per connection at its end; ``receive_frame`` (and a batch of one) ACKs as before."""

from __future__ import annotations

from stack_helpers import PEER_IP_STR, PEER_MAC, make_stack

from xdpstackd.inetstack.completion import OpCode
from xdpstackd.inetstack.config import StackConfig
from xdpstackd.inetstack.layer2.arp import ARP_REPLY, ArpPacket, build_arp
from xdpstackd.inetstack.layer2.ethernet import ETHERTYPE_ARP, build_ethernet, parse_ethernet
from xdpstackd.inetstack.layer3.ipv4 import parse_ipv4
from xdpstackd.inetstack.layer4.tcp.header import parse_tcp
from xdpstackd.inetstack.stack import InetStack

SEGMENTS = 10  # the initial window: what a sends at once


def connected() -> tuple[InetStack, InetStack, int]:
    """Stacks a (10.0.0.1) and b (10.0.0.2) with a connection a -> b; returns a's qd."""
    a = make_stack()
    b = InetStack(
        StackConfig(), mac=PEER_MAC, ip=PEER_IP_STR, prefix_len=24, isn_secret=b"b" * 16, seed=2
    )
    b.raise_internal_errors = True
    # each learns the other's MAC, so no ARP frames mix with the TCP ones below
    for src, dst in ((a, b), (b, a)):
        reply = ArpPacket(ARP_REPLY, src.mac, src.ip, dst.mac, dst.ip)
        dst.receive_frame(build_ethernet(dst.mac, src.mac, ETHERTYPE_ARP, build_arp(reply)), 0.0)
    listener = b.socket()
    b.bind(listener, (PEER_IP_STR, 80))
    b.listen(listener, 4)
    b.accept(listener)
    qd = a.socket()
    a.connect(qd, (PEER_IP_STR, 80), 0.0)
    for _ in range(10):
        for src, dst in ((a, b), (b, a)):
            frames = src.poll_transmit()
            for frame in frames:
                dst.receive_frame(frame, 0.0)
    assert [c.opcode for c in a.poll_completions()] == [OpCode.CONNECT]
    assert [c.opcode for c in b.poll_completions()] == [OpCode.ACCEPT]
    return a, b, qd


def data_frames(a: InetStack, qd: int) -> list[bytes]:
    a.push(qd, bytes(SEGMENTS * a.config.tcp.mss), 0.1)
    frames = a.poll_transmit()
    assert len(frames) == SEGMENTS
    return frames


def acks_in(frames: list[bytes]) -> list[int]:
    out = []
    for frame in frames:
        ip, segment = parse_ipv4(parse_ethernet(frame)[1])
        hdr, payload = parse_tcp(segment, ip.src, ip.dst)
        assert not payload
        out.append(hdr.ack_num.value)
    return out


def test_a_batch_of_frames_draws_one_ack() -> None:
    a, b, qd = connected()
    frames = data_frames(a, qd)
    b.receive_frames(frames, 0.1)
    (ack,) = acks_in(b.poll_transmit())
    last_ip, last_segment = parse_ipv4(parse_ethernet(frames[-1])[1])
    last, payload = parse_tcp(last_segment, last_ip.src, last_ip.dst)
    assert ack == (last.seq_num + len(payload)).value


def test_frames_received_one_by_one_draw_an_ack_every_second_segment() -> None:
    a, b, qd = connected()
    for frame in data_frames(a, qd):
        b.receive_frame(frame, 0.1)
    assert len(acks_in(b.poll_transmit())) == SEGMENTS // 2


def test_a_batch_of_one_frame_is_the_same_as_one_frame() -> None:
    outputs = []
    for batch in (False, True):
        a, b, qd = connected()
        frames = data_frames(a, qd)
        out = []
        for frame in frames:
            if batch:
                b.receive_frames([frame], 0.1)
            else:
                b.receive_frame(frame, 0.1)
            out.append([bytes(f) for f in b.poll_transmit()])
        outputs.append(out)
    assert outputs[0] == outputs[1]
    assert sum(len(o) for o in outputs[1]) == SEGMENTS // 2
