"""simnet itself: determinism, each impairment at about its probability, rate limiting,
virtual time, a switch, and ping through ARP between stacks."""

from __future__ import annotations

import math

import pytest

from xdpstackd.inetstack.config import StackConfig
from xdpstackd.simnet import Impairments, Network

N_FRAMES = 20_000
FRAME = bytes.fromhex("02000000ffff") + bytes.fromhex("02000000eeee") + b"\x88\xb5" + bytes(86)


def probe_network(seed: int, imp: Impairments) -> tuple[Network, object]:
    """Two hosts; frames injected on a->b are addressed to nobody (b counts and drops them)."""
    net = Network(seed, trace=True)
    net.add_host("a", "10.0.0.1/24")
    net.add_host("b", "10.0.0.2/24")
    link = net.link("a", "b", imp, Impairments())
    return net, link


def inject(net: Network, link, count: int, spacing_s: float = 0.0) -> list[bytes]:
    """Send ``count`` distinct frames on a->b, ``spacing_s`` apart, and deliver them all."""
    frames = []
    for i in range(count):
        frame = FRAME[:-4] + i.to_bytes(4, "big")
        frames.append(frame)
        link.forward.send(frame, net.now)
        if spacing_s:
            net.run_for(spacing_s)
    net.run_for(10.0)
    return frames


def within(observed: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(observed - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


def ping(net: Network, src: str, dst: str, seq: int, timeout_s: float = 5.0) -> bool:
    stack = net.hosts[src]
    stack.send_echo_request(net.hosts[dst].ip_str, 0x77, seq, b"hello", net.now)
    return net.run_until(
        lambda: any(r[2] == seq and r[0] == net.hosts[dst].ip_str for r in stack.echo_replies),
        timeout_s,
    )


# ------------------------------------------------------------------ impairments
@pytest.mark.parametrize("p", [0.03, 0.2])
def test_loss_happens_at_about_its_probability(p: float) -> None:
    net, link = probe_network(1, Impairments(loss=p))
    inject(net, link, N_FRAMES)
    stats = link.forward.stats
    assert stats.frames_sent == N_FRAMES
    assert within(stats.frames_dropped, N_FRAMES, p)
    assert stats.frames_delivered == N_FRAMES - stats.frames_dropped
    assert net.hosts["b"].counters["eth_drop_not_for_us"] == stats.frames_delivered


def test_duplication_happens_at_about_its_probability() -> None:
    net, link = probe_network(2, Impairments(duplicate=0.05))
    inject(net, link, N_FRAMES)
    stats = link.forward.stats
    assert within(stats.frames_duplicated, N_FRAMES, 0.05)
    assert stats.frames_delivered == N_FRAMES + stats.frames_duplicated
    payloads = [f for _, _, f in net.trace]
    assert len(payloads) - len(set(payloads)) == stats.frames_duplicated


def test_corruption_flips_exactly_one_bit_at_about_its_probability() -> None:
    net, link = probe_network(3, Impairments(corrupt=0.1))
    sent = inject(net, link, N_FRAMES)
    received = [f for _, _, f in net.trace]  # no delay variation: arrival order = send order
    assert len(received) == N_FRAMES
    damaged = 0
    for original, frame in zip(sent, received, strict=True):
        diff = int.from_bytes(frame, "big") ^ int.from_bytes(original, "big")
        assert diff.bit_count() in (0, 1)
        damaged += diff.bit_count()
    assert damaged == link.forward.stats.frames_corrupted
    assert within(damaged, N_FRAMES, 0.1)


def test_reordering_holds_frames_back_at_about_its_probability() -> None:
    imp = Impairments(delay_s=0.001, reorder=0.1, reorder_delay_s=0.0025)
    net, link = probe_network(4, imp)
    sent = inject(net, link, 5_000, spacing_s=0.001)
    stats = link.forward.stats
    assert within(stats.frames_reordered, 5_000, 0.1)
    order = [int.from_bytes(f[-4:], "big") for _, _, f in net.trace]
    assert sorted(order) == list(range(len(sent)))
    overtaken = sum(1 for i, x in enumerate(order) if i and x < order[i - 1])
    assert overtaken > 0.5 * stats.frames_reordered  # they really arrive out of order


def test_delay_and_jitter_bound_the_arrival_time() -> None:
    net, link = probe_network(5, Impairments(delay_s=0.010, jitter_s=0.002))
    for i in range(500):
        link.forward.send(FRAME[:-4] + i.to_bytes(4, "big"), 1.0)
    net.run_for(2.0)
    times = [t for t, _, _ in net.trace]
    assert len(times) == 500
    assert min(times) >= 1.010 and max(times) <= 1.012
    assert max(times) - min(times) > 0.0015  # the jitter is really spread


def test_rate_limit_gives_the_serialisation_time_and_tail_drops() -> None:
    rate_bps = 1_000_000.0
    imp = Impairments(delay_s=0.005, rate_bps=rate_bps, queue_limit_bytes=50 * len(FRAME))
    net, link = probe_network(6, imp)
    for i in range(60):
        link.forward.send(FRAME[:-4] + i.to_bytes(4, "big"), 0.0)
    net.run_for(1.0)
    per_frame_s = len(FRAME) * 8 / rate_bps
    times = [t for t, _, _ in net.trace]
    assert len(times) == 50
    assert link.forward.stats.frames_tail_dropped == 10
    for i, t in enumerate(times):
        assert t == pytest.approx(0.005 + (i + 1) * per_frame_s)
    # Once the queue drained, a new frame goes out after one serialisation time.
    link.forward.send(FRAME, net.now)
    start = net.now
    net.run_for(1.0)
    assert net.trace[-1][0] == pytest.approx(start + 0.005 + per_frame_s)


def test_impairments_validate_their_fields() -> None:
    with pytest.raises(ValueError, match="loss"):
        Impairments(loss=1.5)
    with pytest.raises(ValueError, match="rate_bps"):
        Impairments(rate_bps=0)


# ------------------------------------------------------------------ determinism
def ping_storm(seed: int) -> list[tuple[float, str, bytes]]:
    net = Network(seed, trace=True)
    net.add_host("a", "10.0.0.1/24")
    net.add_host("b", "10.0.0.2/24")
    imp = Impairments(
        delay_s=0.001, jitter_s=0.0005, loss=0.1, reorder=0.1, duplicate=0.05, corrupt=0.05
    )
    net.link("a", "b", imp)
    for seq in range(60):
        net.hosts["a"].send_echo_request("10.0.0.2", 1, seq, bytes([seq]) * 40, net.now)
        net.hosts["b"].send_echo_request("10.0.0.1", 2, seq, bytes([seq]) * 30, net.now)
        net.run_for(0.0003)
    net.run_for(10.0)
    assert net.trace
    return net.trace


def test_same_seed_gives_an_identical_frame_trace() -> None:
    assert ping_storm(42) == ping_storm(42)
    assert ping_storm(42) != ping_storm(43)


# ------------------------------------------------------------------ time
def test_run_until_and_run_for_advance_virtual_time_monotonically() -> None:
    net = Network(0)
    net.add_host("a", "10.0.0.1/24")
    assert net.run_until(lambda: False, 1.5) is False
    assert net.now == 1.5
    net.run_for(0.25)
    assert net.now == 1.75
    assert net.run_until(lambda: True, 100.0) is True
    assert net.now == 1.75


def test_events_at_equal_times_keep_their_order() -> None:
    net, link = probe_network(7, Impairments(delay_s=0.001))
    for i in range(100):
        link.forward.send(FRAME[:-4] + i.to_bytes(4, "big"), 0.0)
    net.run_for(1.0)
    assert [int.from_bytes(f[-4:], "big") for _, _, f in net.trace] == list(range(100))


# ------------------------------------------------------------------ stacks on it
def test_ping_between_two_hosts_works_through_arp() -> None:
    net = Network(9)
    a = net.add_host("a", "10.0.0.1/24")
    b = net.add_host("b", "10.0.0.2/24")
    net.link("a", "b", Impairments(delay_s=0.001))
    assert ping(net, "a", "b", 1)
    assert net.now == pytest.approx(0.004)  # ARP request + reply, echo request + reply
    assert a.counters["arp_requests_out"] == 1
    assert b.counters["arp_replies_out"] == 1
    assert b.counters["icmp_echo_replies"] == 1
    assert a.arp.lookup(b.ip, net.now) == b.mac
    assert b.arp.lookup(a.ip, net.now) == a.mac  # learned from a's request
    start = net.now
    assert ping(net, "a", "b", 2)
    assert net.now - start == pytest.approx(0.002)  # no ARP the second time


def test_ping_survives_a_lossy_link_through_arp_retries() -> None:
    config = StackConfig(arp_request_timeout_s=0.1, arp_retries=20)
    net = Network(10)
    net.add_host("a", "10.0.0.1/24", config=config)
    net.add_host("b", "10.0.0.2/24", config=config)
    net.link("a", "b", Impairments(delay_s=0.001, loss=0.5))
    replies = 0
    for seq in range(20):
        replies += ping(net, "a", "b", seq, timeout_s=1.0)
    assert 0 < replies < 20
    assert net.hosts["a"].counters["arp_request_retries"] + replies > 0


def test_three_hosts_on_a_learning_switch() -> None:
    net = Network(11, trace=True)
    for i, name in enumerate(("a", "b", "c"), start=1):
        net.add_host(name, f"10.0.0.{i}/24")
        net.link(name, net.add_switch("sw") if i == 1 else "sw", Impairments(delay_s=0.0005))
    assert ping(net, "a", "b", 1)
    assert ping(net, "a", "c", 2)
    assert ping(net, "c", "b", 3)
    # After learning, unicast between a and b is not flooded to c.
    frames_to_c = sum(1 for _, name, _ in net.trace if name == "sw->c")
    assert ping(net, "a", "b", 4)
    assert sum(1 for _, name, _ in net.trace if name == "sw->c") == frames_to_c
    assert net.switches["sw"].frames_flooded >= 1


def test_host_completions_are_collected_per_host() -> None:
    net = Network(12)
    net.add_host("a", "10.0.0.1/24")
    assert net.completions == {"a": []}
    with pytest.raises(ValueError, match="already"):
        net.add_host("a", "10.0.0.9/24")
