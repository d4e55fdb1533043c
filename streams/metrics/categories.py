"""Counts of a categorical feature's values, with a cap on distinct values and the rest counted.

Why a cap: a categorical feature can carry an unbounded set of values (ids, free text
that leaked into a feature), and the joiner keeps one of these per (partition, window,
feature); a cap keeps memory and the Avro partial bounded whatever the traffic, and the
overflow counter says how much was not itemised, so nothing is silently lost.

Why these two rules, and not DataSketches' frequent-items sketch: its purges depend on the
order items arrive in (fed the same words forward and backward it gives different
sketches), so partials would not be bit-identical across batch splits, replays and merge
orders; and its counts are estimates, where a capped dictionary's are exact.

- Within one sketch, the first ``cap`` distinct values seen keep their own counts and a
  value first seen after that is counted in ``overflow``. Kafka replays a partition in
  the same order, so a replayed or restarted joiner builds the same sketch, and
  :meth:`CategoryCounts.update_many` gives the same sketch however the stream is cut into
  batches.
- :meth:`CategoryCounts.merged` sums any number of sketches and only then re-caps, keeping
  the ``cap`` values with the highest counts (ties: the smaller string first) and moving the
  rest to ``overflow``. The result depends only on the collection of sketches, never on
  the order they arrived in. Re-capping loses detail, so merging in stages (merge of
  merges) can differ from merging everything at once when a cap was reached; merge all of
  a window's partials in one call.

Memory: at most ``cap`` (64 by default) keys and counts per feature. Measured with
tracemalloc, a full default sketch is a 1.6 KB dict, plus 32 bytes per count above 256 (a
separate int object), so under 4 KB; the key strings are shared with the decoded records
(a sketch that outlives them holds its own copies, 64 x ~60 bytes for short strings). On
the wire: an Avro ``map<long>`` plus a ``long``. ``update_many`` costs ~30 ns per value on
a batch of 1,000 (measured on this project's 2-core machine).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

__all__ = ["CategoryCounts"]


class CategoryCounts:
    """Exact counts of up to ``cap`` distinct values, and how many values fell beyond the cap.

    Examples
    --------
    >>> a = CategoryCounts(cap=2)
    >>> a.update_many(["flat", "house", "flat", "loft", "flat"])  # "loft" came third
    >>> a.counts, a.overflow
    ({'flat': 3, 'house': 1}, 1)
    >>> b = CategoryCounts(cap=2)
    >>> b.update_many(["loft", "loft", "loft"])
    >>> m = CategoryCounts.merged([b, a])  # same as merged([a, b])
    >>> m.counts, m.overflow, m.count
    ({'flat': 3, 'loft': 3}, 2, 8)
    >>> CategoryCounts.from_record(m.to_record(), cap=2) == m
    True
    """

    DEFAULT_CAP: ClassVar[int] = 64

    __slots__ = ("cap", "counts", "overflow")
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self, cap: int = DEFAULT_CAP) -> None:
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"cap must be an int >= 1, got {cap!r}")
        self.cap = cap
        self.counts: dict[str, int] = {}
        self.overflow = 0

    @property
    def count(self) -> int:
        """How many values were added, overflow included."""
        return sum(self.counts.values()) + self.overflow

    def update(self, value: str) -> None:
        """Count one value."""
        counts = self.counts
        if value in counts:
            counts[value] += 1
        elif len(counts) < self.cap:
            counts[value] = 1
        else:
            self.overflow += 1

    def update_many(self, values: Iterable[str]) -> None:
        """Count a batch; the same as :meth:`update` on each value in order, but faster.

        ``Counter`` tallies the batch in C and keeps first-occurrence order, so admitting
        new values in that order admits exactly those the one-by-one rule would.
        """
        counts = self.counts
        cap = self.cap
        for value, n in Counter(values).items():
            if value in counts:
                counts[value] += n
            elif len(counts) < cap:
                counts[value] = n
            else:
                self.overflow += n

    @classmethod
    def merged(cls, sketches: Iterable[CategoryCounts], cap: int | None = None) -> CategoryCounts:
        """Sum all ``sketches``, then keep the ``cap`` largest counts (ties: smaller value first).

        ``cap`` defaults to the sketches' common cap (``DEFAULT_CAP`` if there are none).

        Raises
        ------
        ValueError
            If ``cap`` is not given and the sketches have different caps.
        """
        total: Counter[str] = Counter()
        overflow = 0
        caps: set[int] = set()
        for s in sketches:
            if not isinstance(s, CategoryCounts):
                raise TypeError(f"cannot merge {type(s).__name__} into CategoryCounts")
            total.update(s.counts)
            overflow += s.overflow
            caps.add(s.cap)
        if cap is None:
            if len(caps) > 1:
                raise ValueError(f"sketches with different caps {sorted(caps)}: pass cap=")
            cap = caps.pop() if caps else cls.DEFAULT_CAP
        out = cls(cap)
        ranked = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))
        out.counts = dict(ranked[:cap])
        out.overflow = overflow + sum(n for _, n in ranked[cap:])
        return out

    def to_record(self) -> dict[str, Any]:
        """``{"counts": map<string, long>, "overflow": long}``, keys sorted.

        Sorted keys make the encoded bytes a function of the counts alone, not of the order
        values were first seen in.
        """
        return {"counts": dict(sorted(self.counts.items())), "overflow": self.overflow}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], cap: int = DEFAULT_CAP) -> CategoryCounts:
        """The inverse of :meth:`to_record`; zero counts are dropped.

        Raises
        ------
        ValueError
            If a count is negative or not an int, or there are more than ``cap`` values.
        """
        out = cls(cap)
        counts = {str(k): v for k, v in record["counts"].items()}
        overflow = record.get("overflow", 0)
        for n in (*counts.values(), overflow):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"counts must be ints >= 0, got {n!r}")
        counts = {k: v for k, v in counts.items() if v}
        if len(counts) > cap:
            raise ValueError(f"{len(counts)} distinct values exceed the cap of {cap}")
        out.counts = counts
        out.overflow = overflow
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CategoryCounts):
            return NotImplemented
        return (self.cap, self.counts, self.overflow) == (other.cap, other.counts, other.overflow)

    def __repr__(self) -> str:
        return (
            f"CategoryCounts(cap={self.cap}, distinct={len(self.counts)}, "
            f"count={self.count}, overflow={self.overflow})"
        )
