"""SIGKILL a stage mid-run, start it again: the numbers must equal an uninterrupted run."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from support import (
    committed_total,
    end_total,
    fold_partials,
    kill,
    produce_dataset,
    read_all,
    send,
    snapshots,
    stage,
    terminate,
    wait_for,
)

from streams.alerts.rules import SHIPPED_RULES, load_rules
from streams.config import Config
from streams.evaluator import verdict_ledger
from streams.joiner import run_joiner
from streams.judge import Judge
from streams.kafka import Topics, ensure_topics
from streams.merging import WindowMerger
from streams.schemas import default_codec

N = 30_000
N_EVAL = 15_000
"""Requests behind the evaluator's test: 75 windows of 2 s, about 1,350 partials (half of
N's, for suite time; the kill still lands while it publishes, asserted below)."""


def _cfg(bootstrap: str, prefix: str) -> Config:
    return Config(
        bootstrap_servers=bootstrap,
        prefix=prefix,
        window_ms=2000,
        lateness_ms=1000,
        idle_flush_ms=1500,
        join_ttl_ms=20_000,
    )


def _run_joiner_to_end(cfg: Config, log: Path, *argv: str) -> None:
    proc = stage(cfg, "joiner", "--idle-exit", "4", *argv, log=log)
    assert proc.wait(300) == 0, log.read_text()[-3000:]


@pytest.mark.chaos
def test_joiner_killed_mid_run_ends_with_the_same_numbers(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    clean, killed = _cfg(kafka_bootstrap, prefix + "a"), _cfg(kafka_bootstrap, prefix + "b")
    produce_dataset(clean, N)
    produce_dataset(killed, N)
    _run_joiner_to_end(clean, tmp_path / "clean.log")

    t = Topics(killed.prefix)
    inputs = [t.requests, t.predictions]
    total = end_total(killed, inputs, killed.partitions)
    group = f"{killed.prefix}.joiner"
    # the same --instance after the kill: it fences the dead one's open transaction at once
    proc = stage(killed, "joiner", "--instance", "k", log=tmp_path / "killed.log")
    progress = wait_for(
        lambda: committed_total(killed, group, inputs, killed.partitions),
        timeout=120,
        what="the joiner's first committed batch",
        procs=[proc],
    )
    kill(proc)
    at_kill = committed_total(killed, group, inputs, killed.partitions)
    assert 0 < progress <= at_kill < total, "the kill must land mid-run"
    _run_joiner_to_end(killed, tmp_path / "restarted.log", "--instance", "k")

    a, b = fold_partials(clean), fold_partials(killed)
    assert sorted(a) == ["*", "c1@1", "c2@1"]
    assert sorted(b) == sorted(a)
    for cand in a:
        assert b[cand].to_record() == a[cand].to_record(), cand  # counts, exact sums, sketches
    assert a["*"].coverage["requests"] == N
    assert a["c1@1"].coverage["pairs"] == N
    assert a["c2@1"].coverage["pairs"] == N - N // 50
    assert a["c1@1"].coverage["duplicates"] > 0


def test_offsets_left_pending_by_a_killed_stage_still_read_as_the_last_commit(
    kafka_bootstrap: str, prefix: str
) -> None:
    """The state a SIGKILL between send_offsets_to_transaction and commit leaves behind.

    A CI run failed here: the kill check timed out instead of answering (read_committed
    lookups wait for pending transactional offsets to settle).
    """
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=1)
    topic = Topics(prefix).requests
    ensure_topics(cfg)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for _ in range(3):
        send(p, topic, b"x", None, partition=0)
    assert p.flush(30) == 0
    group = f"{prefix}.stage"
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    txn = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"{prefix}.t"})
    txn.init_transactions(30)
    txn.begin_transaction()
    txn.send_offsets_to_transaction([TopicPartition(topic, 0, 3)], c.consumer_group_metadata(), 30)
    try:
        # the transaction is open, as after a kill: the answer is the last *committed* offset
        assert committed_total(cfg, group, [topic], 1) == 1
    finally:
        txn.abort_transaction(30)
        c.close()
    assert committed_total(cfg, group, [topic], 1) == 1


def _copy(
    messages: list[tuple[bytes | None, bytes | None, int]],
    dst: Config,
    pause_every: int = 0,
) -> None:
    """Produce messages in order to dst's partials, pausing so a consumer is caught mid-way."""
    p = Producer({"bootstrap.servers": dst.bootstrap_servers, "enable.idempotence": True})
    topic = Topics(dst.prefix).partials
    for n, (key, value, partition) in enumerate(messages, 1):
        send(p, topic, value, key, partition=partition)
        if pause_every and n % pause_every == 0:
            p.flush(30)
            time.sleep(0.2)
    assert p.flush(60) == 0


def _final(cfg: Config, expected_windows: int) -> dict[str, dict[str, Any]] | None:
    snaps = snapshots(cfg, idle_s=1.0)
    windows = {(s["candidate"], s["window_start"]) for s in snaps if s["scope"] == "WINDOW"}
    if len(windows) < expected_windows:
        return None
    last: dict[str, dict[str, Any]] = {}
    for s in snaps:
        if s["scope"] == "CUMULATIVE":
            last[s["candidate"]] = s
    return {"snaps": snaps, "last": last}


def _alerts(cfg: Config) -> list[dict[str, Any]]:
    return _published(cfg, Topics(cfg.prefix).alerts, "Alert")


def _verdicts(cfg: Config) -> list[dict[str, Any]]:
    return _published(cfg, Topics(cfg.prefix).verdicts, "Verdict")


def _published(cfg: Config, topic: str, name: str) -> list[dict[str, Any]]:
    codec = default_codec()
    return [
        _comparable(codec.decode_as(name, v)) for _, v, _ in read_all(cfg, topic) if v is not None
    ]


def _comparable(s: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in s.items() if k != "emitted_at"}


def expected_windows(snaps: list[dict[str, Any]]) -> int:
    """(candidate, window) pairs with a WINDOW snapshot: each also gets one verdict."""
    return len({(s["candidate"], s["window_start"]) for s in snaps if s["scope"] == "WINDOW"})


@pytest.mark.chaos
def test_evaluator_killed_mid_run_publishes_nothing_twice(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    source = _cfg(kafka_bootstrap, prefix + "s")
    produce_dataset(source, N_EVAL)
    run_joiner(source, idle_exit_s=4)
    partials = fold_partials(source)
    clean, killed = _cfg(kafka_bootstrap, prefix + "a"), _cfg(kafka_bootstrap, prefix + "b")
    for cfg in (clean, killed):
        ensure_topics(cfg)
    # in window order, as a live joiner would publish them: windows then close all along,
    # so snapshots are being published when the SIGKILL lands
    codec = default_codec()
    messages = sorted(
        read_all(source, Topics(source.prefix).partials),
        key=lambda m: codec.decode_as("Partial", m[1] or b"")["window_end"],
    )
    total = len(messages)
    _copy(messages, clean)
    # what the evaluator must publish: its pure logic over the same partials in the same
    # order, on dict tables, with the evaluator's grace (a window some partition is two
    # windows past closes; partials for it after that are late, with no WINDOW snapshot)
    # with the judge the evaluator runs: the shipped rules, the first 2,000 requests as
    # the drift reference (feature x = i keeps moving away from it: its alert fires)
    judge = Judge(
        {},
        rules=load_rules(SHIPPED_RULES),
        reference_requests=source.reference_requests,
        top_k=source.slice_top_k,
    )
    reference = WindowMerger(
        {}, {}, {}, {}, codec=codec, grace_ms=2 * source.window_ms, judge=judge,
        verdicts=verdict_ledger(source, {}, codec),
    )  # fmt: skip
    handled = [reference.handle(m[1]) for m in messages]
    want_snaps = [codec.decode_as("MetricSnapshot", v) for h in handled for _, v in h.snapshots]
    want_alerts = [_comparable(codec.decode_as("Alert", v)) for h in handled for _, v in h.alerts]
    want_verdicts = [
        _comparable(codec.decode_as("Verdict", v)) for h in handled for _, v in h.verdicts
    ]
    assert len(want_verdicts) == expected_windows(want_snaps)
    assert ("feature-drift", "*", "x", "FIRING") in [
        (a["rule"], a["candidate"], a["feature"], a["state"]) for a in want_alerts
    ]
    expected = expected_windows(want_snaps)
    assert expected >= 2 * (N_EVAL * 10 // source.window_ms) * 0.9  # ~2 candidates x windows

    proc = stage(clean, "evaluator", log=tmp_path / "clean.log")
    try:
        wait_for(lambda: _final(clean, expected), 300, "the clean evaluator", [proc])
    finally:
        terminate(proc)
    a = _final(clean, expected)  # read again once stopped: all it published, committed
    assert a is not None
    assert [_comparable(x) for x in a["snaps"]] == [_comparable(x) for x in want_snaps]
    assert _alerts(clean) == want_alerts
    assert _verdicts(clean) == want_verdicts

    # the same partials: a third up front, the rest streamed slowly while the SIGKILL lands
    head = total // 3
    _copy(messages[:head], killed)
    proc = stage(killed, "evaluator", log=tmp_path / "killed.log")
    group, partials_topic = f"{killed.prefix}.evaluator", [Topics(killed.prefix).partials]
    wait_for(
        lambda: committed_total(killed, group, partials_topic, 1) >= head,
        180,
        "the evaluator to commit the first third",
        [proc],
    )
    feeder = threading.Thread(target=_copy, args=(messages[head:], killed, 25))
    feeder.start()
    time.sleep(2.0)
    kill(proc)
    committed_at_kill = committed_total(killed, group, partials_topic, 1)
    published_at_kill = len(snapshots(killed, idle_s=1.0))
    proc = stage(killed, "evaluator", log=tmp_path / "restarted.log")
    try:
        wait_for(lambda: _final(killed, expected), 300, "the restarted evaluator", [proc])
    finally:
        terminate(proc)
        feeder.join(120)
    b = _final(killed, expected)
    assert b is not None

    assert total == len(read_all(killed, Topics(killed.prefix).partials))
    assert head <= committed_at_kill < total, "the kill must land mid-run"
    assert 0 < published_at_kill < len(a["snaps"]), "the kill must land while publishing"
    window_keys = [
        (s["candidate"], s["window_start"]) for s in b["snaps"] if s["scope"] == "WINDOW"
    ]
    assert len(window_keys) == len(set(window_keys)) == expected, "published twice, or lost"
    # the whole published sequence equals the uninterrupted run's, snapshot for snapshot
    got, want = [_comparable(s) for s in b["snaps"]], [_comparable(s) for s in a["snaps"]]
    first = next((i for i, (x, y) in enumerate(zip(got, want, strict=False)) if x != y), None)
    assert got == want, (
        f"{len(got)} snapshots after the restart vs {len(want)}; first difference at {first}: "
        f"{got[first] if first is not None else got[len(want) :][:2]} vs "
        f"{want[first] if first is not None else None} (prefixes {clean.prefix}, {killed.prefix})"
    )
    # and its alerts: the same transitions, none twice (no second FIRING after the restart)
    assert _alerts(killed) == want_alerts
    # and its verdicts: one per candidate per window, none twice, none lost
    assert _verdicts(killed) == want_verdicts
    for cand in ("c1@1", "c2@1"):
        fa = a["last"][cand]
        assert fa["coverage"]["pairs"] == partials[cand].coverage["pairs"]
        assert fa["sum_sq_diff"] == partials[cand].sum_sq_diff.get()
    assert a["last"]["c1@1"]["coverage"]["requests"] == N_EVAL
