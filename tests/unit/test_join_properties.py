"""Properties of the join state that must hold for every event sequence (hypothesis).

* The partials do not depend on how the events are split into batches, nor on where the
  state is restored from its changelog: the list of emitted partials is identical.
* The conservation law holds after every event, for every candidate, and its ``pending``
  term is the number of open joins that have a request, counted independently.
* With every answer on time, the ledger's terms equal the ground truth of the sequence.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.join.ledger import BASELINE, TERMS
from streams.joinstate import Emitted, PartitionState
from streams.metrics.partial import PartialStats
from streams.schemas import default_codec

W = 1_000
TTL = 3_000
LATENESS = 200
PRIMARY = "prim@1"
CANDS = ("cand-a@1", "cand-b@1")
NOW = 1_800_000_000_000  # message timestamps, to judge event times by
T0 = NOW - 100_000

Event = tuple[str, dict[str, Any], int]  # (stream, record, message timestamp)


def req(rid: str, t: int) -> dict[str, Any]:
    """A request with features and context, so profiles and slices are covered too."""
    k = sum(map(ord, rid))
    return {
        "request_id": rid,
        "event_time": t,
        "numeric_features": {"sqft": 40.0 + k % 97, "delta": (k % 13) - 6.5, "nan": math.nan},
        "categorical_features": {"city": ("Paris", "Lyon", "Nice")[k % 3]},
        "context": {"region": f"r{k % 5}", "channel": ("app", "web")[k % 2]},
    }


def pred(rid: str, t: int, model: str, value: float | None = 1.0) -> dict[str, Any]:
    return {
        "request_id": rid,
        "event_time": t,
        "model_id": model,
        "role": "PRIMARY" if model == PRIMARY else "CANDIDATE",
        "value": value,
        "label": None,
        "latency_ms": 3.0,
        "error": None,
    }


def encode_acc(key: tuple[str, int], stats: PartialStats) -> bytes:
    return default_codec().encode("Partial", stats.to_partial(candidate=key[0]))


def decode_acc(data: bytes) -> PartialStats:
    return PartialStats.from_record(default_codec().decode_as("Partial", data))


def new_state(max_pending: int = 1_000_000) -> PartitionState:
    return PartitionState(
        0, W, LATENESS, TTL, max_age_ms=200_000, max_skew_ms=5_000, max_pending=max_pending
    )


def apply(s: PartitionState, ev: Event) -> str | None:
    stream, rec, now = ev
    if stream == "requests":
        return s.on_request(rec, now)
    if stream == "predictions":
        return s.on_prediction(rec, now)
    s.on_dead_letter(rec["stream"])  # undecodable bytes: the joiner never saw a record
    return "undecodable"


@st.composite
def sequences(draw: st.DrawFn, on_time: bool = False) -> list[Event]:
    """Requests with halves missing, duplicated, delayed, late beyond the TTL, invalid."""
    n = draw(st.integers(1, 40))
    events: list[tuple[int, int, Event]] = []
    t = T0
    for i in range(n):
        t += draw(st.integers(0, 700))
        rid = f"r{i}"
        parts: list[Event] = []
        if draw(st.booleans()) or on_time:
            parts.append(("requests", req(rid, t), NOW))
        if draw(st.integers(0, 9)) < 8:
            parts.append(("predictions", pred(rid, t, PRIMARY), NOW))
        for c in CANDS:
            if draw(st.integers(0, 9)) < 7:
                value = draw(st.sampled_from([1.5, -2.0, math.nan, None]))
                parts.append(("predictions", pred(rid, t, c, value), NOW))
        for part in parts:
            max_delay = TTL // 2 if on_time else 3 * TTL
            arrival = t + draw(st.integers(0, max_delay))
            for _ in range(draw(st.sampled_from([1, 1, 1, 2]))):  # at-least-once copies
                events.append((arrival, len(events), part))
        if not on_time:
            bad = draw(st.sampled_from(["", "", "", "empty", "micro", "zero", "year", "bytes"]))
            if bad == "empty":
                events.append((t, len(events), ("requests", req("", t), NOW)))
            elif bad == "micro":
                events.append((t, len(events), ("requests", req(rid + "u", t * 1000), NOW)))
            elif bad == "zero":
                events.append((t, len(events), ("predictions", pred(rid, 0, CANDS[0]), NOW)))
            elif bad == "year":
                later = t + 365 * 86_400_000
                events.append((t, len(events), ("requests", req(rid + "y", later), NOW)))
            elif bad == "bytes":
                events.append((t, len(events), ("undecodable", {"stream": "requests"}, NOW)))
    events.sort(key=lambda e: (e[0], e[1]))
    return [e for _, _, e in events]


def partials(out: list[Emitted]) -> list[Any]:
    return [
        (
            e.candidate,
            e.window_start,
            e.seq,
            e.watermark,
            json.dumps(e.ledger, sort_keys=True),
            json.dumps(e.stats.to_record(), sort_keys=True, default=str),
        )
        for e in out
    ]


def run(events: list[Event], cuts: list[int], restores: set[int]) -> list[Any]:
    """Feed in batches ending at ``cuts``; rebuild from the changelog after ``restores``."""
    s = new_state()
    log: list[tuple[bytes, bytes | None]] = []
    out: list[Emitted] = []
    bounds = sorted({c for c in cuts if 0 < c < len(events)} | {len(events)})
    start = 0
    for i, end in enumerate(bounds):
        for ev in events[start:end]:
            apply(s, ev)
        start = end
        out += s.advance()
        log += list(s.changes(encode_acc))
        if i in restores:
            s = new_state()
            for key, value in log:
                s.restore(key, value, decode_acc)
            s.finish_restore()
    s.idle_until(NOW + 10 * TTL)  # the input went quiet: time moves on, joins finish
    out += s.advance(close_all=True)
    return partials(out)


@settings(max_examples=60, deadline=None)
@given(
    events=sequences(),
    cuts=st.lists(st.integers(0, 200), max_size=8),
    restores=st.sets(st.integers(0, 8), max_size=3),
)
def test_partials_do_not_depend_on_batches_or_restores(
    events: list[Event], cuts: list[int], restores: set[int]
) -> None:
    one_batch = run(events, [], set())
    assert run(events, cuts, set()) == one_batch
    assert run(events, cuts, restores) == one_batch


def open_requests(s: PartitionState, cand: str) -> int:
    """Open joins that have a request and are not paired for ``cand``: counted directly."""
    return sum(
        1 for e in s.table.live.values() if e.req and not (e.prim is not None and cand in e.cands)
    )


@settings(max_examples=60, deadline=None)
@given(events=sequences(), max_pending=st.sampled_from([3, 10, 1_000_000]))
def test_the_conservation_law_holds_after_every_event(
    events: list[Event], max_pending: int
) -> None:
    s = new_state(max_pending)
    refused_requests = 0
    for ev in events:
        reason = apply(s, ev)
        if reason is not None and (ev[0] == "requests" or ev[0] == "undecodable"):
            refused_requests += 1
        assert s.ledger.holds()
        for cand in (BASELINE, *s.ledger.book):
            assert s.ledger.terms(cand)["pending"] == open_requests(s, cand)
        assert len(s.table.live) <= max_pending
    assert s.ledger.terms(BASELINE)["dead_letters"] == refused_requests
    s.idle_until(NOW + 10 * TTL)
    assert all(t["pending"] == 0 for t in s.ledger.book.values())
    assert s.ledger.holds()
    if max_pending < 1_000_000:
        evicted = sum(e.stats.coverage["evicted"] for e in s.advance(close_all=True))
        assert evicted >= 0


@settings(max_examples=60, deadline=None)
@given(events=sequences(on_time=True))
def test_with_every_answer_on_time_the_ledger_is_the_ground_truth(events: list[Event]) -> None:
    s = new_state()
    seen: dict[str, set[str]] = defaultdict(set)
    for ev in events:
        assert apply(s, ev) is None
        rec = ev[1]
        seen[rec["request_id"]].add(rec.get("model_id", "request"))
    s.idle_until(NOW + 10 * TTL)
    book = s.ledger.book
    truth_requests = [who for who in seen.values() if "request" in who]
    for cand in (BASELINE, *CANDS):
        if cand != BASELINE and cand not in book:
            continue
        expect = dict.fromkeys(("requests", *TERMS), 0)
        for who in truth_requests:
            expect["requests"] += 1
            has_p, has_c = PRIMARY in who, cand in who
            if has_p and has_c:
                expect["pairs"] += 1
            elif has_p:
                expect["no_candidate"] += 1
            elif has_c:
                expect["no_primary"] += 1
            else:
                expect["no_prediction"] += 1
        assert s.ledger.terms(cand) == expect, cand


def test_the_end_of_input_classifies_every_open_join() -> None:
    s = new_state()
    s.on_request(req("a", T0), NOW)
    s.on_prediction(pred("a", T0, PRIMARY), NOW)
    s.on_request(req("b", T0 + 10), NOW)
    assert s.ledger.terms(BASELINE)["pending"] == 2
    s.finish_open()
    assert s.ledger.terms(BASELINE) == {
        "requests": 2,
        "pairs": 0,
        "no_candidate": 1,
        "no_primary": 0,
        "no_prediction": 1,
        "pending": 0,
        "dead_letters": 0,
    }
    assert not s.pending


def test_an_unbelievable_time_is_refused_and_moves_no_watermark() -> None:
    s = new_state()
    s.on_request(req("a", T0), NOW)
    s.on_prediction(pred("a", T0, PRIMARY), NOW)
    wm = s.watermark()
    for bad in (T0 * 1000, 0, NOW + 365 * 86_400_000):
        reason = s.on_request(req("x", bad), NOW)
        assert reason is not None and "event_time" in reason
        reason = s.on_prediction(pred("x", bad, CANDS[0]), NOW)
        assert reason is not None
    assert s.watermark() == wm
    assert s.ledger.terms(BASELINE)["dead_letters"] == 3
    assert s.ledger.holds()


def test_a_duplicate_after_its_join_finished_is_still_a_duplicate() -> None:
    s = new_state()
    s.on_request(req("a", T0), NOW)
    s.on_prediction(pred("a", T0, PRIMARY), NOW)
    s.on_prediction(pred("a", T0, CANDS[0]), NOW)
    # later traffic pushes the watermark past a's deadline: its join finishes
    # (a candidate's stream may hold the watermark back by up to the TTL)
    s.on_request(req("b", T0 + 3 * TTL), NOW)
    s.on_prediction(pred("b", T0 + 3 * TTL, PRIMARY), NOW)
    assert "a" not in s.pending
    s.on_prediction(pred("a", T0, CANDS[0]), NOW)  # an at-least-once copy, long after
    s.on_request(req("a", T0), NOW)
    s.idle_until(NOW + 10 * TTL)
    out = s.advance(close_all=True)
    cov = {k: sum(e.stats.coverage[k] for e in out) for k in ("duplicates", "no_primary")}
    assert cov == {"duplicates": 2, "no_primary": 0}
    assert s.ledger.terms(CANDS[0])["requests"] == 2
    assert s.ledger.holds()


def test_dead_letters_of_a_partition_with_nothing_else_are_published_once_it_idles() -> None:
    s = new_state()
    s.on_dead_letter("requests")
    s.on_dead_letter("requests")
    assert s.advance(close_all=True) == []  # no event time yet: nowhere to put them
    s.idle_until(NOW)
    out = s.advance(close_all=True)
    assert sum(e.stats.coverage["dead_letters"] for e in out) == 2
    led = [e.ledger for e in out if e.ledger]
    assert led and led[-1][BASELINE]["dead_letters"] == 2


def test_ids_that_would_not_fit_and_a_flood_of_model_ids_are_refused() -> None:
    s = new_state()
    assert s.on_request(req("x" * 70_000, T0), NOW) is not None
    assert s.on_prediction(pred("a", T0, "m" * 300), NOW) is not None
    refused = [s.on_prediction(pred("a", T0, f"cand-{i}"), NOW) for i in range(70)]
    assert refused[:64] == [None] * 64
    assert all(r is not None and "more than 64" in r for r in refused[64:])
    assert len(s.ledger.book) == 65  # 64 candidates and the baseline


def test_windows_wait_for_the_candidates_answers_up_to_the_join_ttl() -> None:
    """The primary answers at once, the shadow worker later: a window closed on the
    primary's time alone would publish without the candidates' pairs (all of them late)."""
    s = new_state()
    for i in range(30):  # requests and primary answers every 100 ms for 3 s
        t = T0 + i * 100
        s.on_request(req(f"r{i}", t), NOW)
        s.on_prediction(pred(f"r{i}", t, PRIMARY), NOW)
        if i == 0:
            s.on_prediction(pred("r0", T0, CANDS[0]), NOW)  # the worker answered r0 only
    on_time = [e for e in s.advance() if e.window_start == T0 - T0 % W]
    assert not on_time, "the window closed before the candidate caught up"
    for i in range(1, 30):
        s.on_prediction(pred(f"r{i}", T0 + i * 100, CANDS[0]), NOW)
    out = [e for e in s.advance() if e.window_start == T0 - T0 % W and e.candidate == CANDS[0]]
    assert out and out[0].seq == 0 and out[0].stats.coverage["pairs"] == 10
    # a candidate lagging more than the TTL holds nothing back any more
    for i in range(30, 100):
        t = T0 + i * 100
        s.on_request(req(f"r{i}", t), NOW)
        s.on_prediction(pred(f"r{i}", t, PRIMARY), NOW)
    wm = s.watermark()
    assert wm is not None and wm >= T0 + 99 * 100 - LATENESS - TTL


class AlwaysProgress(PartitionState):
    """The state as it was before ``_progress`` skipped a pass at an unmoved watermark."""

    def _progress(self) -> None:
        self._progressed = None
        super()._progress()


def limits(max_pending: int, horizon: int) -> dict[str, int]:
    """``new_state``'s bounds, with a pending cap and a label horizon of one's own."""
    return {
        "max_age_ms": 200_000,
        "max_skew_ms": 5_000,
        "max_pending": max_pending,
        "label_horizon_ms": horizon,
    }


def label(rid: str, t: int) -> dict[str, Any]:
    return {"request_id": rid, "event_time": t, "value": 2.0, "label": None}


@st.composite
def with_labels(draw: st.DrawFn) -> list[Event]:
    """``sequences()`` with labels for some requests, early, late or far beyond the TTL."""
    events = draw(sequences())
    rids = sorted({rec["request_id"] for _, rec, _ in events if rec.get("request_id")})
    for rid in draw(st.lists(st.sampled_from(rids), max_size=10)) if rids else []:
        at = draw(st.integers(0, len(events)))
        t = T0 + draw(st.integers(0, 40 * 700 + 4 * TTL))
        events.insert(at, ("labels", label(rid, t), NOW))
    return events


@settings(max_examples=80, deadline=None)
@given(
    events=with_labels(),
    max_pending=st.sampled_from([2, 10, 1_000_000]),
    horizon=st.sampled_from([1, 1_000, 86_400_000]),
)
def test_skipping_a_progress_pass_at_an_unmoved_watermark_changes_nothing(
    events: list[Event], max_pending: int, horizon: int
) -> None:
    """Every event is followed by the same partials, and the same changelog at the end,
    whether or not the pass is skipped (labels and evictions included)."""
    runs = []
    for cls in (PartitionState, AlwaysProgress):
        s = cls(0, W, LATENESS, TTL, **limits(max_pending, horizon))
        out = []
        for ev in events:
            if ev[0] == "labels":
                s.on_label(ev[1], ev[2])
            else:
                apply(s, ev)
            out.append(partials(s.advance()))
        s.idle_until(NOW + 10 * TTL)
        out.append(partials(s.advance(close_all=True)))
        runs.append((out, sorted(s.changes(encode_acc))))
    assert runs[0] == runs[1]


def test_answers_kept_by_an_eviction_are_forgotten_before_the_watermark_moves_again() -> None:
    """The case the skip must not change: a join evicted over the pending cap, at a
    watermark that does not move, keeps answers the label horizon already left behind;
    the next event's pass forgets them, so the late label for them finds nothing."""
    runs = []
    for cls in (PartitionState, AlwaysProgress):
        s = cls(0, W, LATENESS, TTL, **limits(max_pending=1, horizon=1))
        t0 = T0 - T0 % 1000
        s.on_label(label("seed", t0), NOW)  # labels are seen here: answers are kept
        s.on_request(req("a", t0 + 10_000), NOW)
        s.on_prediction(pred("a", t0 + 10_000, PRIMARY), NOW)  # evicts 'seed'
        wm = s.watermark()
        s.on_prediction(pred("b", t0 + 8_000, CANDS[0]), NOW)  # evicted at once, kept
        assert s.watermark() == wm
        s.on_prediction(pred("a", t0 + 10_000, CANDS[1]), NOW)  # the watermark stays
        assert s.watermark() == wm
        kept_b = len(s.labels.awaiting)
        s.on_label(label("b", t0 + 8_000), NOW)
        s.idle_until(NOW + 10 * TTL)
        runs.append((kept_b, partials(s.advance(close_all=True))))
    assert runs[0] == runs[1]
    assert runs[0][0] == 0  # forgotten by the pass after the eviction
