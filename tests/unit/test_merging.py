"""The evaluator's window logic on dict tables: what it publishes, when, and how it merges."""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import pytest

from streams.merging import WindowMerger
from streams.metrics.partial import SHARED, PartialStats
from streams.schemas import default_codec

CODEC = default_codec()
W = 1000  # window length, ms
PARTITIONS = 3


def merger() -> WindowMerger:
    return WindowMerger({}, {}, {}, {}, codec=CODEC, clock=lambda: 42)


def partial(
    cand: str,
    partition: int,
    ws: int,
    stats: PartialStats,
    *,
    watermark: int = 0,
    seq: int = 0,
) -> bytes:
    rec = stats.to_partial(
        joiner_partition=partition,
        partition_count=PARTITIONS,
        candidate=cand,
        primary="prim@1" if cand == SHARED else "",
        window_start=ws,
        window_end=ws + W,
        seq=seq,
        watermark=watermark,
    )
    return CODEC.encode("Partial", rec)


def decode(out: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
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


def test_an_undecodable_partial_is_dropped_and_changes_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = merger()
    m.handle(partial("a@1", 0, 0, PartialStats()))
    tables = copy.deepcopy((m.windows, m.cumulative, m.meta, m.progress))
    assert m.handle(b"\xc3\x01not avro at all") == []
    assert (m.windows, m.cumulative, m.meta, m.progress) == tables
    assert "undecodable partial" in caplog.text


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
        out += m.handle(partial(SHARED, p, 2 * W, PartialStats(), watermark=3 * W))
    assert out == []
    assert m.global_progress() == 3 * W
