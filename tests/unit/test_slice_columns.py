"""Slice values buffered flat with context ids fold to the same slices as a plain,
per-slice fold (each slice's values collected in Python and added one slice at a time)."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.join.slice_columns import ContextIndex, SliceColumns
from streams.metrics.partial import PartialStats
from streams.metrics.slices import MAX_VALUES, slice_names

Event = tuple[str, tuple[str, ...], Any]


def plain_fold(events: list[Event], *, primary: bool) -> PartialStats:
    """The reference: slices in first-seen order, each admitted with its value count."""
    order: dict[str, dict[str, list[Any]]] = {}
    for kind, ctx, value in events:
        for name in ctx:
            order.setdefault(name, {"req": [], "out": [], "reg": [], "cls": []})[kind].append(value)
    s = PartialStats()
    for name, vals in order.items():
        st_ = s.slices.get(name, sum(map(len, vals.values())))
        if st_ is None:
            continue
        st_.requests += len(vals["req"])
        if vals["reg"]:
            p, c = zip(*vals["reg"], strict=True)
            st_.add_regression(np.array(p), np.array(c))
        if vals["out"]:
            st_.add_outputs(np.array(vals["out"]), primary=primary)
        if vals["cls"]:
            p, c = zip(*vals["cls"], strict=True)
            st_.add_classification(list(p), list(c))
    return s


def columns_fold(
    events: list[Event], *, primary: bool, contexts: ContextIndex | None = None
) -> PartialStats:
    cols = SliceColumns(contexts)
    for kind, ctx, value in events:
        if kind == "req":
            cols.request(ctx)
        elif kind == "out":
            cols.output(ctx, value)
        elif kind == "reg":
            cols.regression(ctx, *value)
        else:
            cols.classification(ctx, *value)
    s = PartialStats()
    cols.fold(s, primary=primary)
    return s


finite = st.floats(-1e12, 1e12, allow_nan=False)
contexts = st.builds(
    lambda region, tenant, extra: slice_names(
        {"region": region, "tenant": f"t{tenant}", **({"device": extra} if extra else {})}
    ),
    st.sampled_from(["eu", "us", "apac"]),
    st.integers(0, MAX_VALUES + 8),  # more tenants than a key admits: the cap and overflow
    st.sampled_from(["", "web", "ios"]),
)
events = st.lists(
    st.tuples(
        st.sampled_from(["req", "out", "reg", "cls"]),
        contexts,
        st.tuples(finite, finite),
    ).map(
        lambda e: (
            e[0],
            e[1],
            None
            if e[0] == "req"
            else e[2][0]
            if e[0] == "out"
            else e[2]
            if e[0] == "reg"
            else (f"k{int(e[2][0]) % 3}", f"k{int(e[2][1]) % 3}"),
        )
    ),
    max_size=300,
)


@settings(max_examples=120, deadline=None)
@given(evs=events, primary=st.booleans())
def test_flat_fold_equals_per_slice_fold(evs: list[Event], primary: bool) -> None:
    assert (
        columns_fold(evs, primary=primary).to_record()
        == plain_fold(evs, primary=primary).to_record()
    )


def test_a_full_key_counts_every_value_of_a_refused_slice_as_overflow() -> None:
    evs: list[Event] = [("req", (f"tenant=t{i}",), None) for i in range(MAX_VALUES + 3)]
    evs += [("reg", ("tenant=t999",), (1.0, 2.0)), ("out", ("tenant=t999",), 3.0)]
    s = columns_fold(evs, primary=True)
    assert len(s.slices.by_name) == MAX_VALUES
    assert s.slices.overflow == {"tenant": 3 + 2}


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(events, min_size=2, max_size=4), primary=st.booleans())
def test_buffers_sharing_one_context_index_fold_as_alone(
    batches: list[list[Event]], primary: bool
) -> None:
    """A partition's buffers, batch after batch, number contexts in one index: each fold
    still admits its slices in its own first-seen order (the index only caches names)."""
    shared = ContextIndex()
    for evs in batches:
        assert (
            columns_fold(evs, primary=primary, contexts=shared).to_record()
            == plain_fold(evs, primary=primary).to_record()
        )


def test_a_new_slice_after_a_merge_is_capped_by_the_merged_count() -> None:
    """The per-key count behind the cap follows slices a merge brought in."""
    full = columns_fold([("req", (f"tenant=t{i}",), None) for i in range(MAX_VALUES)], primary=True)
    s = columns_fold([("req", ("tenant=a",), None)], primary=True)  # counted: 1 tenant
    s.slices.merge(full.slices)  # MERGE_VALUES >= MAX_VALUES + 1: all kept
    assert len(s.slices.by_name) == MAX_VALUES + 1
    assert s.slices.get("tenant=new", 2) is None
    assert s.slices.overflow == {"tenant": 2}


def test_a_full_context_index_is_replaced_between_folds(monkeypatch: Any) -> None:
    """Bounded: past MAX_CONTEXTS the partition's index starts over after a fold, and
    the next batch folds the same as with a fresh one."""
    from streams.join import slice_columns
    from streams.join.windows import Windows
    from streams.metrics.partial import SHARED

    monkeypatch.setattr(slice_columns, "MAX_CONTEXTS", 3)
    w = Windows(1000)
    first = w.contexts
    batch: list[Event] = [("out", (f"tenant=t{i}", "region=eu"), float(i)) for i in range(5)]
    for _ in range(2):
        cols = w.columns((SHARED, 0)).slices
        for _, ctx, value in batch:
            cols.output(ctx, value)
        w.fold()
    assert w.contexts is not first
    assert len(w.contexts.contexts) == 0
    twice = plain_fold(batch + batch, primary=True).slices.to_record()
    assert w.acc[(SHARED, 0)].slices.to_record() == twice
