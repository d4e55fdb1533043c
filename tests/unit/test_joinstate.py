"""The joiner's per-partition join and accumulate state, without Kafka.

Events are dicts shaped like decoded Avro records. The references are computed here from
the generating data with numpy / ``math.fsum`` (exact sums: equal bit for bit; MAE within
rel 1e-12 of ``np.mean``), and latency sketches are compared bucket for bucket with a
sketch built from the same values (quantiles within alpha of ``np.quantile``).
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from streams.joinstate import Emitted, PartitionState
from streams.metrics.partial import COVERAGE_FIELDS, SHARED, PartialStats
from streams.metrics.sketch import LatencySketch
from streams.schemas import default_codec

W = 1000  # window
PRIMARY = "prim@1"
CAND_A = "cand-a@1"
CAND_B = "cand-b@1"

Event = dict[str, Any]


def req(rid: str, t: int) -> Event:
    return {
        "request_id": rid,
        "event_time": t,
        "use_case": "",
        "numeric_features": {"x": 1.0},
        "categorical_features": {},
        "context": {},
    }


def pred(
    rid: str,
    t: int,
    model: str = PRIMARY,
    value: float | None = None,
    label: str | None = None,
    latency: float | None = None,
    error: str | None = None,
    scores: dict[str, float] | None = None,
) -> Event:
    return {
        "request_id": rid,
        "event_time": t,
        "model_id": model,
        "role": "PRIMARY" if model == PRIMARY else "CANDIDATE",
        "value": value,
        "label": label,
        "scores": scores or {},
        "latency_ms": latency,
        "error": error,
        "use_case": "",
    }


def feed(state: PartitionState, events: Iterable[Event]) -> None:
    for ev in events:
        if "role" in ev:
            state.on_prediction(ev)
        else:
            state.on_request(ev)


def totals(emitted: Iterable[Emitted]) -> dict[str, PartialStats]:
    out: dict[str, PartialStats] = defaultdict(PartialStats)
    for e in emitted:
        out[e.candidate].merge(e.stats)
    return out


def per_window(emitted: Iterable[Emitted]) -> dict[tuple[str, int], dict[str, Any]]:
    """Statistics summed over seq per (candidate, window), as comparable records."""
    acc: dict[tuple[str, int], PartialStats] = defaultdict(PartialStats)
    for e in emitted:
        acc[(e.candidate, e.window_start)].merge(e.stats)
    return {k: v.to_record() for k, v in acc.items() if not v.is_empty()}


def coverage(**counts: int) -> dict[str, int]:
    out = dict.fromkeys(COVERAGE_FIELDS, 0)
    out.update(counts)
    return out


def encode_acc(key: tuple[str, int], stats: PartialStats) -> bytes:
    return default_codec().encode(
        "Partial",
        {
            "joiner_partition": 0,
            "partition_count": 1,
            "candidate": key[0],
            "window_start": key[1],
            "window_end": key[1] + W,
            **stats.to_record(),
        },
    )


def decode_acc(data: bytes) -> PartialStats:
    return PartialStats.from_record(default_codec().decode_as("Partial", data))


# -- one request, every arrival order ------------------------------------------------


@pytest.mark.parametrize("batched", [False, True], ids=["one-batch", "batch-per-event"])
@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_one_pair_per_candidate_whatever_the_arrival_order(
    order: tuple[int, ...], batched: bool
) -> None:
    t = 5_300
    p, a, b = 10.25, 10.75, 7.5
    events = [
        req("r", t),
        pred("r", t, PRIMARY, value=p, latency=4.0),
        pred("r", t, CAND_A, value=a, latency=6.0),
        pred("r", t, CAND_B, value=b, latency=8.0),
    ]
    st = PartitionState(0, W, 200, 3_000)
    emitted: list[Emitted] = []
    for i in order:
        feed(st, [events[i]])
        if batched:
            emitted += st.advance()
    emitted += st.advance()
    # drive the watermark past the deadline on both streams: nothing is unmatched
    feed(st, [req("drv", t + 10_000), pred("drv", t + 10_000, PRIMARY, value=0.0)])
    emitted += st.advance()
    emitted += st.advance(close_all=True)
    tot = totals(emitted)
    assert "r" not in st.pending
    for cand, value, lat in ((CAND_A, a, 6.0), (CAND_B, b, 8.0)):
        s = tot[cand]
        assert s.coverage == coverage(pairs=1, candidate_predictions=1), cand
        assert s.regression_n == 1
        assert s.summary()["sum_diff"] == value - p
        assert s.summary()["sum_sq_diff"] == (value - p) ** 2
        assert s.candidate_latency.count == 1
        assert s.candidate_latency.quantile(0.5) == pytest.approx(lat, rel=0.01)
        assert [e.window_start for e in emitted if e.candidate == cand] == [5_000]
    shared = tot[SHARED]
    assert shared.coverage == coverage(requests=2, primary_predictions=2)
    assert shared.primary_latency.count == 1


@pytest.mark.parametrize("primary_first", [True, False])
def test_pair_lands_in_the_window_of_the_primary(primary_first: bool) -> None:
    st = PartitionState(0, W, 0, 5_000)
    events = [pred("r", 999, PRIMARY, value=1.0), pred("r", 1_001, CAND_A, value=3.0)]
    feed(st, events if primary_first else events[::-1])
    feed(st, [req("r", 999)])
    out = st.advance(close_all=True)
    pairs = {(e.candidate, e.window_start): e.stats.coverage["pairs"] for e in out}
    assert pairs[(CAND_A, 0)] == 1
    assert pairs.get((CAND_A, 1_000), 0) == 0


# -- duplicates ----------------------------------------------------------------------


def test_duplicates_counted_once_and_not_double_folded() -> None:
    st = PartitionState(0, W, 0, 5_000)
    t = 2_500
    r, p, a = req("r", t), pred("r", t, PRIMARY, 2.0, latency=1.0), pred("r", t, CAND_A, 5.0)
    b = pred("r", t, CAND_B, 1.0, latency=3.0)
    feed(st, [r, p, a, r, a, p])
    st.advance()
    feed(st, [p, b, a, r, b])  # a later batch: still duplicates
    emitted = st.advance(close_all=True)
    tot = totals(emitted)
    assert tot[SHARED].coverage == coverage(requests=1, primary_predictions=1, duplicates=4)
    assert tot[SHARED].primary_latency.count == 1
    assert tot[CAND_A].coverage == coverage(pairs=1, candidate_predictions=1, duplicates=2)
    assert tot[CAND_A].regression_n == 1
    assert tot[CAND_A].summary()["sum_diff"] == 3.0
    assert tot[CAND_B].coverage == coverage(pairs=1, candidate_predictions=1, duplicates=1)
    assert tot[CAND_B].summary()["sum_abs_diff"] == 1.0
    assert tot[CAND_B].candidate_latency.count == 1


# -- expiry ------------------------------------------------------------------------------


def test_expiry_reasons_after_the_watermark_passes_the_deadline() -> None:
    ttl = 2_000
    st = PartitionState(0, W, 0, ttl)
    t = 1_000
    feed(
        st,
        [
            # complete: nothing unmatched
            req("ok", t),
            pred("ok", t, PRIMARY, 1.0),
            pred("ok", t, CAND_A, 1.5),
            # request + primary, the candidate never answers
            req("nocand", t),
            pred("nocand", t, PRIMARY, 1.0),
            # the candidate answered, the primary never did (nor the request)
            pred("noprim", t, CAND_A, 2.0),
            # a pair joins, but its request event never arrives
            pred("noreq", t, PRIMARY, 1.0),
            pred("noreq", t, CAND_A, 4.0),
            # a request nobody answered
            req("expired", t),
            # the primary answered a request that never came, and no candidate did
            pred("orphan", t, PRIMARY, 1.0),
        ],
    )
    st.mark_idle("candidates")  # no more candidate answers: only requests and primary drive
    emitted = st.advance()
    deadline = t + ttl

    def reasons(out: list[Emitted]) -> dict[str, int]:
        names = ("no_candidate", "no_primary", "no_request", "expired")
        return {n: sum(e.stats.coverage[n] for e in out) for n in names}

    nothing = dict.fromkeys(("no_candidate", "no_primary", "no_request", "expired"), 0)
    assert reasons(emitted) == nothing
    # the watermark reaches deadline - 1 on both streams: nothing expires yet
    feed(st, [req("d1", deadline - 1), pred("d1", deadline - 1, PRIMARY, 0.0)])
    emitted += st.advance()
    assert reasons(emitted) == nothing
    assert {"ok", "nocand", "noprim", "noreq", "expired", "orphan"} <= set(st.pending)
    # only the request stream passes the deadline: the watermark is the minimum, still waits
    feed(st, [req("d2", deadline + 500)])
    emitted += st.advance()
    assert st.watermark() == deadline - 1
    assert reasons(emitted) == nothing
    # the prediction stream passes too: every entry of t expires
    feed(st, [pred("d2", deadline + 500, PRIMARY, 0.0)])
    emitted += st.advance()
    assert not {"ok", "nocand", "noprim", "noreq", "expired", "orphan"} & set(st.pending)
    emitted += st.advance(close_all=True)
    # counted once, by reason, in the window of the deadline
    by_window = per_window(emitted)
    dw = deadline - deadline % W
    # "nocand" had no candidate answer at all: '*' counts it for every candidate
    assert by_window[(CAND_A, dw)]["coverage"] == coverage(no_primary=1, no_request=1)
    # the driver d2 is in that window too
    assert by_window[(SHARED, dw)]["coverage"] == coverage(
        expired=1, no_candidate=1, no_request=1, requests=1, primary_predictions=1
    )
    tot = totals(emitted)
    assert tot[CAND_A].coverage["pairs"] == 2  # ok and noreq joined
    assert tot[CAND_A].regression_n == 2
    assert reasons(emitted) == {"no_candidate": 1, "no_primary": 1, "no_request": 2, "expired": 1}


def test_nothing_expires_before_both_streams_have_been_seen() -> None:
    st = PartitionState(0, W, 0, 1_000)
    feed(st, [req("a", 0), req("b", 50_000)])
    assert st.advance() == []
    assert st.watermark() is None
    assert set(st.pending) == {"a", "b"}


def test_entry_expires_when_the_watermark_passes_its_deadline_whatever_the_arrival_order() -> None:
    st = PartitionState(0, W, 0, 5_000)
    # "a" (deadline 15 000) arrives before "b" (deadline 7 000)
    feed(st, [req("a", 10_000), pred("a", 10_000, PRIMARY, 1.0), pred("a", 10_000, CAND_A, 2.0)])
    feed(st, [req("b", 2_000), pred("b", 2_000, PRIMARY, 1.0)])
    st.advance()
    assert st.watermark() == 10_000  # past b's deadline
    assert "b" not in st.pending


def test_late_candidate_beyond_ttl_is_not_joined_and_restore_agrees() -> None:
    def events() -> list[list[Event]]:
        return [
            [req("a", 10_000), pred("a", 10_000, PRIMARY, 1.0), pred("a", 10_000, CAND_A, 2.0)],
            [req("b", 2_000), pred("b", 2_000, PRIMARY, 1.0)],
            [pred("b", 2_000, CAND_A, 5.0)],  # 8 s late with a 5 s TTL
            [req("z", 30_000), pred("z", 30_000, PRIMARY, 0.0)],
        ]

    def run(restore_at: int | None) -> dict[str, Any]:
        st = PartitionState(0, W, 0, 5_000)
        log: list[tuple[bytes, bytes | None]] = []
        out: list[Emitted] = []
        for i, batch in enumerate(events()):
            if i == restore_at:
                st = PartitionState(0, W, 0, 5_000)
                for k, v in log:
                    st.restore(k, v, decode_acc)
                st.finish_restore()
            feed(st, batch)
            out += st.advance()
            log += list(st.changes(encode_acc))
        out += st.advance(close_all=True)
        return {k: v.to_record() for k, v in totals(out).items()}

    uninterrupted = run(None)
    assert uninterrupted[CAND_A]["coverage"]["pairs"] == 1  # only "a"
    assert uninterrupted == run(2)


def test_late_data_long_after_close_is_still_marked_late() -> None:
    st = PartitionState(0, W, 0, 5_000)
    emitted: list[Emitted] = []
    for i, t in enumerate(range(0, 20_000, 100)):
        rid = f"r{i}"
        feed(st, [req(rid, t), pred(rid, t, PRIMARY, 1.0), pred(rid, t, CAND_A, 2.0)])
        emitted += st.advance()
    assert {(e.candidate, e.seq) for e in emitted if e.window_start == 0} == {
        (CAND_A, 0),
        (SHARED, 0),
    }
    feed(st, [req("late", 500), pred("late", 500, PRIMARY, 1.0), pred("late", 500, CAND_A, 2.0)])
    feed(st, [req("next", 21_000), pred("next", 21_000, PRIMARY, 1.0)])
    feed(st, [pred("next", 21_000, CAND_A, 1.0)])  # progress moves on every stream
    late = [e for e in st.advance() if e.window_start == 0]
    assert late
    assert all(e.seq > 0 for e in late)


# -- windows and progress -------------------------------------------------------------


def test_windows_close_only_when_the_watermark_passes_their_end() -> None:
    lateness = 300
    st = PartitionState(0, W, lateness, 60_000)
    feed(st, [req("r", 100), pred("r", 100, PRIMARY, 1.0, latency=2.0)])
    feed(st, [pred("r", 100, CAND_A, 3.0, latency=5.0)])
    st.mark_idle("candidates")  # the candidate has answered all: its stream goes quiet
    out = st.advance()
    # watermark 100 - 300 < 0: window [0, 1000) stays open; progress is announced
    assert st.watermark() == -200
    assert all(e.window_start < 0 and e.stats.is_empty() for e in out)
    assert any(e.candidate == SHARED for e in out)
    # requests far ahead, predictions not: the watermark follows the slower stream
    feed(st, [req("s", 5_000)])
    assert st.advance() == []
    feed(st, [pred("s", 1_299, PRIMARY, 1.0)])  # watermark 999: progress, window 0 open
    out = st.advance()
    assert st.closed_until == 0
    assert [(e.candidate, e.window_start) for e in out] == [(SHARED, -1_000)]
    assert out[0].stats.is_empty()
    assert {k for k in st.acc if k[1] == 0} == {(CAND_A, 0), (SHARED, 0)}
    feed(st, [pred("u", 1_300, PRIMARY, 1.0)])  # watermark 1000 = end of window 0
    out = st.advance()
    assert [(e.candidate, e.window_start, e.seq) for e in out] == [
        (CAND_A, 0, 0),
        (SHARED, 0, 0),
    ]
    assert out[0].stats.coverage["pairs"] == 1
    assert out[0].stats.summary()["sum_diff"] == 2.0
    assert out[1].stats.coverage["requests"] == 1
    assert st.closed_until == 1_000
    assert not any(k[1] == 0 for k in st.acc)
    assert st.advance() == []  # no progress, no late data: nothing


def test_progress_is_announced_with_a_shared_partial_even_without_data() -> None:
    st = PartitionState(0, W, 0, 60_000)
    feed(st, [req("a", 500), pred("a", 500, PRIMARY, 1.0)])
    st.advance()
    feed(st, [req("b", 7_200), pred("b", 7_200, PRIMARY, 1.0)])  # jumps over empty windows
    out = st.advance()
    assert st.closed_until == 7_000
    # the window with data is published; the empty ones in between need no partial (the
    # joiner stamps the last '*' partial with the progress, closed_until)
    assert [(e.candidate, e.window_start) for e in out] == [(SHARED, 0)]
    assert out[0].stats.coverage["requests"] == 1
    feed(st, [req("c", 9_100), pred("c", 9_100, PRIMARY, 1.0)])
    out = st.advance()
    assert st.closed_until == 9_000
    assert [(e.candidate, e.window_start) for e in out] == [(SHARED, 7_000)]  # b's window
    # progress without any data in the closed windows: an empty '*' partial announces it
    st = PartitionState(0, W, 2_000, 60_000)
    feed(st, [req("a", 5_500), pred("a", 5_500, PRIMARY, 1.0)])
    st.advance()
    assert st.closed_until == 3_000
    feed(st, [req("b", 5_600), pred("b", 6_000, PRIMARY, 1.0)])
    out = st.advance()
    assert st.closed_until == 3_000  # watermark 3600: no window ended
    assert out == []
    feed(st, [req("c", 6_900), pred("c", 6_900, PRIMARY, 1.0)])
    out = st.advance()
    assert st.closed_until == 4_000
    assert [(e.candidate, e.window_start) for e in out] == [(SHARED, 3_000)]
    assert out[0].stats.is_empty()
    # candidates before '*': the '*' partials carry the progress
    kinds = [e.candidate == SHARED for e in out]
    assert kinds == sorted(kinds)


def test_every_advance_that_moves_progress_emits_a_shared_partial_last() -> None:
    rng = np.random.default_rng(3)
    st = PartitionState(0, W, 250, 4_000)
    t = 0
    for i in range(300):
        t += int(rng.integers(0, 120))
        before = st.closed_until
        feed(st, [req(f"r{i}", t), pred(f"r{i}", t, PRIMARY, 1.0)])
        if rng.random() < 0.7:
            feed(st, [pred(f"r{i}", t, CAND_A, float(rng.normal()))])
        out = st.advance()
        if st.closed_until != before:
            assert out and out[-1].candidate == SHARED
            assert all(e.window_start + W <= st.closed_until for e in out)
        else:
            assert out == []


def test_late_data_comes_out_with_increasing_seq_and_nothing_is_lost() -> None:
    st = PartitionState(0, W, 0, 60_000)
    emitted: list[Emitted] = []
    feed(st, [req("r0", 100), pred("r0", 100, PRIMARY, 1.0), pred("r0", 100, CAND_A, 2.0)])
    st.mark_idle("candidates")  # the candidate went quiet: requests and primary drive
    feed(st, [req("r1", 2_100), pred("r1", 2_100, PRIMARY, 1.0)])
    emitted += st.advance()
    assert st.closed_until == 2_000
    assert {(e.candidate, e.window_start, e.seq) for e in emitted} >= {
        (CAND_A, 0, 0),
        (SHARED, 0, 0),
    }
    late_seqs: list[int] = []
    for i, rid in enumerate(["late1", "late2"]):
        feed(st, [req(rid, 700), pred(rid, 700, PRIMARY, 3.0), pred(rid, 700, CAND_A, 7.0)])
        assert st.advance() == []  # late data waits for progress to move: batch-independent
        st.mark_idle("candidates")  # the late answer woke its stream; it goes quiet again
        t = 3_100 + i * W
        feed(st, [req(f"move{i}", t), pred(f"move{i}", t, PRIMARY, 1.0)])
        out = [e for e in st.advance() if e.window_start == 0]
        assert {(e.candidate, e.window_start) for e in out} == {(CAND_A, 0), (SHARED, 0)}
        late_seqs += [e.seq for e in out]
        emitted += out
    # late additions: seq > 0, increasing and unique within the partition
    assert all(q > 0 for q in late_seqs)
    assert late_seqs == sorted(late_seqs) and len(set(late_seqs)) == len(late_seqs)
    emitted += st.advance(close_all=True)
    window0 = per_window(emitted)
    cand = PartialStats.from_record(window0[(CAND_A, 0)])
    assert cand.coverage["pairs"] == 3
    assert cand.summary()["sum_diff"] == math.fsum([1.0, 4.0, 4.0])
    assert PartialStats.from_record(window0[(SHARED, 0)]).coverage["requests"] == 3


# -- errors and output kinds -------------------------------------------------------------


def test_errors_are_counted_and_excluded_from_sums() -> None:
    st = PartitionState(0, W, 0, 60_000)
    t = 100
    feed(
        st,
        [
            req("e1", t),
            pred("e1", t, PRIMARY, None, latency=9.0, error="boom"),
            pred("e1", t, CAND_A, 5.0, latency=1.0),
            req("e2", t),
            pred("e2", t, PRIMARY, 1.0, latency=2.0),
            pred("e2", t, CAND_A, None, latency=30.0, error="ValueError"),
            req("ok", t),
            pred("ok", t, PRIMARY, 1.0, latency=2.0),
            pred("ok", t, CAND_A, 1.25, latency=3.0),
        ],
    )
    tot = totals(st.advance(close_all=True))
    shared, cand = tot[SHARED], tot[CAND_A]
    assert shared.coverage == coverage(requests=3, primary_predictions=3, primary_errors=1)
    assert cand.coverage == coverage(pairs=3, candidate_predictions=3, candidate_errors=1)
    assert cand.regression_n == 1
    assert cand.summary()["sum_diff"] == 0.25
    # failed predictions still report their latency
    assert shared.primary_latency.count == 3
    assert cand.candidate_latency.count == 3
    both = PartialStats()
    both.merge(shared)
    both.merge(cand)
    assert both.summary()["primary_error_rate"] == 1 / 3
    assert both.summary()["candidate_error_rate"] == 1 / 3


def test_classifier_pairs_and_mixed_outputs() -> None:
    rng = np.random.default_rng(8)
    classes = ["a", "b", "c"]
    n = 500
    p = rng.choice(classes, n).tolist()
    c = [x if rng.random() < 0.7 else str(rng.choice(classes)) for x in p]
    st = PartitionState(0, W, 0, 60_000)
    for i in range(n):
        rid = f"r{i}"
        feed(st, [pred(rid, i, CAND_A, label=c[i]), req(rid, i), pred(rid, i, PRIMARY, label=p[i])])
    # a regressor answer against a classifier answer: not comparable
    feed(st, [pred("mix", 5, PRIMARY, label="a"), pred("mix", 5, CAND_A, value=1.0)])
    # a primary with neither output nor error: not comparable either
    feed(st, [pred("void", 6, PRIMARY), pred("void", 6, CAND_A, label="a")])
    tot = totals(st.advance(close_all=True))[CAND_A]
    assert tot.coverage["pairs"] == n + 2
    assert tot.coverage["invalid"] == 2
    assert tot.class_n == n
    assert tot.summary()["disagreement_rate"] == pytest.approx(
        float(np.mean(np.array(p) != np.array(c))), rel=1e-15
    )
    assert tot.regression_n == 0


def test_classifier_answers_with_class_scores_join_like_those_without() -> None:
    # A classifier's answer with its class scores travels as a five-field answer (the
    # scores serve the log-loss once a label comes); every part of the join must take it.
    rng = np.random.default_rng(9)
    classes = ["a", "b", "c"]
    n = 300
    p = rng.choice(classes, n).tolist()
    c = rng.choice(classes, n).tolist()

    def scores(top: str) -> dict[str, float]:
        return {k: (0.8 if k == top else 0.1) for k in classes}

    with_scores = PartitionState(0, W, 0, 60_000)
    without = PartitionState(0, W, 0, 60_000)
    for i in range(n):
        rid = f"r{i}"
        for st, sc in ((with_scores, True), (without, False)):
            refused = [
                st.on_prediction(
                    pred(
                        rid, i, CAND_A, label=c[i], latency=1.0, scores=scores(c[i]) if sc else None
                    )
                ),
                st.on_request(req(rid, i)),
                st.on_prediction(
                    pred(
                        rid,
                        i,
                        PRIMARY,
                        label=p[i],
                        latency=2.0,
                        scores=scores(p[i]) if sc else None,
                    )
                ),
            ]
            assert refused == [None, None, None]
    a = totals(with_scores.advance(close_all=True))[CAND_A]
    b = totals(without.advance(close_all=True))[CAND_A]
    assert a.coverage["pairs"] == b.coverage["pairs"] == n
    assert a.class_n == b.class_n == n
    assert (
        a.summary()["disagreement_rate"]
        == b.summary()["disagreement_rate"]
        == pytest.approx(float(np.mean(np.array(p) != np.array(c))), rel=1e-15)
    )
    assert a.coverage == b.coverage


# -- random traffic: reference numbers and changelog recovery ----------------------------

TTL = 3_000
LATENESS = 300
MAX_DELAY = 1_200  # < TTL: every half of a join arrives before its entry can expire


@dataclass
class Truth:
    rid: str
    t: int
    has_req: bool
    prim: tuple[float, float | None, str | None] | None  # value, latency, error
    cands: dict[str, tuple[float, float | None, str | None]] = field(default_factory=dict)


def generate(seed: int, n: int = 600) -> tuple[list[Truth], list[list[Event]]]:
    """Requests with random halves missing, errors, duplicates and arrival delays, in
    random batches; a final sentinel request drives the watermark past every deadline."""
    rng = np.random.default_rng(seed)
    truths: list[Truth] = []
    arrivals: list[tuple[int, int, Event]] = []
    seq = itertools.count()
    t = 50_000 + int(rng.integers(0, W))
    for i in range(n):
        t += int(rng.integers(0, 40))
        rid = f"req-{seed}-{i}"
        complete = i < 2  # the first requests make both candidates known early
        truth = Truth(rid, t, complete or bool(rng.random() < 0.9), None)
        if complete or rng.random() < 0.9:
            err = "boom" if not complete and rng.random() < 0.04 else None
            value = float(rng.normal(100.0, 20.0)) if rng.random() < 0.98 else math.nan
            lat = float(rng.lognormal(np.log(10.0), 0.5)) if rng.random() < 0.95 else None
            truth.prim = (value, lat, err)
        for cand, bias in ((CAND_A, 0.5), (CAND_B, -3.0)):
            if complete or rng.random() < 0.85:
                err = "fail" if not complete and rng.random() < 0.05 else None
                base = truth.prim[0] if truth.prim and math.isfinite(truth.prim[0]) else 100.0
                value = base + bias + float(rng.standard_t(4)) * 2.0
                lat = float(rng.lognormal(np.log(25.0), 0.9))
                truth.cands[cand] = (value, lat, err)
        truths.append(truth)
        events: list[Event] = []
        if truth.has_req:
            events.append(req(rid, t))
        if truth.prim:
            v, lat, err = truth.prim
            events.append(pred(rid, t, PRIMARY, None if err else v, latency=lat, error=err))
        for cand, (v, lat, err) in truth.cands.items():
            events.append(pred(rid, t, cand, None if err else v, latency=lat, error=err))
        for ev in events:
            copies = 2 if rng.random() < 0.06 else 1
            for _ in range(copies):
                arrivals.append((t + int(rng.integers(0, MAX_DELAY)), next(seq), ev))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    ordered = [ev for _, _, ev in arrivals]
    # watermark at end >= every deadline: candidates may hold it back by up to the TTL
    end = t + 2 * TTL + LATENESS + 1
    ordered += [req("sentinel", end), pred("sentinel", end, PRIMARY, 0.0)]
    batches: list[list[Event]] = []
    pos = 0
    while pos < len(ordered):
        size = int(rng.integers(1, 60))
        batches.append(ordered[pos : pos + size])
        pos += size
    return truths, batches


def expected(truths: list[Truth], batches: list[list[Event]]) -> dict[str, dict[str, Any]]:
    """The reference numbers, computed from the generating data with numpy."""
    events = [ev for b in batches for ev in b]
    seen: dict[tuple[str, str], int] = defaultdict(int)
    for ev in events:
        seen[(ev["request_id"], ev.get("model_id", "request"))] += 1
    dup = defaultdict(int)
    for (_, who), k in seen.items():
        dup[SHARED if who in ("request", PRIMARY) else who] += k - 1

    out: dict[str, dict[str, Any]] = {}
    prim = [x for x in truths if x.prim]
    shared_cov = coverage(
        requests=sum(x.has_req for x in truths) + 1,  # + sentinel
        primary_predictions=len(prim) + 1,
        primary_errors=sum(x.prim[2] is not None for x in prim),
        expired=sum(x.has_req and not x.prim and not x.cands for x in truths),
        # requests only the primary answered: '*' speaks for every candidate
        no_candidate=sum(x.has_req and not x.cands for x in prim),
        # the primary answered a request that never came, and no candidate did
        no_request=sum(not x.has_req and not x.cands for x in prim),
        duplicates=dup[SHARED],
    )
    out[SHARED] = {
        "coverage": shared_cov,
        "latency": np.array([x.prim[1] for x in prim if x.prim[1] is not None]),
    }
    for cand in (CAND_A, CAND_B):
        has = [x for x in truths if cand in x.cands]
        pairs = [x for x in has if x.prim]
        ok = [x for x in pairs if x.prim[2] is None and x.cands[cand][2] is None]
        d = np.array([x.cands[cand][0] - x.prim[0] for x in ok])
        finite = np.isfinite(d)
        out[cand] = {
            "coverage": coverage(
                pairs=len(pairs),
                candidate_predictions=len(has),
                candidate_errors=sum(x.cands[cand][2] is not None for x in has),
                no_candidate=sum(1 for x in prim if x.has_req and x.cands and cand not in x.cands),
                no_prediction=sum(
                    1
                    for x in truths
                    if x.has_req and not x.prim and x.cands and cand not in x.cands
                ),
                no_primary=len(has) - len(pairs),
                no_request=sum(1 for x in prim if not x.has_req and x.cands),
                duplicates=dup[cand],
                invalid=int((~finite).sum()),  # a NaN primary value
            ),
            "d": d[finite],
            "latency": np.array([x.cands[cand][1] for x in has]),
        }
    return out


def run(
    batches: list[list[Event]], restore_at: int | None = None, check_changelog: bool = False
) -> list[Emitted]:
    """Feed the batches, advance after each, idle-flush at the end.

    With ``restore_at=k`` the state is rebuilt from the changelog written so far before
    batch ``k`` (a joiner SIGKILLed after committing batch ``k - 1``); the partials of the
    first ``k`` batches were published in the same transactions, so they are kept.
    With ``check_changelog`` a mirror state follows the changelog after every batch and
    must hold exactly the live state.
    """

    def new() -> PartitionState:
        return PartitionState(0, W, LATENESS, TTL)

    st = new()
    mirror = new()
    log: list[tuple[bytes, bytes | None]] = []
    emitted: list[Emitted] = []
    steps = [(b, False) for b in batches] + [([], True)]
    for i, (batch, flush) in enumerate(steps):
        if i == restore_at:
            st = new()
            for key, value in log:
                st.restore(key, value, decode_acc)
            st.finish_restore()
        feed(st, batch)
        emitted += st.advance(close_all=flush)
        changes = list(st.changes(encode_acc))
        log += changes
        if check_changelog:
            for key, value in changes:
                mirror.restore(key, value, decode_acc)
            assert snapshot(mirror) == snapshot(st), f"changelog diverged after batch {i}"
    return emitted


def snapshot(st: PartitionState) -> dict[str, Any]:
    st.windows.fold()
    return {
        "pending": {rid: json.dumps(e.dump()) for rid, e in st.pending.items()},  # NaN-safe
        "finished": {
            h: f
            for h, f in st.table.done.snapshot().items()
            if st.clock.wm is None or f.forget_s * 1000 > st.clock.wm
        },
        "acc": {k: v.to_record() for k, v in st.acc.items()},
        "clock": st.clock.dump(),
        "windows": st.windows.dump_meta(),
        "candidates": list(st.candidates),
        "primary_id": st.primary_id,
        "ledger": st.ledger.snapshot(),
    }


@pytest.mark.parametrize("seed", range(4))
def test_random_traffic_matches_numpy(seed: int) -> None:
    truths, batches = generate(seed)
    emitted = run(batches)
    ref = expected(truths, batches)
    tot = totals(emitted)
    assert set(tot) == {SHARED, CAND_A, CAND_B}
    shared = tot[SHARED]
    assert shared.coverage == ref[SHARED]["coverage"]
    sketch = LatencySketch()
    sketch.update_many(ref[SHARED]["latency"])
    assert shared.primary_latency == sketch
    assert shared.candidate_latency.count == 0
    assert shared.regression_n == 0
    for cand in (CAND_A, CAND_B):
        s, r = tot[cand], ref[cand]
        assert s.coverage == r["coverage"], cand
        d = r["d"]
        out = s.summary()
        assert s.regression_n == d.size
        assert out["sum_diff"] == math.fsum(d.tolist())
        assert out["sum_abs_diff"] == math.fsum(np.abs(d).tolist())
        assert out["sum_sq_diff"] == math.fsum((d * d).tolist())
        assert out["mae"] == pytest.approx(float(np.mean(np.abs(d))), rel=1e-12)
        assert out["rmse"] == pytest.approx(float(np.sqrt(np.mean(d * d))), rel=1e-12)
        assert out["mean_signed_diff"] == pytest.approx(float(np.mean(d)), rel=1e-12)
        sketch = LatencySketch()
        sketch.update_many(r["latency"])
        assert s.candidate_latency == sketch
        for q in (0.5, 0.95, 0.99):
            ref_q = float(np.quantile(r["latency"], q, method="lower"))
            assert abs(s.candidate_latency.quantile(q) - ref_q) <= 0.01 * (1 + 1e-12) * ref_q
        assert s.primary_latency.count == 0
    # every window was published once on time, late additions only with seq > 0
    keys = [(e.candidate, e.window_start, e.seq) for e in emitted]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("seed", range(3))
def test_changelog_reproduces_the_state_after_every_batch(seed: int) -> None:
    _, batches = generate(seed + 100, n=300)
    run(batches, check_changelog=True)


@pytest.mark.parametrize("seed", range(6))
def test_restored_state_emits_exactly_what_an_uninterrupted_one_does(seed: int) -> None:
    _, batches = generate(seed + 200, n=400)
    uninterrupted = run(batches)
    reference = per_window(uninterrupted)
    ref_totals = {k: v.to_record() for k, v in totals(uninterrupted).items()}
    rng = np.random.default_rng(seed)
    boundaries = {0, 1, len(batches), *rng.integers(0, len(batches) + 1, 6).tolist()}
    for k in sorted(boundaries):
        restored = run(batches, restore_at=k)
        assert {c: v.to_record() for c, v in totals(restored).items()} == ref_totals, k
        assert per_window(restored) == reference, k
        keys = [(e.candidate, e.window_start, e.seq) for e in restored]
        assert len(keys) == len(set(keys)), f"a (candidate, window, seq) repeats after {k}"
