"""SeqNumber: RFC 1982 serial-number arithmetic across the 2**32 wrap."""

from __future__ import annotations

from hypothesis import assume, given
from hypothesis import strategies as st

from xdpstackd.inetstack.layer4.tcp.sequence_number import (
    SeqNumber,
    in_window,
    seq_max,
    seq_min,
)

TOP = 2**32 - 1
seqs = st.integers(0, TOP).map(SeqNumber)
forward = st.integers(1, 2**31 - 1)  # strictly ahead, less than half the circle


def test_wraparound_ordering_top_before_zero_before_one() -> None:
    top, zero, one = SeqNumber(TOP), SeqNumber(0), SeqNumber(1)
    assert top < zero < one
    assert top < one
    assert one > zero > top
    assert not zero < top


def test_construction_reduces_modulo_2_32() -> None:
    assert SeqNumber(2**32) == SeqNumber(0)
    assert SeqNumber(-1) == SeqNumber(TOP)
    assert SeqNumber(-1).value == TOP


def test_addition_and_subtraction_of_ints_wrap() -> None:
    assert SeqNumber(TOP) + 2 == SeqNumber(1)
    assert SeqNumber(1) - 2 == SeqNumber(TOP)
    assert isinstance(SeqNumber(5) - 1, SeqNumber)


def test_distance_is_signed_across_the_wrap() -> None:
    assert SeqNumber(1) - SeqNumber(TOP) == 2
    assert SeqNumber(TOP) - SeqNumber(1) == -2
    assert SeqNumber(1).distance(SeqNumber(TOP)) == 2
    assert SeqNumber(TOP).distance(SeqNumber(1)) == -2
    assert SeqNumber(7) - SeqNumber(7) == 0


def test_distance_at_exactly_half_the_circle_is_positive() -> None:
    # The documented range is (-2**31, 2**31]: the ambiguous midpoint reads as ahead.
    assert SeqNumber(2**31) - SeqNumber(0) == 2**31
    assert SeqNumber(0) - SeqNumber(2**31) == 2**31


def test_equality_and_hash_follow_the_value_not_int() -> None:
    assert SeqNumber(5) == SeqNumber(5)
    assert SeqNumber(5) != 5
    assert len({SeqNumber(5), SeqNumber(2**32 + 5)}) == 1
    assert int(SeqNumber(9)) == 9


def test_le_and_ge_include_equality() -> None:
    a = SeqNumber(TOP)
    assert a <= SeqNumber(TOP) and a >= SeqNumber(TOP)
    assert a <= SeqNumber(0) and not a >= SeqNumber(0)


def test_seq_max_and_seq_min_across_the_wrap() -> None:
    before, after = SeqNumber(TOP - 9), SeqNumber(5)
    assert seq_max(before, after) == after
    assert seq_max(after, before) == after
    assert seq_min(before, after) == before
    assert seq_min(after, before) == before
    assert seq_max(after, after) == after


def test_in_window_edges_across_the_wrap() -> None:
    start = SeqNumber(TOP - 1)
    assert in_window(start, start, 4)
    assert in_window(SeqNumber(TOP), start, 4)
    assert in_window(SeqNumber(1), start, 4)  # start + 3
    assert not in_window(SeqNumber(2), start, 4)  # start + size: one past the end
    assert not in_window(start - 1, start, 4)


def test_empty_window_contains_nothing() -> None:
    assert not in_window(SeqNumber(10), SeqNumber(10), 0)


@given(seqs, forward)
def test_a_is_before_a_plus_n(a: SeqNumber, n: int) -> None:
    b = a + n
    assert a < b and b > a
    assert a <= b and b >= a
    assert not b < a and not a > b
    assert a != b
    assert b - a == n and a - b == -n


@given(seqs, seqs)
def test_ordering_is_antisymmetric_and_total(a: SeqNumber, b: SeqNumber) -> None:
    if a == b:
        assert not a < b and not b < a
    else:
        assert (a < b) != (b < a)
        assert (a < b) == (b > a)


@given(seqs, st.integers(-(2**40), 2**40))
def test_adding_then_subtracting_n_returns_a(a: SeqNumber, n: int) -> None:
    assert a + n - n == a


@given(seqs, st.integers(-(2**31) + 1, 2**31))
def test_distance_recovers_the_offset(a: SeqNumber, n: int) -> None:
    assert (a + n) - a == n
    assert (a + n).distance(a) == n


@given(seqs, forward, forward)
def test_ordering_is_transitive_within_half_the_circle(a: SeqNumber, m: int, n: int) -> None:
    assume(m + n < 2**31)
    assert a < a + m < a + m + n
    assert a < a + (m + n)


@given(seqs, forward)
def test_seq_max_and_min_pick_the_later_and_earlier(a: SeqNumber, n: int) -> None:
    b = a + n
    assert seq_max(a, b) == b and seq_max(b, a) == b
    assert seq_min(a, b) == a and seq_min(b, a) == a


@given(seqs, st.integers(0, TOP), st.integers(0, 2**32))
def test_in_window_iff_offset_below_size(start: SeqNumber, k: int, size: int) -> None:
    assert in_window(start + k, start, size) == (k < size)
