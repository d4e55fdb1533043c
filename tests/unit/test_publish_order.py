"""The order a joiner publishes one transaction's partials in, read by the evaluator's
merger (no broker): every window's partials arrive before any progress past it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from streams.join.windows import Emitted, publish_order
from streams.joinstate import PartitionState
from streams.merging import WindowMerger
from streams.metrics.partial import PartialStats
from streams.schemas import default_codec

CODEC = default_codec()
W, LATENESS, TTL = 1_000, 1_000, 3_000
PARTITIONS = 6
NOW = 1_800_000_000_000
T0 = NOW - 60_000 - (NOW - 60_000) % W


def state(p: int) -> PartitionState:
    return PartitionState(p, W, LATENESS, TTL, max_age_ms=600_000, max_skew_ms=60_000)


def answer(rid: str, t: int, model: str) -> dict[str, Any]:
    return {
        "request_id": rid,
        "event_time": t,
        "model_id": model,
        "role": "PRIMARY" if model == "prim@1" else "CANDIDATE",
        "value": 100.0 if model == "prim@1" else 101.5,
        "label": None,
        "latency_ms": 2.0,
        "error": None,
    }


Transaction = dict[int, list[Emitted]]


def traffic(s: PartitionState, prefix: str, candidates: Callable[[int], tuple[str, ...]]) -> None:
    """200 requests 20 ms apart (four windows), each with the primary's answer and those
    of ``candidates(i)``."""
    for i in range(200):
        t = T0 + i * 20
        rid = f"{prefix}{i}"
        s.on_request({"request_id": rid, "event_time": t, "context": {}}, NOW)
        s.on_prediction(answer(rid, t, "prim@1"), NOW)
        for model in candidates(i):
            s.on_prediction(answer(rid, t, model), NOW)


def end_of_run() -> tuple[Transaction, Transaction]:
    """Six partitions, 50 requests a window each for four windows (one transaction); then
    every partition goes idle in the same tick and jumps to processing time (the next), as
    at the end of a demo."""
    batch: Transaction = {}
    jump: Transaction = {}
    for p in range(PARTITIONS):
        s = state(p)
        traffic(s, f"p{p}-", lambda i: ("cand@2",))
        batch[p] = s.advance()
        s.idle_until(T0 + 10 * W)
        jump[p] = s.advance()
    assert max(e.watermark for e in jump[0]) >= T0 + 8 * W  # the jump
    return batch, jump


def by_partition(t: Transaction) -> list[tuple[int, Emitted]]:
    """The order before: partition by partition."""
    return [(p, e) for p in sorted(t) for e in t[p]]


def merge(
    order: list[tuple[int, Emitted]], partitions: int = PARTITIONS, candidate: str = "cand@2"
) -> tuple[list[dict[str, Any]], int]:
    merger = WindowMerger({}, {}, {}, {}, codec=CODEC, clock=lambda: 0, grace_ms=2 * W)
    snapshots = []
    for p, e in order:
        rec = e.stats.to_partial(
            joiner_partition=p,
            partition_count=partitions,
            candidate=e.candidate,
            primary=e.primary,
            window_start=e.window_start,
            window_end=e.window_start + W,
            seq=e.seq,
            watermark=e.watermark,
            ledger=e.ledger or {},
        )
        out = merger.handle(CODEC.encode("Partial", rec))
        assert out.error is None
        snapshots += [CODEC.decode_as("MetricSnapshot", v) for _, v in out.snapshots]
    windows = [s for s in snapshots if s["scope"] == "WINDOW" and s["candidate"] == candidate]
    late = max((s["late_partials"] for s in snapshots if s["scope"] == "CUMULATIVE"), default=0)
    return windows, late


def test_windows_closed_by_one_partitions_jump_still_hold_every_partition() -> None:
    batch, jump = end_of_run()
    windows, late = merge(publish_order(batch) + publish_order(jump))
    assert late == 0
    assert [w["window_start"] - T0 for w in windows] == [0, 1000, 2000, 3000]
    for w in windows:
        assert w["partials"] == 2 * PARTITIONS  # a candidate's and a '*' partial each
        assert w["coverage"]["requests"] == 50 * PARTITIONS
        assert w["coverage"]["pairs"] == 50 * PARTITIONS


def test_partition_by_partition_the_jump_closed_windows_before_their_partials_came() -> None:
    """What the order prevents: the first partition's progress closes the windows."""
    batch, jump = end_of_run()
    windows, late = merge(by_partition(batch) + by_partition(jump))
    assert late > 0
    assert min(w["coverage"]["requests"] for w in windows) < 50 * PARTITIONS


def test_counts_in_windows_after_the_last_shared_one_come_before_its_progress() -> None:
    """Joins that end without a candidate's answer are counted at their deadline, a TTL
    later: windows holding only candidates' partials, after the last window with a ``*``
    partial, whose progress vouches for them all. One partition: nothing may be late."""
    s = state(0)
    # the last ten never get the other candidate's answer
    traffic(s, "r", lambda i: ("cand@2", "cand@3") if i < 190 else ("cand@2",))
    s.finish_open()
    emitted = {0: s.advance(close_all=True)}
    shared_last = max(e.window_start for e in emitted[0] if e.candidate == "*")
    assert max(e.window_start for e in emitted[0]) > shared_last  # the case in question
    windows, late = merge(publish_order(emitted), partitions=1, candidate="cand@3")
    assert late == 0
    assert sum(w["coverage"]["no_candidate"] for w in windows) == 10


def test_a_partitions_partials_of_equal_progress_keep_their_order() -> None:
    def e(cand: str, ws: int, wm: int) -> Emitted:
        return Emitted(cand, ws, 0, PartialStats(), watermark=wm)

    es = {
        0: [e("b@1", 0, 1000), e("a@1", 0, 1000), e("*", 0, 1000), e("a@1", 1000, 2000)],
        1: [e("a@1", 0, 1000), e("*", 0, 1000), e("*", 1000, 5000)],
    }
    got = [(p, x.candidate, x.window_start) for p, x in publish_order(es)]
    assert got == [
        (0, "b@1", 0),
        (0, "a@1", 0),
        (1, "a@1", 0),
        (0, "*", 0),
        (1, "*", 0),
        (0, "a@1", 1000),
        (1, "*", 1000),  # all of partition 1's progress: after everything it vouches for
    ]
