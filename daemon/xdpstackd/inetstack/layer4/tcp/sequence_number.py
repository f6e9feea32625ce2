"""TCP sequence numbers: 32-bit values compared in serial-number arithmetic (RFC 1982).

A sequence number is a point on a 2**32 circle. ``a < b`` means "b is ahead of a by less
than half the circle", so comparisons stay correct across the wrap at 2**32::

    ... 2**32-2, 2**32-1, 0, 1, 2 ...      SeqNumber(2**32 - 1) < SeqNumber(1)  is True

Arithmetic: ``seq + n`` and ``seq - n`` (n an int) give a SeqNumber; ``a - b`` (both
SeqNumbers) gives the signed distance from b to a, an int in (-2**31, 2**31].
"""

from __future__ import annotations

#: The circle's size, mask and half: for hot paths that work on ``.value`` ints directly
#: (``(a - b) & SEQ_MASK``, less ``SEQ_SPACE`` above ``SEQ_HALF``, is ``a.distance(b)``).
SEQ_SPACE = 1 << 32
SEQ_MASK = SEQ_SPACE - 1
SEQ_HALF = 1 << 31
_MOD, _MASK, _HALF = SEQ_SPACE, SEQ_MASK, SEQ_HALF


class SeqNumber:
    __slots__ = ("value",)

    value: int

    def __init__(self, value: int) -> None:
        self.value = value & _MASK

    def __add__(self, n: int) -> SeqNumber:
        return SeqNumber(self.value + n)

    def __sub__(self, other: SeqNumber | int) -> SeqNumber | int:  # type: ignore[override]
        if isinstance(other, SeqNumber):
            d = (self.value - other.value) & _MASK
            return d - _MOD if d > _HALF else d
        return SeqNumber(self.value - other)

    def distance(self, other: SeqNumber) -> int:
        """Signed distance ``self - other`` as an int (typed, unlike ``-``)."""
        d = (self.value - other.value) & _MASK
        return d - _MOD if d > _HALF else d

    def __lt__(self, other: SeqNumber) -> bool:
        d = (self.value - other.value) & _MASK
        return d > _HALF or (d == _HALF and self.value > other.value)

    def __le__(self, other: SeqNumber) -> bool:
        return self.value == other.value or self.__lt__(other)

    def __gt__(self, other: SeqNumber) -> bool:
        return other.__lt__(self)

    def __ge__(self, other: SeqNumber) -> bool:
        return self.value == other.value or other.__lt__(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeqNumber) and self.value == other.value

    def __hash__(self) -> int:
        return self.value

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"SeqNumber({self.value})"


def seq_max(a: SeqNumber, b: SeqNumber) -> SeqNumber:
    return b if a < b else a


def seq_min(a: SeqNumber, b: SeqNumber) -> SeqNumber:
    return a if a < b else b


def in_window(seq: SeqNumber, start: SeqNumber, size: int) -> bool:
    """``start <= seq < start + size`` on the circle (size >= 0)."""
    return 0 <= ((seq.value - start.value) & _MASK) < size
