"""The evaluator's window logic on dict tables: what it publishes, when, and how it merges."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import pytest

from streams.merging import Handled, WindowMerger, dead_letter_record
from streams.metrics.partial import SHARED, PartialStats
from streams.schemas import default_codec

CODEC = default_codec()
W = 1000  # window length, ms
PARTITIONS = 3


#: a grace no test data reaches: windows close only when every partition has passed them
PATIENT = 100 * W


def merger(grace_ms: int | None = PATIENT) -> WindowMerger:
    return WindowMerger({}, {}, {}, {}, codec=CODEC, clock=lambda: 42, grace_ms=grace_ms)


def partial(
    cand: str,
    partition: int,
    ws: int,
    stats: PartialStats,
    *,
    watermark: int = 0,
    seq: int = 0,
    partitions: int = PARTITIONS,
    ledger: dict[str, dict[str, int]] | None = None,
) -> bytes:
    rec = stats.to_partial(
        joiner_partition=partition,
        partition_count=partitions,
        candidate=cand,
        primary="prim@1" if cand == SHARED else "",
        window_start=ws,
        window_end=ws + W,
        seq=seq,
        watermark=watermark,
        ledger=ledger or {},
    )
    return CODEC.encode("Partial", rec)


def decode(out: Handled | list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    if isinstance(out, Handled):
        assert out.error is None, out.error
        out = out.snapshots
    return [CODEC.decode_as("MetricSnapshot", v) for _, v in out]


class Data:
    """Pairs spread over partitions and windows, with the partials a joiner would publish."""

    def __init__(self, seed: int, windows: int = 4, n: int = 600) -> None:
        rng = np.random.default_rng(seed)
        self.part = rng.integers(0, PARTITIONS, n)
        self.window = rng.integers(0, windows, n)
        self.prim = rng.normal(100.0, 20.0, n)
        self.cand = {"a@1": self.prim + rng.normal(0, 3, n), "b@1": self.prim + rng.normal(1, 6, n)}
        self.windows = windows
        self.n = n

    def stats(self, cand: str, mask: np.ndarray) -> PartialStats:
        s = PartialStats()
        if cand == SHARED:
            s.count("requests", int(mask.sum()))
        else:
            s.add_regression(self.prim[mask], self.cand[cand][mask])
            s.count("pairs", int(mask.sum()))
        return s

    def partials(self) -> list[bytes]:
        """Per partition, window by window: candidates first, then the ``*`` with progress."""
        out: list[bytes] = []
        for p in range(PARTITIONS):
            for w in range(self.windows):
                mask = (self.part == p) & (self.window == w)
                for cand in ("a@1", "b@1"):
                    out.append(partial(cand, p, w * W, self.stats(cand, mask)))
                shared = self.stats(SHARED, mask)
                out.append(partial(SHARED, p, w * W, shared, watermark=(w + 1) * W))
        return out


def interleave(per_partition: list[list[bytes]], seed: int) -> list[bytes]:
    """A random interleaving that keeps each partition's own order (as Kafka does)."""
    rng = random.Random(seed)
    queues = [list(q) for q in per_partition]
    out: list[bytes] = []
    while any(queues):
        q = rng.choice([q for q in queues if q])
        out.append(q.pop(0))
    return out


def by_partition(data: Data) -> list[list[bytes]]:
    msgs = data.partials()
    per = len(msgs) // PARTITIONS
    return [msgs[i * per : (i + 1) * per] for i in range(PARTITIONS)]


def run(m: WindowMerger, messages: list[bytes]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for v in messages:
        out += decode(m.handle(v))
    return out


def fed(data: Data) -> WindowMerger:
    """A merger that has seen every partial of ``data``, partition after partition."""
    m = merger()
    run(m, [v for part in by_partition(data) for v in part])
    return m


def counted(**counts: int) -> PartialStats:
    s = PartialStats()
    for name, n in counts.items():
        s.count(name, n)
    return s


@pytest.mark.parametrize("seed", range(5))
def test_cumulative_equals_numpy_over_all_pairs_whatever_the_interleaving(seed: int) -> None:
    data = Data(seed)
    snaps = run(merger(), interleave(by_partition(data), seed))
    last = {s["candidate"]: s for s in snaps if s["scope"] == "CUMULATIVE"}
    assert sorted(last) == ["a@1", "b@1"]
    for cand, s in last.items():
        d = data.cand[cand] - data.prim
        assert s["coverage"]["pairs"] == data.n
        assert s["coverage"]["requests"] == data.n
        assert s["windows"] == data.windows
        # exact sums: only the final division and sqrt round (tolerance: 1e-12 relative)
        assert s["mae"] == pytest.approx(np.mean(np.abs(d)), rel=1e-12)
        assert s["rmse"] == pytest.approx(np.sqrt(np.mean(d * d)), rel=1e-12)
        assert s["mean_signed_diff"] == pytest.approx(np.mean(d), rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_each_window_snapshot_merges_every_partition_of_that_window(seed: int) -> None:
    data = Data(seed)
    snaps = run(merger(), interleave(by_partition(data), seed))
    windows = [s for s in snaps if s["scope"] == "WINDOW"]
    assert len(windows) == 2 * data.windows  # one per candidate per window, none twice
    for s in windows:
        w = s["window_start"] // W
        mask = data.window == w
        d = data.cand[s["candidate"]][mask] - data.prim[mask]
        assert s["window_end"] == s["window_start"] + W
        assert s["coverage"]["pairs"] == int(mask.sum())
        assert s["coverage"]["requests"] == int(mask.sum())
        assert s["partials"] == 2 * PARTITIONS  # the candidate's and the shared, per partition
        assert s["primary"] == "prim@1"
        assert s["mae"] == pytest.approx(np.mean(np.abs(d)), rel=1e-12)


def test_a_window_waits_for_the_slowest_partition_then_windows_come_oldest_first() -> None:
    data = Data(7)
    parts = by_partition(data)
    m = merger()
    # partitions 0 and 1 report everything; partition 2 nothing yet: nothing can close
    # (within the grace: PATIENT is longer than the data)
    assert run(m, parts[0] + parts[1]) == []
    # partition 2's first window closes window 0 only
    first = run(m, parts[2][:3])
    assert {(s["scope"], s["window_start"]) for s in first} == {("WINDOW", 0), ("CUMULATIVE", 0)}
    # the rest of partition 2: windows 1..3 close, in order, each WINDOW before its CUMULATIVE
    rest = run(m, parts[2][3:])
    starts = [s["window_start"] for s in rest if s["scope"] == "WINDOW"]
    assert starts == sorted(starts) == [W, W, 2 * W, 2 * W, 3 * W, 3 * W]


def test_a_late_partial_goes_into_the_cumulative_and_is_counted() -> None:
    data = Data(3, windows=2)
    m = fed(data)
    extra = PartialStats()
    extra.add_regression(np.array([10.0, 20.0]), np.array([13.0, 16.0]))
    extra.count("pairs", 2)
    before = m.get_json(m.meta, b"a@1", None)
    out = decode(m.handle(partial("a@1", 1, 0, extra, seq=1)))  # window 0: long published
    assert [s["scope"] for s in out] == ["CUMULATIVE"]
    s = out[0]
    assert s["late_partials"] == 1
    assert s["windows"] == before["windows"]  # no new window
    assert s["coverage"]["pairs"] == data.n + 2
    d = np.concatenate([data.cand["a@1"] - data.prim, [3.0, -4.0]])
    assert s["mae"] == pytest.approx(np.mean(np.abs(d)), rel=1e-12)


def test_a_late_shared_partial_updates_every_candidate() -> None:
    data = Data(4, windows=2)
    m = fed(data)
    extra = counted(requests=5)
    out = decode(m.handle(partial(SHARED, 0, 0, extra, watermark=2 * W, seq=1)))
    assert sorted(s["candidate"] for s in out) == ["a@1", "b@1"]
    assert all(s["coverage"]["requests"] == data.n + 5 for s in out)
    assert all(s["late_partials"] == 1 for s in out)


def test_state_is_all_in_the_tables_a_copy_resumes_exactly() -> None:
    data = Data(11)
    msgs = interleave(by_partition(data), 11)
    whole = run(merger(), msgs)
    m = merger()
    head = run(m, msgs[: len(msgs) // 2])
    resumed = WindowMerger(
        *(copy.deepcopy(t) for t in (m.windows, m.cumulative, m.meta, m.progress)),
        codec=CODEC,
        clock=lambda: 42,
    )
    assert head + run(resumed, msgs[len(msgs) // 2 :]) == whole


def test_pending_windows_are_removed_once_published() -> None:
    data = Data(5)
    m = fed(data)
    assert dict(m.windows) == {}
    assert not any(b"|" in k for k in m.meta)


def _bad_partials() -> dict[str, bytes | None]:
    good = CODEC.decode_as("Partial", partial(SHARED, 0, 0, counted(requests=1), watermark=W))
    out_of_range = dict(good, joiner_partition=PARTITIONS)
    empty_window = dict(good, window_end=good["window_start"])
    bad_scale = copy.deepcopy(good)
    bad_scale["regression"].update(n=1, exact_scale=7)
    return {
        "bad bytes": b"\xc3\x01not avro at all",
        "no value": None,
        "no header": b"plain text",
        "unknown fingerprint": b"\xc3\x01" + b"\x00" * 8 + b"body",
        "truncated": partial(SHARED, 0, 0, counted(requests=1), watermark=W)[:14],
        "wrong event": CODEC.encode(
            "DeadLetter",
            dead_letter_record("x", topic="t", partition=0, offset=1, key=None, value=None, now=0),
        ),
        "rejected by from_record": CODEC.encode("Partial", bad_scale),
        "partition out of range": CODEC.encode("Partial", out_of_range),
        "empty window": CODEC.encode("Partial", empty_window),
    }


@pytest.mark.parametrize("what", sorted(_bad_partials()))
def test_a_bad_partial_is_an_error_and_changes_nothing(what: str) -> None:
    m = merger()
    m.handle(partial("a@1", 0, 0, PartialStats()))
    tables = copy.deepcopy((m.windows, m.cumulative, m.meta, m.progress))
    got = m.handle(_bad_partials()[what])
    assert got.snapshots == []
    assert got.error and got.error.startswith("cannot use this partial: ")
    assert (m.windows, m.cumulative, m.meta, m.progress) == tables


def test_a_dead_letter_record_says_where_the_message_came_from() -> None:
    rec = dead_letter_record(
        "cannot use this partial: x",
        topic="p.partials",
        partition=0,
        offset=17,
        key=b"k",
        value=b"v",
        now=5,
    )
    back = CODEC.decode_as("DeadLetter", CODEC.encode("DeadLetter", rec))
    assert back == {
        "stage": "evaluator",
        "reason": "cannot use this partial: x",
        "source_topic": "p.partials",
        "source_partition": 0,
        "source_offset": 17,
        "key": b"k",
        "value": b"v",
        "time": 5,
    }


def test_requests_of_a_window_no_candidate_answered_in_time_still_count() -> None:
    """A cold start: the worker answers late, so window 0 closes with only ``*`` partials.

    Its candidate pairs come as late partials; its requests must not be lost on the way
    (the demo once showed 1,052 requests for 2,000 pairs).
    """
    m = merger()
    for p in range(PARTITIONS):  # window 0: requests and primaries only
        m.handle(partial(SHARED, p, 0, counted(requests=10, primary_predictions=10), watermark=W))
    for p in range(PARTITIONS):  # window 1: everything on time
        m.handle(partial("a@1", p, W, PartialStats()))
        m.handle(partial(SHARED, p, W, counted(requests=4, primary_predictions=4), watermark=2 * W))
    last = decode(m.handle(partial("a@1", 0, 0, counted(pairs=30), seq=1)))[-1]
    assert last["coverage"]["requests"] == last["coverage"]["primary_predictions"] == 42
    assert last["coverage"]["pairs"] == 30


def test_a_window_of_shared_counts_only_reaches_every_candidate_cumulative() -> None:
    """Expiry counts land in the window of the deadline, where candidates may have no data."""
    data = Data(6, windows=2)
    m = fed(data)
    out: list[dict[str, Any]] = []
    for p in range(PARTITIONS):
        out += decode(m.handle(partial(SHARED, p, 2 * W, counted(expired=3), watermark=3 * W)))
    last = {s["candidate"]: s for s in out if s["scope"] == "CUMULATIVE"}
    assert sorted(last) == ["a@1", "b@1"]
    assert all(s["coverage"]["expired"] == 3 * PARTITIONS for s in last.values())
    assert all(s["coverage"]["requests"] == data.n for s in last.values())
    assert not [s for s in out if s["scope"] == "WINDOW"]  # no candidate had that window


def test_progress_only_windows_publish_nothing() -> None:
    data = Data(8, windows=2)
    m = fed(data)
    out = []
    for p in range(PARTITIONS):  # idle flushes: empty ``*`` partials that only move progress
        out += decode(m.handle(partial(SHARED, p, 2 * W, PartialStats(), watermark=3 * W)))
    assert out == []
    assert m.global_progress() == 3 * W


# -- conservation ----------------------------------------------------------------------------


def _law(requests: int, **terms: int) -> dict[str, int]:
    full = dict.fromkeys(("pairs", "no_candidate", "no_primary", "no_prediction"), 0)
    full.update(pending=0, dead_letters=0)
    full.update(terms)
    return {"requests": requests, **full}


def _close_window(
    m: WindowMerger, ws: int, ledgers: dict[int, dict[str, dict[str, int]]]
) -> list[dict[str, Any]]:
    """Window ``ws`` from every partition: a@1 pairs, then the ``*`` with progress + ledger."""
    out: list[dict[str, Any]] = []
    for p in range(PARTITIONS):
        out += decode(m.handle(partial("a@1", p, ws, counted(pairs=1))))
        shared = partial(
            SHARED, p, ws, counted(requests=1), watermark=ws + W, ledger=ledgers.get(p)
        )
        out += decode(m.handle(shared))
    return out


def test_every_cumulative_carries_the_law_summed_over_partitions_window_snapshots_none() -> None:
    m = merger()
    ledgers = {
        0: {"a@1": _law(5, pairs=4, pending=1), "*": _law(7, no_candidate=7)},
        1: {"a@1": _law(3, pairs=2, no_primary=1), "*": _law(3, no_candidate=3)},
        # partition 2: a@1 never answered there, so its baseline counts for a@1
        2: {"*": _law(4, no_candidate=3, dead_letters=1)},
    }
    out = _close_window(m, 0, ledgers)
    cumulative = [s for s in out if s["scope"] == "CUMULATIVE"]
    assert cumulative and all(s["scope"] == "WINDOW" or s["conservation"] for s in out)
    assert all(s["conservation"] is None for s in out if s["scope"] == "WINDOW")
    law = cumulative[-1]["conservation"]
    assert law == {
        "requests": 12,
        "terms": {
            "pairs": 6,
            "no_candidate": 3,
            "no_primary": 1,
            "no_prediction": 0,
            "pending": 1,
            "dead_letters": 1,
        },
        "holds": True,
    }


def test_the_latest_ledger_of_a_partition_supersedes_the_earlier_ones() -> None:
    m = merger()
    _close_window(m, 0, {p: {"a@1": _law(2, pending=2)} for p in range(PARTITIONS)})
    # window 1: partition 0's ledger moves on (pending became pairs, more requests); the
    # others send none, so their window-0 ledgers still stand
    out = _close_window(m, W, {0: {"a@1": _law(5, pairs=4, no_candidate=1)}})
    law = [s for s in out if s["scope"] == "CUMULATIVE"][-1]["conservation"]
    assert law["requests"] == 5 + 2 + 2
    assert law["terms"]["pairs"] == 4
    assert law["terms"]["pending"] == 4
    assert law["terms"]["no_candidate"] == 1
    assert law["holds"]


def test_a_law_that_does_not_hold_is_published_as_such() -> None:
    m = merger()
    broken = {0: {"a@1": _law(10, pairs=7)}}  # three requests unaccounted for
    out = _close_window(m, 0, broken)
    law = [s for s in out if s["scope"] == "CUMULATIVE"][-1]["conservation"]
    assert law["requests"] == 10
    assert sum(law["terms"].values()) == law["terms"]["pairs"] == 7
    assert law["holds"] is False


def test_a_ledger_that_changes_alone_republishes_the_cumulative_once() -> None:
    """Pending entries classified while input is idle: only the ledger moves."""
    m = merger()
    _close_window(m, 0, {p: {"a@1": _law(2, pending=2)} for p in range(PARTITIONS)})
    idle = partial(
        SHARED, 0, W, PartialStats(), watermark=W, ledger={"a@1": _law(2, no_candidate=2)}
    )
    out = decode(m.handle(idle))
    assert [(s["scope"], s["candidate"]) for s in out] == [("CUMULATIVE", "a@1")]
    assert out[0]["conservation"]["terms"]["no_candidate"] == 2
    assert out[0]["conservation"]["terms"]["pending"] == 4
    assert decode(m.handle(idle)) == []  # the same ledger again changes nothing


def test_no_ledger_from_any_partition_means_no_law() -> None:
    snaps = run(merger(), [v for part in by_partition(Data(1, windows=1)) for v in part])
    assert all(s["conservation"] is None for s in snaps)


# -- progress under uneven traffic -------------------------------------------------------------

SIX = 6


def _window(p: int, ws: int, *, watermark: int, requests: int = 1) -> list[bytes]:
    """One partition's partials for window ``ws``: a@1's pairs, then ``*`` with progress."""
    return [
        partial("a@1", p, ws, counted(pairs=requests), partitions=SIX),
        partial(SHARED, p, ws, counted(requests=requests), watermark=watermark, partitions=SIX),
    ]


def _closed_windows(snaps: list[dict[str, Any]]) -> list[int]:
    return [s["window_start"] // W for s in snaps if s["scope"] == "WINDOW"]


def test_all_traffic_on_one_partition_of_six_windows_close_within_the_grace() -> None:
    m = merger(grace_ms=2 * W)
    closed_at: dict[int, int] = {}
    for w in range(10):
        for v in _window(0, w * W, watermark=(w + 1) * W):
            for ws in _closed_windows(decode(m.handle(v))):
                closed_at[ws] = w + 1  # the progress at which it closed, in windows
    assert sorted(closed_at) == list(range(8))  # 8 and 9 are within the grace still
    assert all(closed_at[ws] == ws + 1 + 2 for ws in closed_at)  # window end + grace


def test_five_busy_partitions_and_a_silent_one_windows_close_within_the_grace() -> None:
    m = merger(grace_ms=2 * W)
    snaps: list[dict[str, Any]] = []
    for w in range(6):
        for p in range(SIX - 1):
            for v in _window(p, w * W, watermark=(w + 1) * W):
                snaps += decode(m.handle(v))
    windows = [s for s in snaps if s["scope"] == "WINDOW"]
    assert _closed_windows(windows) == [0, 1, 2, 3]
    assert all(s["coverage"]["pairs"] == SIX - 1 for s in windows)
    assert all(s["late_partials"] == 0 for s in snaps)


def test_a_partition_that_reported_once_and_went_silent_holds_nothing_back() -> None:
    m = merger(grace_ms=2 * W)
    snaps: list[dict[str, Any]] = []
    for v in _window(5, 0, watermark=W):  # partition 5 reports window 0, then nothing
        snaps += decode(m.handle(v))
    for w in range(6):
        for p in range(SIX - 1):
            for v in _window(p, w * W, watermark=(w + 1) * W):
                snaps += decode(m.handle(v))
    assert _closed_windows(snaps) == [0, 1, 2, 3]
    assert m.global_progress() == W  # partition 5 still holds the minimum


def test_a_partial_after_a_grace_close_is_late_and_reaches_the_cumulative() -> None:
    m = merger(grace_ms=2 * W)
    for w in range(4):
        for p in range(SIX - 1):
            for v in _window(p, w * W, watermark=(w + 1) * W):
                m.handle(v)
    assert m.horizon() == 2 * W
    # the silent partition wakes up with window 0: late, counted, in the cumulative
    out: list[dict[str, Any]] = []
    for v in _window(5, 0, watermark=W, requests=7):
        out += decode(m.handle(v))
    assert [s["scope"] for s in out] == ["CUMULATIVE", "CUMULATIVE"]
    last = out[-1]
    assert last["late_partials"] == 2
    assert last["coverage"]["pairs"] == 2 * (SIX - 1) + 7  # windows 0 and 1 closed, + late
    assert last["coverage"]["requests"] == 2 * (SIX - 1) + 7
    assert m.horizon() == 2 * W  # a lagging partition never moves the horizon back


def test_the_default_grace_is_two_windows() -> None:
    m = merger(grace_ms=None)
    snaps: list[dict[str, Any]] = []
    for w in range(4):
        for v in _window(0, w * W, watermark=(w + 1) * W):
            snaps += decode(m.handle(v))
    assert _closed_windows(snaps) == [0, 1]


@pytest.mark.parametrize("seed", range(3))
def test_grace_closes_are_a_function_of_the_partials_only(seed: int) -> None:
    """Replayed from any point through copied tables, the same snapshots come out."""
    rng = random.Random(seed)
    per = [
        [v for w in range(6) for v in _window(p, w * W, watermark=(w + 1) * W)] for p in range(SIX)
    ]
    per[rng.randrange(SIX)] = per[0][:2]  # one nearly silent partition
    msgs = interleave(per, seed)
    whole = run(merger(grace_ms=W), msgs)
    cut = rng.randrange(1, len(msgs))
    m = merger(grace_ms=W)
    head = run(m, msgs[:cut])
    resumed = WindowMerger(
        *(copy.deepcopy(t) for t in (m.windows, m.cumulative, m.meta, m.progress)),
        codec=CODEC,
        clock=lambda: 42,
        grace_ms=W,
    )
    assert head + run(resumed, msgs[cut:]) == whole
    starts = [s["window_start"] for s in whole if s["scope"] == "WINDOW"]
    assert starts == sorted(starts)  # in window order


def test_tables_from_before_the_grace_resume_from_the_global_progress() -> None:
    data = Data(2, windows=2)
    m = fed(data)
    m.progress.pop(b"h")  # as an older release left them
    assert m.horizon() == 2 * W
    extra = decode(m.handle(partial("a@1", 0, 0, counted(pairs=1), seq=1)))
    assert extra[-1]["late_partials"] == 1
