"""RFC 6298 RTO calculator: every rule checked against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xdpstackd.inetstack.layer4.tcp.established.rto import RtoCalculator


def test_initial_rto_before_any_sample_is_initial_s() -> None:
    rto = RtoCalculator()
    assert rto.rto_s == 1.0
    assert rto.srtt_s is None
    assert rto.rttvar_s is None
    assert rto.backoffs == 0
    assert RtoCalculator(initial_s=3.0).rto_s == 3.0


def test_first_sample_sets_srtt_r_rttvar_half_r_and_rto_srtt_plus_4_rttvar() -> None:
    # (2.2): SRTT = R, RTTVAR = R/2, RTO = SRTT + max(G, 4*RTTVAR) = 0.5 + 1.0.
    rto = RtoCalculator()
    rto.on_rtt_sample(0.5)
    assert rto.srtt_s == 0.5
    assert rto.rttvar_s == 0.25
    assert rto.rto_s == pytest.approx(1.5)


def test_subsequent_samples_follow_the_rfc6298_ewma_exactly() -> None:
    rto = RtoCalculator()
    rto.on_rtt_sample(0.5)  # SRTT 0.5, RTTVAR 0.25
    # (2.3) with R' = 0.3, RTTVAR first (with the old SRTT), then SRTT:
    #   RTTVAR = 3/4 * 0.25 + 1/4 * |0.5 - 0.3| = 0.1875 + 0.05  = 0.2375
    #   SRTT   = 7/8 * 0.5  + 1/8 * 0.3         = 0.4375 + 0.0375 = 0.475
    #   RTO    = 0.475 + 4 * 0.2375 = 1.425
    rto.on_rtt_sample(0.3)
    assert rto.rttvar_s == pytest.approx(0.2375)
    assert rto.srtt_s == pytest.approx(0.475)
    assert rto.rto_s == pytest.approx(1.425)
    # R' = 0.7:
    #   RTTVAR = 3/4 * 0.2375 + 1/4 * |0.475 - 0.7| = 0.178125 + 0.05625 = 0.234375
    #   SRTT   = 7/8 * 0.475  + 1/8 * 0.7           = 0.415625 + 0.0875  = 0.503125
    #   RTO    = 0.503125 + 4 * 0.234375 = 1.440625
    rto.on_rtt_sample(0.7)
    assert rto.rttvar_s == pytest.approx(0.234375)
    assert rto.srtt_s == pytest.approx(0.503125)
    assert rto.rto_s == pytest.approx(1.440625)


def test_granularity_g_floors_the_variance_term_when_rtt_is_steady() -> None:
    # With identical samples RTTVAR decays geometrically; once 4*RTTVAR < G the RTO is
    # SRTT + G (here 0.05 + 0.01), not SRTT alone.
    rto = RtoCalculator(min_s=0.001, granularity_s=0.01)
    for _ in range(60):
        rto.on_rtt_sample(0.05)
    assert rto.srtt_s == pytest.approx(0.05)
    assert rto.rttvar_s is not None and 4 * rto.rttvar_s < 0.01
    assert rto.rto_s == pytest.approx(0.06)


def test_a_1ms_rtt_gives_rto_min() -> None:
    rto = RtoCalculator(min_s=0.2)
    rto.on_rtt_sample(0.001)  # 0.001 + 4 * 0.0005 = 0.003 s, below the floor
    assert rto.rto_s == 0.2


def test_zero_rtt_sample_is_accepted_and_gives_rto_min() -> None:
    rto = RtoCalculator()
    rto.on_rtt_sample(0.0)  # a virtual-time link without delay
    assert rto.srtt_s == 0.0
    assert rto.rto_s == 0.2


def test_a_huge_rtt_is_clamped_to_rto_max() -> None:
    rto = RtoCalculator(max_s=60.0)
    rto.on_rtt_sample(30.0)  # 30 + 4 * 15 = 90 s
    assert rto.rto_s == 60.0


def test_backoff_doubles_1_2_4_and_caps_at_max_s() -> None:
    rto = RtoCalculator(initial_s=1.0, max_s=60.0)
    seen = []
    for _ in range(8):
        rto.on_timeout()
        seen.append(rto.rto_s)
    assert seen == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert rto.backoffs == 8


def test_new_sample_after_backoff_recomputes_rto_and_clears_backoff() -> None:
    rto = RtoCalculator()
    rto.on_rtt_sample(0.5)  # SRTT 0.5, RTTVAR 0.25, RTO 1.5
    for _ in range(3):
        rto.on_timeout()
    assert rto.rto_s == pytest.approx(12.0)
    assert rto.backoffs == 3
    # Karn: the backed-off RTO stays until a valid sample; that sample goes through
    # (2.3) with the old SRTT/RTTVAR (they are not reset by timeouts).
    rto.on_rtt_sample(0.5)
    assert rto.backoffs == 0
    assert rto.srtt_s == pytest.approx(0.5)
    assert rto.rttvar_s == pytest.approx(0.1875)  # 3/4 * 0.25 + 1/4 * 0
    assert rto.rto_s == pytest.approx(0.5 + 4 * 0.1875)


def test_first_sample_after_backoff_without_earlier_samples_is_a_first_sample() -> None:
    rto = RtoCalculator()
    rto.on_timeout()
    rto.on_timeout()
    assert rto.rto_s == 4.0
    rto.on_rtt_sample(0.1)
    assert (rto.srtt_s, rto.rttvar_s, rto.backoffs) == (0.1, 0.05, 0)
    assert rto.rto_s == pytest.approx(0.3)


@pytest.mark.parametrize("bad", [-0.001, math.nan, math.inf])
def test_invalid_rtt_sample_raises_and_leaves_state_unchanged(bad: float) -> None:
    rto = RtoCalculator()
    rto.on_rtt_sample(0.5)
    before = rto.snapshot()
    with pytest.raises(ValueError):
        rto.on_rtt_sample(bad)
    assert rto.snapshot() == before


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_s": 0.0},
        {"min_s": 2.0, "max_s": 1.0},
        {"max_s": math.inf},
        {"initial_s": 0.0},
        {"initial_s": math.nan},
        {"granularity_s": -1.0},
    ],
)
def test_invalid_configuration_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RtoCalculator(**kwargs)


def test_initial_rto_is_clamped_into_min_max() -> None:
    assert RtoCalculator(initial_s=0.05, min_s=0.2).rto_s == 0.2
    assert RtoCalculator(initial_s=120.0, max_s=60.0).rto_s == 60.0


def test_snapshot_has_every_field() -> None:
    rto = RtoCalculator()
    rto.on_rtt_sample(0.1)
    rto.on_timeout()
    snap = rto.snapshot()
    assert snap == {
        "srtt_s": 0.1,
        "rttvar_s": 0.05,
        "rto_s": pytest.approx(0.6),
        "backoffs": 1,
        "initial_s": 1.0,
        "min_s": 0.2,
        "max_s": 60.0,
        "granularity_s": 0.001,
    }


@given(
    st.lists(
        st.one_of(
            st.floats(min_value=0.0, max_value=200.0, allow_nan=False),
            st.none(),  # None = a timeout
        ),
        max_size=60,
    )
)
def test_rto_always_stays_within_min_and_max(events: list[float | None]) -> None:
    rto = RtoCalculator(min_s=0.2, max_s=60.0)
    for event in events:
        if event is None:
            before = rto.rto_s
            rto.on_timeout()
            assert rto.rto_s == min(2 * before, 60.0)
        else:
            rto.on_rtt_sample(event)
            assert rto.backoffs == 0
        assert 0.2 <= rto.rto_s <= 60.0
        assert not math.isnan(rto.rto_s)
