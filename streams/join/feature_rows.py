"""A request's numeric features as they came off the wire, and many of them as one table.

Requests of one service send the same feature names in the same order, so their Avro maps
of doubles have one byte layout (:mod:`streams.join.decode` learns it and checks every
request against it). A :class:`FeatureRow` keeps the message and where its map starts
instead of building a dict of 20 floats per request; the fold then reads a whole batch of
rows of one layout with numpy (:func:`feature_table`): the bytes joined once, the doubles
picked out by their offsets, one column per feature. Before this, building the dicts cost
~0.8 us a request and reading them back by name (``itemgetter``) about a fifth of a fold
(bench/statistics.py, py-spy).

A row is still a read-only mapping of name to value, so whatever reads it by name reads
what a dict would hold.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from operator import attrgetter
from typing import cast

import numpy as np
import numpy.typing as npt

__all__ = ["DoublesLayout", "FeatureRow", "feature_table"]


class DoublesLayout:
    """Names, and where each one's double sits in a block of ``size`` bytes."""

    __slots__ = ("_columns", "keys", "offsets", "size", "unpack")

    def __init__(self, keys: tuple[str, ...], offsets: Sequence[int], size: int) -> None:
        self.keys = keys
        self.offsets = tuple(offsets)
        self.size = size
        fmt = ["<"]
        last = 0
        for off in self.offsets:
            fmt.append(f"{off - last}xd" if off > last else "d")
            last = off + 8
        self.unpack = struct.Struct("".join(fmt)).unpack_from
        #: the byte columns of every double, in name order: 8 per name
        self._columns = (np.asarray(self.offsets, dtype=np.intp)[:, None] + np.arange(8)).ravel()

    def table(self, blocks: bytes, n: int) -> npt.NDArray[np.float64]:
        """``n`` blocks laid end to end as one (names, rows) float64 table."""
        raw = np.frombuffer(blocks, dtype=np.uint8).reshape(n, self.size)
        values = np.ascontiguousarray(raw[:, self._columns]).view("<f8")
        return np.ascontiguousarray(values.T)


class FeatureRow(Mapping[str, float]):
    """The numeric features of one request: ``layout``'s block at ``start`` of ``data``."""

    __slots__ = ("_map", "data", "layout", "start")

    def __init__(self, layout: DoublesLayout, data: bytes, start: int) -> None:
        self.layout = layout
        self.data = data
        self.start = start
        self._map: dict[str, float] | None = None

    def values_tuple(self) -> tuple[float, ...]:
        return self.layout.unpack(self.data, self.start)

    def __getitem__(self, name: str) -> float:
        return self._dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self.layout.keys)  # distinct names: the decoder learns no other layout

    def _dict(self) -> dict[str, float]:
        """The values by name, read once: a reader by name (a batch of rows of several
        layouts, say one request of 10,000 features among others) looks up every name,
        and reading the whole row again for each was quadratic (the joiner's fuzz test
        found it: 10,000 x 10,000 reads outlived the transaction timeout)."""
        if self._map is None:
            self._map = dict(zip(self.layout.keys, self.values_tuple(), strict=True))
        return self._map

    def __repr__(self) -> str:
        return repr(self._dict())


def feature_table(
    rows: Sequence[Mapping[str, float]],
) -> tuple[tuple[str, ...], npt.NDArray[np.float64]] | None:
    """(names, one row of values per name) when every row is a :class:`FeatureRow` of
    one layout, read in one numpy pass; else None (the caller reads them by name)."""
    if not rows:
        return None
    first = rows[0]
    if type(first) is not FeatureRow:
        return None
    layout = first.layout
    # the checks and the slices at C speed, no Python call per row (a tenth of the
    # numeric profile's fold time per-row, bench/statistics.py, py-spy)
    if set(map(type, rows)) != {FeatureRow}:
        return None
    feature_rows = cast(Sequence[FeatureRow], rows)
    if set(map(_LAYOUT, feature_rows)) != {layout}:
        return None
    size = layout.size
    blocks = b"".join([r.data[r.start : r.start + size] for r in feature_rows])
    return layout.keys, layout.table(blocks, len(rows))


_LAYOUT = attrgetter("layout")
