"""Labels in the joiner's partition state: joined to answers kept after the join, scored
once per pair in the window of the label's time, every other label counted by reason,
and the same numbers after a restore from the changelog (without Kafka)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from test_joinstate import (
    CAND_A,
    CAND_B,
    PRIMARY,
    W,
    decode_acc,
    encode_acc,
    per_window,
    pred,
    req,
    totals,
)

from streams.joinstate import Emitted, PartitionState
from streams.metrics.partial import SHARED

TTL = 3_000


def lab(rid: str, t: int, value: float | None = None, label: str | None = None) -> dict[str, Any]:
    return {"request_id": rid, "event_time": t, "value": value, "label": label}


def feed(st: PartitionState, events: list[dict[str, Any]]) -> None:
    for ev in events:
        if "role" in ev:
            st.on_prediction(ev)
        elif "numeric_features" in ev:
            st.on_request(ev)
        else:
            assert st.on_label(ev) is None


def traffic(n: int, label_delay: int, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """n requests 10 ms apart, answered by the primary and two candidates, each labelled
    ``label_delay`` ms later; events in time order. Returns them and the true values."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(100.0, 10.0, n)
    answers = {
        m: truth + rng.normal(0.0, s, n) for m, s in ((PRIMARY, 3.0), (CAND_A, 2.0), (CAND_B, 5.0))
    }
    timed: list[tuple[int, int, dict[str, Any]]] = []
    for i in range(n):
        t = 1_000 + 10 * i
        rid = f"r{i}"
        timed.append((t, 0, req(rid, t)))
        for k, m in enumerate((PRIMARY, CAND_A, CAND_B)):
            timed.append((t, 1 + k, pred(rid, t, m, value=float(answers[m][i]))))
        timed.append((t + label_delay, 4, lab(rid, t + label_delay, value=float(truth[i]))))
    timed.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in timed], {"truth": truth, **answers}


def run(events: list[dict[str, Any]], batch: int) -> list[Emitted]:
    st = PartitionState(0, W, 200, TTL)
    out: list[Emitted] = []
    for lo in range(0, len(events), batch):
        feed(st, events[lo : lo + batch])
        out += st.advance()
    out += st.advance(close_all=True)
    return out


@pytest.mark.parametrize("delay", [0, 500, 2_500, 20_000], ids=lambda d: f"label+{d}ms")
def test_labelled_mae_equals_numpys_whenever_labels_come(delay: int) -> None:
    """Labels during the join (0-2.5 s, TTL 3 s) and after it (20 s) give the same MAE."""
    n = 400
    events, data = traffic(n, delay)
    # the partition has to have seen a label before joins finish for answers to be kept:
    # a first label before the traffic makes that so for every request here
    events.insert(0, lab("warm-up", 999, value=0.0))
    got = totals(run(events, batch=37))
    for cand in (CAND_A, CAND_B):
        s = got[cand].labelled
        assert s is not None
        summ = s.summary()
        assert summ["n"] == summ["diff_n"] == n
        assert summ["mae"] == pytest.approx(np.mean(np.abs(data[cand] - data["truth"])), rel=1e-9)
        assert summ["primary_mae"] == pytest.approx(
            np.mean(np.abs(data[PRIMARY] - data["truth"])), rel=1e-9
        )
        d = np.abs(data[cand] - data["truth"]) - np.abs(data[PRIMARY] - data["truth"])
        assert summ["diff_mean"] == pytest.approx(np.mean(d), rel=1e-9, abs=1e-12)
    cov = got[SHARED].coverage
    assert cov["labels"] == n + 1 and cov["labels_early"] == 1 and cov["labels_unmatched"] == 1
    assert got[SHARED].labelled is None  # the primary's losses travel with each candidate's


def test_losses_are_windowed_at_the_label_time_not_the_requests() -> None:
    events, _ = traffic(50, 20_000)
    events.insert(0, lab("warm-up", 999, value=0.0))
    windows = {e.window_start for e in run(events, batch=50) if e.stats.labelled is not None}
    assert min(windows) >= 1_000 + 20_000 - W  # every labelled window is a label's


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_numbers_do_not_depend_on_batches_and_survive_a_restore(batch: int) -> None:
    events, _ = traffic(120, 1_500, seed=2)
    events.insert(0, lab("warm-up", 999, value=0.0))
    events += [lab("r5", 40_000, value=1.0), lab("nobody", 40_000, value=1.0)]  # dup, unknown
    reference = per_window(run(events, batch=len(events)))
    assert per_window(run(events, batch=batch)) == reference
    # restored from the changelog after every batch, as a joiner killed there would be
    log: list[tuple[bytes, bytes | None]] = []
    st = PartitionState(0, W, 200, TTL)
    out: list[Emitted] = []
    for lo in range(0, len(events), batch):
        feed(st, events[lo : lo + batch])
        out += st.advance()
        log += list(st.changes(encode_acc))
        latest: dict[bytes, bytes | None] = {}
        for k, v in log:
            latest[k] = v
        st = PartitionState(0, W, 200, TTL)
        for k, v in latest.items():
            st.restore(k, v, decode_acc)
        st.finish_restore()
    out += st.advance(close_all=True)
    assert per_window(out) == reference


def test_each_label_that_scores_nothing_is_counted_by_reason() -> None:
    st = PartitionState(0, W, 200, TTL, label_budget=2)
    feed(st, [lab("first", 1_000, value=1.0)])  # early: opens a join nobody answers
    for i in range(4):  # four joins finish; the budget keeps two
        t = 1_100 + i
        feed(
            st,
            [
                req(f"q{i}", t),
                pred(f"q{i}", t, PRIMARY, value=1.0),
                pred(f"q{i}", t, CAND_A, value=2.0),
            ],
        )
    feed(st, [req("drive", 9_000), pred("drive", 9_000, PRIMARY, value=0.0)])
    feed(st, [pred("drive", 9_000, CAND_A, value=0.0)])
    feed(
        st, [lab("q0", 9_100, value=1.5), lab("q3", 9_100, value=1.5), lab("q3", 9_200, value=1.5)]
    )
    feed(st, [lab("q9", 9_300, label="x")])  # never seen: early, then unmatched at its end
    out = st.advance()
    st.finish_open()  # the end of the input, as the joiner's --idle-exit does
    out += st.advance(close_all=True)
    cov = totals(out)[SHARED].coverage
    assert cov["labels"] == 4  # first, q0, q3, q9
    assert cov["label_duplicates"] == 1  # q3 again
    assert cov["labels_early"] == 2  # first, q9
    # q0, q1 and q2 dropped for the budget of 2 (q2 for the marker that recognises q0's
    # label again; a labelled marker dropped, as "first"'s, is no label lost: not counted)
    assert cov["labels_evicted"] == 3
    assert cov["labels_unmatched"] == 3  # first and q9 (no answers), q0 (evicted)
    s = totals(out)[CAND_A].labelled
    assert s is not None and s.summary()["n"] == 1  # q3 only
    assert s.summary()["mae"] == pytest.approx(0.5)


def test_bad_labels_are_refused_with_a_reason() -> None:
    st = PartitionState(0, W, 200, TTL)
    assert st.on_label(lab("r", 1_000)) == "label has neither a value nor a class"
    assert st.on_label(lab("r", 1_000, value=float("nan"))) == "label value nan is not finite"
    assert st.on_label(lab("", 1_000, value=1.0)) == "empty request_id"


def test_pairs_answered_by_a_former_primary_are_counted_not_scored() -> None:
    """Around a promotion: a label for a request the old primary answered is not scored
    against the new primary's comparison; it is counted ``labels_other_primary``."""
    st = PartitionState(0, W, 200, TTL)
    feed(st, [lab("warm-up", 900, value=0.0)])
    feed(st, [req("old", 1_000), pred("old", 1_000, PRIMARY, value=1.0)])
    feed(st, [pred("old", 1_000, CAND_A, value=2.0), pred("old", 1_000, CAND_B, value=3.0)])
    promoted = "promoted@2"
    feed(st, [req("new", 1_100), {**pred("new", 1_100, promoted, value=5.0), "role": "PRIMARY"}])
    feed(st, [pred("new", 1_100, CAND_A, value=4.0)])
    assert st.primary_id == promoted
    feed(st, [lab("old", 1_200, value=1.5), lab("new", 1_200, value=4.5)])
    out = st.advance()
    st.finish_open()
    out += st.advance(close_all=True)
    got = totals(out)
    assert got[SHARED].coverage["labels_other_primary"] == 2  # old's two candidates
    s = got[CAND_A].labelled
    assert s is not None and s.summary()["n"] == 1  # only "new", against the new primary
    assert s.summary()["primary_mae"] == pytest.approx(0.5)


def test_a_change_of_primary_takes_the_open_windows_pairs_against_the_old_one_out() -> None:
    """A partial names one primary, the partition's at emission: pairs scored against the
    old primary in a window still open at a promotion must not leave as pairs against the
    new one (a refit of the old primary then looks better than the new primary: the
    demo's wrong second promotion). They are counted labels_other_primary instead."""
    st = PartitionState(0, W, 200, TTL)
    new_primary = "prim@2"
    feed(st, [req("r0", 1_000), pred("r0", 1_000, value=10.0), pred("r0", 1_000, CAND_A, 11.0)])
    feed(st, [lab("r0", 1_100, value=10.5)])  # scored: CAND_A against PRIMARY
    switched = {**pred("r1", 1_200, new_primary, value=5.0), "role": "PRIMARY"}
    feed(st, [req("r1", 1_200), switched, pred("r1", 1_200, CAND_A, value=7.0)])
    feed(st, [lab("r1", 1_300, value=5.5)])  # scored: CAND_A against prim@2
    out = st.advance(close_all=True)
    assert st.primary_id == new_primary
    got = totals(out)
    lab_a = got[CAND_A].labelled
    assert lab_a is not None
    assert (lab_a.diff_n, lab_a.diff_sum.get()) == (1, pytest.approx(1.5 - 0.5))
    assert got[SHARED].coverage["labels_other_primary"] == 1
    assert got[SHARED].coverage["labels"] == 2


def test_a_partial_names_the_primary_at_its_close_not_at_its_batch_end() -> None:
    """Windows close event by event; a batch is published at its end. A window closed
    before the first answer of a new primary, in the same batch, still names the old one."""
    st = PartitionState(0, W, 200, TTL)
    events = []
    for i, t in enumerate((1_000, 1_500, 2_100, 3_200, 4_300, 5_400)):
        model = PRIMARY if t < 4_000 else "prim@2"
        answer = {**pred(f"r{i}", t, model, value=1.0), "role": "PRIMARY"}
        events += [req(f"r{i}", t), answer, pred(f"r{i}", t, CAND_A, value=2.0)]
    feed(st, events)  # one batch
    named = {(e.candidate, e.window_start): e.primary for e in st.advance()}
    assert named[(CAND_A, 1_000)] == PRIMARY  # closed by the events of 3,200
    assert "prim@2" not in {named[k] for k in named if k[1] < 3_000}
    out = st.advance(close_all=True)
    assert {e.primary for e in out} == {"prim@2"}
