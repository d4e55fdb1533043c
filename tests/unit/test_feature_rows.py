"""Feature rows read from the wire fold exactly as the dicts the codec gives.

The joiner's decoder hands the fold :class:`FeatureRow` objects (the message's bytes) and
the fold reads a batch of them with numpy; the profile must be bit for bit the one the
codec's dicts make, NaN and infinities counted alike, and rows of another layout (a
request with other features) mixed in must change nothing either.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.join.decode import FastDecoder
from streams.join.feature_rows import FeatureRow, feature_table
from streams.join.windows import Windows
from streams.metrics.partial import SHARED
from streams.schemas import default_codec

VALUES = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-1e3, 1e3)


def request(features: dict[str, float]) -> bytes:
    return default_codec().encode(
        "Request", {"request_id": "r", "event_time": 1, "numeric_features": features}
    )


def folded(rows: list[object]) -> dict[str, object]:
    w = Windows(1000)
    w.columns((SHARED, 0)).num_rows.extend(rows)  # type: ignore[arg-type]
    w.fold()
    return w.acc[(SHARED, 0)].to_record()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(VALUES, min_size=3, max_size=3), min_size=1, max_size=40),
    st.lists(st.integers(0, 39), max_size=4),
)
def test_rows_fold_as_the_codecs_dicts(values: list[list[float]], others: list[int]) -> None:
    names = ["a", "bb", "c"]
    messages = [request(dict(zip(names, v, strict=True))) for v in values]
    for i in others:  # another layout here and there: the general path
        if i < len(messages):
            messages[i] = request({"a": 1.0, "z": 2.0})
    fast = FastDecoder(default_codec())
    rows = [fast.decode(m)[1]["numeric_features"] for m in messages]
    dicts = [default_codec().decode(m)[1]["numeric_features"] for m in messages]
    assert [dict(r) for r in rows] == dicts or any(math.isnan(x) for v in values for x in v)
    assert repr(folded(rows)) == repr(folded(dicts))


def test_one_layout_reads_as_one_table() -> None:
    fast = FastDecoder(default_codec())
    rows = [fast.decode(request({"x": float(i), "yy": -i / 3}))[1] for i in range(5)]
    features = [r["numeric_features"] for r in rows]
    assert all(isinstance(f, FeatureRow) for f in features)
    table = feature_table(features)
    assert table is not None
    names, values = table
    assert names == ("x", "yy")
    assert np.array_equal(
        values, np.array([[float(i) for i in range(5)], [-i / 3 for i in range(5)]])
    )
    assert feature_table([*features, {"x": 1.0, "yy": 2.0}]) is None
    assert dict(features[2]) == {"x": 2.0, "yy": -2 / 3} and len(features[2]) == 2


def test_rows_read_by_name_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of several layouts is read by name: each row's doubles are unpacked once,
    not once per name (10,000 names made that 10^8 reads in the joiner's fuzz test)."""
    fast = FastDecoder(default_codec())
    wide = {f"f{i}": float(i) for i in range(300)}
    messages = [request(wide if i % 3 == 0 else {"a": 1.0, "b": float(i)}) for i in range(9)]
    rows = [fast.decode(m)[1]["numeric_features"] for m in messages]
    dicts = [default_codec().decode(m)[1]["numeric_features"] for m in messages]
    reads = Counter[int]()
    original = FeatureRow.values_tuple

    def counted(self: FeatureRow) -> tuple[float, ...]:
        reads[id(self)] += 1
        return original(self)

    monkeypatch.setattr(FeatureRow, "values_tuple", counted)
    assert repr(folded(rows)) == repr(folded(dicts))
    assert max(reads.values()) == 1
