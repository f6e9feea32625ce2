"""Congestion-control algorithms: CUBIC (RFC 9438) and none, driven with virtual time.

ACK clocking is simulated without a network: one "round" is one RTT in which the sender
keeps a full window in flight and every MSS it sent comes back as one ACK, spread evenly
over the RTT. That is enough to see the shapes the RFC promises (slow-start doubling, the
concave approach to W_max, the convex probe beyond it, the Reno-friendly floor).
"""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xdpstackd.inetstack.layer4.tcp.established.congestion_control import (
    ALGORITHMS,
    INFINITE_SSTHRESH,
    UNLIMITED_WINDOW_BYTES,
    CongestionAlgorithm,
    Cubic,
    NoCongestionControl,
    make_algorithm,
)
from xdpstackd.inetstack.layer4.tcp.established.congestion_control.cubic import (
    ALPHA_CUBIC,
    BETA_CUBIC,
    C,
)

MSS = 1000


def run_round(alg: Cubic, now: float, rtt: float, ack_segments: int = 1) -> float:
    """One RTT of ACK clocking with a window-limited sender; returns the new ``now``."""
    acks = max(1, alg.cwnd // (ack_segments * MSS))
    step = rtt / acks
    for _ in range(acks):
        now += step
        alg.on_ack(ack_segments * MSS, alg.cwnd, now, rtt)
    return now


def run_rounds(alg: Cubic, now: float, rtt: float, rounds: int) -> tuple[float, list[float]]:
    """``rounds`` RTTs; returns the new ``now`` and cwnd (in segments) after each round."""
    history = []
    for _ in range(rounds):
        now = run_round(alg, now, rtt)
        history.append(alg.cwnd / MSS)
    return now, history


def cubic_after_loss_at(segments: int, **kwargs: bool) -> Cubic:
    """A Cubic that just had a fast-retransmit congestion event at cwnd = ``segments``."""
    alg = Cubic(MSS, **kwargs)
    alg.cwnd = segments * MSS
    alg.on_congestion_event(alg.cwnd, 0.0)
    return alg


# --------------------------------------------------------------------------- slow start


def test_initial_window_is_iw10_and_ssthresh_infinite() -> None:
    alg = Cubic(MSS)
    assert alg.cwnd == 10 * MSS
    assert alg.ssthresh == INFINITE_SSTHRESH


def test_slow_start_doubles_cwnd_per_rtt_of_acks() -> None:
    alg = Cubic(MSS)
    now = run_round(alg, 0.0, 0.1)
    assert alg.cwnd == 20 * MSS
    now = run_round(alg, now, 0.1)
    assert alg.cwnd == 40 * MSS
    run_round(alg, now, 0.1)
    assert alg.cwnd == 80 * MSS


def test_slow_start_with_delayed_acks_still_doubles_per_rtt() -> None:
    # ABC: an ACK for two segments grows cwnd by two segments.
    alg = Cubic(MSS)
    run_round(alg, 0.0, 0.1, ack_segments=2)
    assert alg.cwnd == 20 * MSS


def test_slow_start_credits_every_byte_a_stretch_ack_acknowledges() -> None:
    # Receivers that ACK once per receive batch (GRO) send stretch ACKs; an L = 2*MSS cap
    # would make slow start nearly linear (Linux's tcp_slow_start has no cap either).
    alg = Cubic(MSS)
    alg.on_ack(5 * MSS, alg.cwnd, 0.1, None)
    assert alg.cwnd == 15 * MSS


def test_slow_start_with_one_ack_per_window_still_doubles_per_rtt() -> None:
    alg = Cubic(MSS)
    run_round(alg, 0.0, 0.1, ack_segments=alg.cwnd // MSS)
    assert alg.cwnd == 20 * MSS


def test_slow_start_after_rto_grows_at_most_1_mss_per_ack() -> None:
    alg = Cubic(MSS)
    alg.cwnd = 20 * MSS
    alg.on_rto(alg.cwnd, 0.0)
    alg.on_ack(2 * MSS, alg.cwnd, 0.1, None)  # RFC 3465: L = 1*SMSS after an RTO
    assert alg.cwnd == 2 * MSS


def test_slow_start_stops_exactly_at_ssthresh() -> None:
    alg = Cubic(MSS)
    alg.cwnd = 20 * MSS
    alg.on_rto(alg.cwnd, 0.0)  # ssthresh = 14 MSS, cwnd = 1 MSS
    now = 0.0
    for _ in range(3):  # 1 -> 2 -> 4 -> 8
        now = run_round(alg, now, 0.1)
    assert alg.cwnd == 8 * MSS
    for _ in range(6):
        now += 0.01
        alg.on_ack(MSS, alg.cwnd, now, 0.1)
    assert alg.cwnd == 14 * MSS == alg.ssthresh  # capped, not 8 + 6 + overshoot
    assert alg.epoch_start is None  # no byte of credit was left for avoidance
    alg.on_ack(MSS, alg.cwnd, now + 0.01, 0.1)
    assert alg.epoch_start == now + 0.01  # the next ACK is congestion avoidance


def test_ack_crossing_ssthresh_spends_its_remaining_credit_in_congestion_avoidance() -> None:
    alg = Cubic(MSS)
    alg.ssthresh = 11 * MSS + 500
    alg.on_ack(2 * MSS, alg.cwnd, 0.25, 0.1)  # 1500 bytes to ssthresh, 500 left over
    assert alg.cwnd >= alg.ssthresh
    assert alg.epoch_start == 0.25
    assert alg.cwnd_epoch == alg.ssthresh


# --------------------------------------------------------------------------- reductions


def test_congestion_event_sets_ssthresh_to_0_7_cwnd_and_cwnd_to_ssthresh() -> None:
    alg = cubic_after_loss_at(100)
    assert alg.ssthresh == 70 * MSS
    assert alg.cwnd == alg.ssthresh
    assert alg.w_max == 100 * MSS
    assert alg.epoch_start is None


def test_congestion_event_ssthresh_is_at_least_2_mss() -> None:
    alg = cubic_after_loss_at(2)  # 0.7 * 2 = 1.4 MSS -> 2 MSS
    assert alg.ssthresh == 2 * MSS
    assert alg.cwnd == 2 * MSS
    alg = Cubic(MSS)
    alg.cwnd = MSS
    alg.on_congestion_event(MSS, 0.0)
    assert alg.ssthresh == alg.cwnd == 2 * MSS


def test_rto_sets_cwnd_to_1_mss_and_reduces_ssthresh() -> None:
    alg = Cubic(MSS)
    alg.cwnd = 50 * MSS
    alg.on_rto(alg.cwnd, 0.0)
    assert alg.cwnd == MSS
    assert alg.ssthresh == 35 * MSS
    assert alg.epoch_start is None


def test_repeated_rto_holds_ssthresh_until_new_data_is_acked() -> None:
    # RFC 5681 3.1: a segment retransmitted by the timer again does not reduce ssthresh.
    alg = Cubic(MSS)
    alg.cwnd = 50 * MSS
    alg.on_rto(alg.cwnd, 0.0)
    alg.on_rto(alg.cwnd, 1.0)
    alg.on_rto(alg.cwnd, 3.0)
    assert alg.ssthresh == 35 * MSS
    assert alg.cwnd == MSS
    # Once new data is acknowledged, a later RTO reduces again, from the current cwnd.
    alg.on_ack(MSS, alg.cwnd, 3.5, None)
    alg.on_rto(alg.cwnd, 5.0)
    assert alg.ssthresh == 2 * MSS


def test_rto_resets_the_epoch_and_the_first_ca_after_it_uses_k_0_and_w_max_cwnd_epoch() -> None:
    alg = cubic_after_loss_at(100)
    now = run_round(alg, 0.0, 0.1)
    assert alg.epoch_start is not None
    alg.on_rto(alg.cwnd, now)
    assert alg.epoch_start is None
    for _ in range(10):
        now = run_round(alg, now, 0.1)
        if alg.epoch_start is not None:
            break
    # RFC 9438 4.8: K = 0, W_max = W_est = cwnd at the start of that avoidance stage.
    assert alg.k == 0.0
    assert alg.w_max == alg.cwnd_epoch
    assert alg.cwnd_epoch == pytest.approx(alg.ssthresh, abs=MSS)


# --------------------------------------------------------------------------- CUBIC curve


def test_k_follows_rfc9438_figure_2() -> None:
    alg = cubic_after_loss_at(100)
    alg.on_ack(MSS, alg.cwnd, 0.001, 0.1)  # first ACK in congestion avoidance
    # K = cbrt((W_max - cwnd_epoch) / C) = cbrt((100 - 70) / 0.4) = cbrt(75) s.
    assert alg.k == pytest.approx(4.2171633265, abs=1e-9)
    assert alg.epoch_start == 0.001
    assert alg.cwnd_epoch == 70 * MSS


def test_cwnd_grows_concave_to_w_max_at_k_then_convex_beyond() -> None:
    rtt = 0.1
    alg = cubic_after_loss_at(100)
    k = math.cbrt(100 * (1 - BETA_CUBIC) / C)
    _, history = run_rounds(alg, 0.0, rtt, 130)
    times = [rtt * (i + 1) for i in range(len(history))]

    # At t ~= K the window is at the plateau, W_max = 100 segments.
    at_k = min(range(len(times)), key=lambda i: abs(times[i] - k))
    assert history[at_k] == pytest.approx(100, rel=0.03)

    def growth_per_half_second(lo: float, hi: float) -> list[float]:
        marks = [i for i, t in enumerate(times) if lo <= t <= hi][::5]
        return [history[b] - history[a] for a, b in itertools.pairwise(marks)]

    before = growth_per_half_second(0.0, k)
    after = growth_per_half_second(k, times[-1])
    # Concave: growth slows down approaching W_max...
    assert all(b < a for a, b in itertools.pairwise(before)), before
    # ...convex: then speeds up again (never slower than the round before, tiny slack
    # for the linear Reno-friendly stretch where W_est is ahead of the cubic curve).
    assert all(b >= a - 0.01 for a, b in itertools.pairwise(after)), after
    assert after[-1] > 10 * after[0]
    assert history[-1] > 150  # well past the old maximum: probing for more bandwidth


def test_one_ack_in_the_concave_region_follows_the_rfc_arithmetic() -> None:
    # Hand-evaluated RFC 9438 steps for two ACKs after a loss at 100 segments (in
    # segments; K = cbrt(75), W_max = 100, cwnd_epoch = W_est = 70, RTT = 0.1 s).
    alg = cubic_after_loss_at(100)
    k = math.cbrt(75)
    # ACK 1 at t = 0: W_est = 70 + alpha * 1/70 > W_cubic(0) = 70, Reno-friendly region
    # (4.3): cwnd = W_est.
    alg.on_ack(MSS, alg.cwnd, 0.0, 0.1)
    w_est = 70 + ALPHA_CUBIC * 1 / 70
    assert alg.cwnd == int(w_est * MSS)
    # ACK 2 at t = 0.05: W_est += alpha/cwnd, W_cubic(0.05) = 100 - 0.4 * 4.17^3 ~ 71.06 is
    # above it, so 4.4 applies with target = W_cubic(t + RTT) = W_cubic(0.15):
    # cwnd += (target - cwnd) / cwnd.
    cwnd = w_est
    w_est += ALPHA_CUBIC * 1 / cwnd
    assert C * (0.05 - k) ** 3 + 100 > w_est
    target = C * (0.05 + 0.1 - k) ** 3 + 100
    expected = cwnd + (target - cwnd) / cwnd
    alg.on_ack(MSS, alg.cwnd, 0.05, 0.1)
    assert alg.cwnd == pytest.approx(expected * MSS, abs=1)
    assert alg.w_est == pytest.approx(w_est * MSS)


def test_target_is_clamped_to_1_5_cwnd_so_growth_stays_below_1_5x_per_rtt() -> None:
    # With a 2 s RTT, W_cubic(t + RTT) runs far ahead of cwnd; 4.2 caps target at
    # 1.5 * cwnd so CUBIC never grows faster than slow start would.
    alg = cubic_after_loss_at(10)
    _, history = run_rounds(alg, 0.0, 2.0, 12)
    ratios = [b / a for a, b in itertools.pairwise(history)]
    assert max(ratios) <= 1.5 + 1e-9
    assert max(ratios) > 1.4  # the clamp was actually what limited growth


def test_fast_convergence_lowers_w_max_when_loss_comes_below_previous_w_max() -> None:
    alg = cubic_after_loss_at(100)  # W_max = 100
    alg.cwnd = 80 * MSS  # the next loss comes before we regained the old maximum
    alg.on_congestion_event(alg.cwnd, 1.0)
    assert alg.w_max == pytest.approx(80 * MSS * (1 + BETA_CUBIC) / 2)  # 68 segments
    assert alg.ssthresh == 56 * MSS


def test_without_fast_convergence_w_max_is_the_cwnd_before_the_loss() -> None:
    alg = cubic_after_loss_at(100, fast_convergence=False)
    alg.cwnd = 80 * MSS
    alg.on_congestion_event(alg.cwnd, 1.0)
    assert alg.w_max == 80 * MSS


def test_loss_above_previous_w_max_remembers_the_new_cwnd() -> None:
    alg = cubic_after_loss_at(100)
    alg.cwnd = 120 * MSS
    alg.on_congestion_event(alg.cwnd, 1.0)
    assert alg.w_max == 120 * MSS


def test_reno_friendly_region_short_rtt_is_at_least_as_aggressive_as_reno() -> None:
    # 1 ms RTT and W_max = 20 segments: K = cbrt(15) ~ 2.47 s, so over 0.3 s the cubic
    # curve hardly moves and W_est (Reno's AIMD estimate) must carry the window.
    rtt = 0.001
    alg = cubic_after_loss_at(20)
    now, history = run_rounds(alg, 0.0, rtt, 300)
    t = now - (alg.epoch_start or 0.0)
    w_cubic_t = (C * (t - alg.k) ** 3) * MSS + alg.w_max
    assert alg.cwnd >= alg.w_est - 1  # cwnd follows W_est (to the byte)
    assert alg.cwnd > w_cubic_t + 100 * MSS  # far ahead of the cubic curve
    # W_est grows alpha_cubic (~0.53) segments per RTT until it reaches cwnd_prior...
    early = [b - a for a, b in itertools.pairwise(history[:6])]
    assert all(ALPHA_CUBIC * 0.85 <= g <= ALPHA_CUBIC * 1.1 for g in early), early
    # ...then alpha = 1: exactly Reno's one segment per RTT.
    late = [b - a for a, b in itertools.pairwise(history[-6:])]
    assert all(0.9 <= g <= 1.01 for g in late), late
    # Never below an AIMD(alpha_cubic) window that started at the same place.
    assert alg.cwnd / MSS >= 14 + ALPHA_CUBIC * 300 * 0.9


# --------------------------------------------------------------------------- app-limited


def test_application_limited_acks_do_not_grow_cwnd_in_slow_start() -> None:
    alg = Cubic(MSS)
    for i in range(20):
        alg.on_ack(MSS, 3 * MSS, 0.01 * i, 0.1)  # only 3 segments were in flight
    assert alg.cwnd == 10 * MSS


def test_application_limited_acks_do_not_grow_cwnd_in_congestion_avoidance() -> None:
    alg = cubic_after_loss_at(100)
    now = run_round(alg, 0.0, 0.1)
    cwnd = alg.cwnd
    for i in range(200):
        alg.on_ack(MSS, cwnd - 2 * MSS, now + 0.01 * i, 0.1)
    assert alg.cwnd == cwnd


def test_flight_within_one_mss_of_cwnd_counts_as_window_limited() -> None:
    alg = Cubic(MSS)
    alg.on_ack(MSS, alg.cwnd - MSS + 1, 0.1, None)
    assert alg.cwnd == 11 * MSS


def test_application_limited_time_is_excluded_from_t() -> None:
    # RFC 9438 5.8: t must not include application-limited periods. Two flows see the
    # same window-limited rounds; one of them also idles (app-limited) for 10 s in the
    # middle. They must end with the same window, not one boosted by 10 s of "t".
    steady = cubic_after_loss_at(100)
    paused = cubic_after_loss_at(100)
    run_rounds(steady, 0.0, 0.1, 20)
    now_p, _ = run_rounds(paused, 0.0, 0.1, 10)
    for i in range(100):
        paused.on_ack(MSS, MSS, now_p + 0.1 * i, 0.1)  # app-limited ACKs, 10 s long
    now_p += 10.0
    now_p, _ = run_rounds(paused, now_p, 0.1, 10)
    assert paused.cwnd == pytest.approx(steady.cwnd, rel=0.01)
    assert paused.epoch_start == pytest.approx(steady.epoch_start + 10.0, abs=0.2)


def test_zero_byte_ack_changes_nothing() -> None:
    alg = Cubic(MSS)
    before = alg.snapshot()
    alg.on_ack(0, alg.cwnd, 1.0, None)
    assert alg.snapshot() == before


# --------------------------------------------------------------------------- misc


def test_snapshot_has_the_cubic_fields() -> None:
    alg = cubic_after_loss_at(100)
    alg.on_ack(MSS, alg.cwnd, 0.5, 0.1)
    snap = alg.snapshot()
    for key in (
        "name",
        "mss",
        "cwnd",
        "ssthresh",
        "in_slow_start",
        "w_max",
        "k",
        "epoch_start",
        "cwnd_epoch",
        "w_est",
        "cwnd_prior",
        "srtt_s",
        "fast_convergence",
    ):
        assert key in snap, key
    assert snap["name"] == "cubic"
    assert snap["cwnd"] == alg.cwnd
    assert snap["ssthresh"] == 70 * MSS
    assert snap["epoch_start"] == 0.5
    assert snap["srtt_s"] == 0.1
    assert snap["in_slow_start"] is False


def test_srtt_for_the_target_is_smoothed_per_rfc6298_gain() -> None:
    alg = Cubic(MSS)
    alg.on_ack(MSS, alg.cwnd, 0.1, 0.1)
    alg.on_ack(MSS, alg.cwnd, 0.2, 0.9)
    assert alg.srtt_s == pytest.approx(0.1 + (0.9 - 0.1) / 8)
    alg.on_ack(MSS, alg.cwnd, 0.3, None)  # no sample: unchanged
    assert alg.srtt_s == pytest.approx(0.2)


@pytest.mark.parametrize("mss", [0, -1])
def test_invalid_mss_is_rejected(mss: int) -> None:
    with pytest.raises(ValueError):
        Cubic(mss)
    with pytest.raises(ValueError):
        NoCongestionControl(mss)


def test_none_window_never_changes() -> None:
    alg = NoCongestionControl(MSS)
    assert alg.cwnd == alg.ssthresh == UNLIMITED_WINDOW_BYTES == 2**31 - 1
    for i in range(50):
        alg.on_ack(MSS, alg.cwnd, 0.01 * i, 0.01)
    alg.on_congestion_event(100 * MSS, 1.0)
    alg.on_rto(100 * MSS, 2.0)
    alg.on_ack(MSS, MSS, 3.0, None)
    assert alg.cwnd == alg.ssthresh == UNLIMITED_WINDOW_BYTES
    assert alg.snapshot() == {
        "name": "none",
        "mss": MSS,
        "cwnd": UNLIMITED_WINDOW_BYTES,
        "ssthresh": UNLIMITED_WINDOW_BYTES,
    }


def test_make_algorithm_builds_each_known_name() -> None:
    assert ALGORITHMS == ("cubic", "none")
    cubic = make_algorithm("cubic", 1460)
    assert isinstance(cubic, Cubic)
    assert cubic.cwnd == 10 * 1460
    assert make_algorithm("cubic", 1460, initial_cwnd_segments=4).cwnd == 4 * 1460
    assert isinstance(make_algorithm("none", 1460), NoCongestionControl)
    for name in ALGORITHMS:
        alg = make_algorithm(name, 1460)
        assert alg.name == name
        assert isinstance(alg, CongestionAlgorithm)  # satisfies the Protocol


def test_make_algorithm_rejects_an_unknown_name_naming_it() -> None:
    with pytest.raises(ValueError, match="'bbr'"):
        make_algorithm("bbr", 1460)


# --------------------------------------------------------------------------- property

# One event: (kind, acked segments, flight as a fraction of cwnd, time step s, RTT sample).
# The last three fields only matter for "ack"; acked 0 = an ACK without new data.
Event = tuple[str, int, float, float, float | None]
_EVENT: st.SearchStrategy[Event] = st.tuples(
    st.sampled_from(["ack", "ack", "ack", "loss", "rto"]),
    st.integers(min_value=0, max_value=4),
    st.floats(min_value=0.0, max_value=1.5),
    st.floats(min_value=0.0, max_value=2.0),
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0)),
)


@settings(max_examples=300)
@given(
    mss=st.sampled_from([536, 1000, 1460, 8960]),
    fast_convergence=st.booleans(),
    events=st.lists(_EVENT, max_size=120),
)
def test_random_event_sequences_keep_cubic_windows_sane(
    mss: int, fast_convergence: bool, events: list[Event]
) -> None:
    alg = Cubic(mss, fast_convergence=fast_convergence)
    now = 0.0
    for kind, segs, flight_frac, dt, rtt in events:
        now += dt
        before = alg.cwnd
        if kind == "ack":
            alg.on_ack(segs * mss, int(alg.cwnd * flight_frac), now, rtt)
            assert alg.cwnd >= before  # an ACK never shrinks the window
            assert alg.cwnd <= max(before * 1.5 + 1, before + 2 * mss)  # bounded growth
        elif kind == "loss":
            alg.on_congestion_event(alg.cwnd, now)
            assert alg.ssthresh >= 2 * mss
            assert alg.cwnd == alg.ssthresh
        else:
            alg.on_rto(alg.cwnd, now)
            assert alg.ssthresh >= 2 * mss
            assert alg.cwnd == mss
        assert isinstance(alg.cwnd, int) and isinstance(alg.ssthresh, int)
        assert alg.cwnd >= mss
        assert alg.ssthresh >= 2 * mss
        for key, value in alg.snapshot().items():
            if isinstance(value, float):
                assert math.isfinite(value) and value >= 0.0, (key, value)
