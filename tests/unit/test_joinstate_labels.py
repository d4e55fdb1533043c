"""Labels in the joiner's partition state: joined to answers kept after the join, scored
once per pair in the window of the label's time, every other label counted by reason,
and the same numbers after a restore from the changelog (without Kafka)."""

from __future__ import annotations

import json
from pathlib import Path
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

from streams.join.awaiting import KEY_AWAITING
from streams.join.labels import Labels
from streams.join.table import JoinTable
from streams.join.windows import Windows
from streams.joinstate import KEY_META, Emitted, PartitionState
from streams.metrics.partial import SHARED

TTL = 3_000
CHANGELOG = Path(__file__).with_name("data") / "label_changelog.json"
"""A changelog with labels as the release whose meta carried ``label_seq`` wrote it
(made by data/make_label_changelog.py from :func:`changelog_events`)."""


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


def changelog_events() -> list[dict[str, Any]]:
    """The events of ``CHANGELOG``: 200 requests 10 ms apart, answered by the primary and
    two candidates, nine in ten labelled 1 s later (after their joins finished: TTL 500
    ms), then a duplicate label and one for no request; plain arithmetic, no generator
    whose stream a numpy release could change."""
    timed: list[tuple[int, int, dict[str, Any]]] = []
    for i in range(200):
        t = 1_000 + 10 * i
        rid = f"r{i}"
        truth = 100.0 + (i * 37 % 23) - 11
        timed.append((t, 0, req(rid, t)))
        for k, (m, spread) in enumerate(((PRIMARY, 3.0), (CAND_A, 2.0), (CAND_B, 5.0))):
            value = truth + spread * ((i * (7 + k)) % 5 - 2) / 2
            timed.append((t, 1 + k, pred(rid, t, m, value=value)))
        if i % 10 != 9:
            timed.append((t + 1_000, 4, lab(rid, t + 1_000, value=truth)))
    timed.sort(key=lambda x: (x[0], x[1]))
    return [
        lab("warm-up", 999, value=0.0),  # answers are kept once the partition saw a label
        *(e for _, _, e in timed),
        lab("r5", 9_000, value=1.0),
        lab("nobody", 9_000, value=1.0),
    ]


def _without_label_seq(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    meta = json.loads(value)
    meta.pop("label_seq", None)
    return json.dumps(meta).encode()


@pytest.mark.parametrize("keep_label_seq", [True, False], ids=["as-written", "no-label_seq"])
def test_a_changelog_of_the_release_with_label_seq_restores_and_continues(
    keep_label_seq: bool,
) -> None:
    """Restored from that release's changelog (its meta's ``label_seq`` read or not: the
    segment keys carry the sequence), the state continues to the partials of a run never
    interrupted, and its new label segments never reuse a key of the old ones."""
    data = json.loads(CHANGELOG.read_text())
    events = changelog_events()
    window, lateness, ttl = data["window_ms"], data["lateness_ms"], data["ttl_ms"]
    log = [(bytes.fromhex(k), None if v is None else bytes.fromhex(v)) for k, v in data["records"]]
    assert any(k[:1] == KEY_AWAITING for k, _ in log)
    assert all("label_seq" in json.loads(v or b"{}") for k, v in log if k == KEY_META)
    if not keep_label_seq:
        log = [(k, _without_label_seq(v) if k == KEY_META else v) for k, v in log]
    old_keys = {k for k, _ in log if k[:1] == KEY_AWAITING}
    out = [
        Emitted(cand, ws, seq, decode_acc(bytes.fromhex(p))) for cand, ws, seq, p in data["emitted"]
    ]
    for lo in range(data["cut"], len(events), data["batch"]):
        latest: dict[bytes, bytes | None] = {}
        for k, v in log:
            latest[k] = v
        st = PartitionState(0, window, lateness, ttl)
        for k, v in latest.items():
            st.restore(k, v, decode_acc)
        st.finish_restore()
        feed(st, events[lo : lo + data["batch"]])
        out += st.advance()
        new = list(st.changes(encode_acc))
        assert not [k for k, v in new if k in old_keys and v is not None]
        log += new
    out += st.advance(close_all=True)
    written = log[len(data["records"]) :]
    assert any(k[:1] == KEY_AWAITING for k, _ in written)
    assert not [v for k, v in written if k == KEY_META and b"label_seq" in (v or b"")]
    ref = PartitionState(0, window, lateness, ttl)
    feed(ref, events)
    ref_out = ref.advance(close_all=True)
    assert per_window(out) == per_window(ref_out)
    got = totals(out)
    assert got[SHARED].coverage["labels"] > 100
    cand = got[CAND_A].labelled
    assert cand is not None and cand.summary()["n"] > 100


def test_labels_alone_score_and_say_when_another_primary_answered() -> None:
    """:class:`Labels` without the partition state: ``score`` returns the pairs scored and
    whether a former primary gave the answer (then they are counted, not scored)."""
    windows = Windows(W)
    labels = Labels(JoinTable(TTL, 60_000, 100), windows, 86_400_000, 10)
    truth = (1.0, None, 1_500)
    prim: tuple[Any, ...] = (1.5, None, 1.0, None)
    cands = [(CAND_A, (2.0, None, 1.0, None)), (CAND_B, (0.0, None, 1.0, None))]
    assert labels.score(truth, PRIMARY, prim, cands, PRIMARY) == (2, False)
    assert labels.score(truth, "old@1", prim, cands, PRIMARY) == (0, True)
    assert labels.score(truth, PRIMARY, None, cands, PRIMARY) == (0, False)  # no primary
    assert windows.acc[(SHARED, 1_000)].coverage["labels_other_primary"] == 2
    assert labels.on_label("r1", truth, PRIMARY)  # before any answer: it opens the join
    assert labels.seen and labels.meta_dirty
    assert not labels.on_label("r1", truth, PRIMARY)  # a duplicate
    assert windows.acc[(SHARED, 1_000)].coverage["label_duplicates"] == 1
