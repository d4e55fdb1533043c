"""The shadow worker's delivery guarantees under SIGKILL, on a real broker (issue 9, item 5).

- ``--exactly-once``: the worker killed at random points while it scores 20,000 requests
  with two candidates, each time with a transaction open and predictions of it in the log,
  and started again: a read_committed reader of ``<prefix>.predictions`` sees exactly one
  prediction per request per candidate, although the log holds the killed batches'
  aborted predictions too (a read_uncommitted reader sees them); and a transaction that
  fails abortably is aborted and its batch scored again.
- at-least-once (the default): the same kill, caught with predictions on the topic beyond
  the committed offsets, leaves duplicates; the joiner counts each pair once, as the
  evaluator's cumulative MetricSnapshot of each candidate shows (pairs == requests, and the
  duplicates counted apart).
- scale-out: two workers in one group, one SIGKILLed mid-run: the survivor scores every
  request (exactly once with ``--exactly-once``).
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from support import (
    answer_or_none,
    committed_total,
    end_total,
    judged,
    kill,
    kill_inside_a_transaction,
    kill_with_answers_not_committed,
    messages_per_key,
    pipeline_cfg,
    produce_answered,
    stage,
    terminate,
    wait_for,
)

from streams.config import Config
from streams.kafka import Topics, admin, ensure_topics
from streams.models import load_candidate
from streams.simulation import run_service
from streams.worker import run_worker

N = 20_000
RIDGE = "price-ridge@4=streams.demo_models:ridge_candidate"
TREE = "price-tree@1=streams.demo_models:tree_candidate"
CANDIDATES = ("price-ridge@4", "price-tree@1")
WORKER = ("--candidate", RIDGE, "--candidate", TREE, "--batch-size", "200")


def candidate_counts(cfg: Config, isolation: str = "read_committed") -> dict[tuple[str, str], int]:
    return {
        key: count
        for key, count in messages_per_key(cfg, Topics(cfg.prefix).predictions, isolation).items()
        if key[1] in CANDIDATES
    }


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    assert proc.wait(timeout) == 0, log.read_text()[-3000:]


def test_exactly_once_worker_killed_twice_publishes_each_prediction_once(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    cfg = pipeline_cfg(kafka_bootstrap, prefix, partitions=4)
    produce_answered(cfg, N)
    t = Topics(cfg.prefix)
    args = (*WORKER, "--exactly-once", "--instance", "w1")
    rng = random.Random()
    started = time.monotonic()
    kills = []
    for round_ in range(2):
        log = tmp_path / f"worker-{round_}.log"
        proc = stage(cfg, "worker", *args, log=log)
        try:
            # a random point while it works: once the log holds a random share of the
            # answers still to come, and an open transaction's predictions
            before = end_total(cfg, [t.predictions], cfg.partitions, "read_uncommitted")
            goal = before + int(rng.uniform(0.1, 0.35) * len(CANDIDATES) * N)
            kill_inside_a_transaction(proc, cfg, goal)
        finally:
            kill(proc)
        kills.append(committed_total(cfg, f"{cfg.prefix}.worker", [t.requests], cfg.partitions))
    log = tmp_path / "worker-last.log"
    finish(stage(cfg, "worker", *args, "--idle-exit", "3", log=log), log)
    took = time.monotonic() - started

    assert 0 < kills[0] <= kills[1] < N, kills  # both kills landed mid-run
    committed = candidate_counts(cfg)
    assert len(committed) == len(CANDIDATES) * N  # every request, every candidate
    assert set(committed.values()) == {1}, "a read_committed reader saw a duplicate"
    # the kills did land inside transactions: their predictions are in the log, aborted
    everything = candidate_counts(cfg, "read_uncommitted")
    aborted = sum(everything.values()) - sum(committed.values())
    assert aborted > 0, "no kill caught an open transaction with predictions in it"
    assert "exactly-once" in log.read_text()
    print(
        f"\nexactly-once: killed with {kills} requests committed; {aborted} predictions "
        f"aborted; {N} requests x {len(CANDIDATES)} candidates once each, in {took:.1f} s"
    )


def test_at_least_once_worker_killed_duplicates_and_the_joiner_counts_once(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    cfg = pipeline_cfg(kafka_bootstrap, prefix, partitions=4)
    produce_answered(cfg, N)
    started = time.monotonic()
    proc = stage(cfg, "worker", *WORKER, log=tmp_path / "killed-worker.log")
    try:
        committed, answered = kill_with_answers_not_committed(proc, cfg, N, len(CANDIDATES), N)
    finally:
        kill(proc)
    log = tmp_path / "worker.log"
    finish(stage(cfg, "worker", *WORKER, "--idle-exit", "3", log=log), log)

    counts = candidate_counts(cfg)
    assert len(counts) == len(CANDIDATES) * N
    scored_twice = sum(n - 1 for n in counts.values())
    assert scored_twice > 0, "the kill must leave answers that are scored again"
    assert set(counts.values()) <= {1, 2}

    final = judged(cfg, tmp_path, N, len(CANDIDATES))
    duplicates = 0
    for cand in CANDIDATES:
        cov = final[cand]["coverage"]
        assert cov["requests"] == N, cand
        assert cov["pairs"] == N, cand  # each pair once, the second answers not paired again
        assert cov["candidate_predictions"] == N, cand
        duplicates += cov["duplicates"]
    assert duplicates == scored_twice  # ... but counted, as duplicates
    print(
        f"\nat-least-once: killed with {committed} requests committed and {answered} answers "
        f"on the topic; {scored_twice} answers scored twice, each counted once as a duplicate; "
        f"{time.monotonic() - started:.1f} s"
    )


# -- scale-out: two workers, one killed ------------------------------------------------------

N_SCALE = 10_000

SLOW_PY = """
import time


def slow(xs):
    '''150 ms a batch of 100: two workers take ~8 s over the data, so one dies mid-run
    even when the test's own offset checks are slow (with 50 ms the run took ~2.5 s, and
    this test failed once on a loaded machine, cause not recorded).'''
    time.sleep(0.15)
    return [1.0] * len(xs)
"""


def members(cfg: Config) -> int:
    """Members of the worker group that hold partitions now."""
    client = admin(cfg)  # alive until the answer is in
    group = client.describe_consumer_groups([f"{cfg.prefix}.worker"])[f"{cfg.prefix}.worker"]
    return sum(1 for m in group.result(10).members if m.assignment.topic_partitions)


@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_two_workers_one_killed_mid_run_every_request_is_scored(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, mode: str
) -> None:
    # a killed exactly-once member's open transaction holds its partitions' committed
    # offsets until the broker aborts it (transaction.timeout.ms, then a sweep every 10 s)
    kafka = {"session.timeout.ms": "6000", "transaction.timeout.ms": "10000"}
    cfg = pipeline_cfg(kafka_bootstrap, prefix, partitions=4, kafka=kafka)
    ensure_topics(cfg)
    t = Topics(cfg.prefix)
    group = f"{cfg.prefix}.worker"
    slow = tmp_path / "slow.py"
    slow.write_text(SLOW_PY)
    extra = ("--exactly-once",) if mode == "exactly-once" else ()
    args = ("--candidate", RIDGE, "--candidate", f"slow@1={slow}:slow", "--batch-size", "100")
    logs = [tmp_path / f"worker-{name}.log" for name in "ab"]
    procs = [stage(cfg, "worker", *args, *extra, log=log) for log in logs]

    def committed() -> int:
        return committed_total(cfg, group, [t.requests], cfg.partitions)

    started = time.monotonic()
    try:
        wait_for(answer_or_none(lambda: members(cfg) == 2), 60, "both workers in the group", procs)
        produce_answered(cfg, N_SCALE)
        wait_for(
            answer_or_none(lambda: committed() >= 1000),
            120,
            "the first commits",
            procs,
        )
        at_kill = committed()
        kill(procs[0])
        assert at_kill < N_SCALE, "the kill came after the run"
        wait_for(
            answer_or_none(lambda: committed() == N_SCALE),
            120,
            "the survivor to score the rest",
            procs[1:],
        )
        terminate(procs[1])
        assert procs[1].returncode == 0, logs[1].read_text()[-3000:]
    finally:
        for proc in procs:
            kill(proc)
    took = time.monotonic() - started

    counts = {
        key: n
        for key, n in messages_per_key(cfg, t.predictions).items()
        if key[1] in ("price-ridge@4", "slow@1")
    }
    assert len(counts) == 2 * N_SCALE  # every request scored by both candidates
    if mode == "exactly-once":
        assert set(counts.values()) == {1}
    print(
        f"\n{mode}: worker killed with {at_kill} requests committed; survivor done; "
        f"{sum(counts.values()) - 2 * N_SCALE} answers scored twice; {took:.1f} s"
    )


def test_an_aborted_transaction_is_scored_again_and_published_once(
    kafka_bootstrap: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose transaction fails abortably (as when a broker aborts it) is aborted,
    the consumer rewinds to the last commit, and the batch is scored again: its first
    predictions, already in the log, are never seen by a read_committed reader."""
    import streams.worker as worker_module

    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    ensure_topics(cfg)
    run_service(cfg, events=1000, rate=0, seed=4)
    injected = KafkaError(KafkaError._STATE, "injected abort", txn_requires_abort=True)
    failures = [KafkaException(injected)]
    real_commit = worker_module.commit

    def commit_failing_once(
        producer: Any, consumer: Any, offsets: Any, timeout: float, deadline: Any = None
    ) -> None:
        if failures:
            assert producer.flush(10) == 0  # the batch's predictions are in the log
            raise failures.pop()
        real_commit(producer, consumer, offsets, timeout, deadline)

    monkeypatch.setattr(worker_module, "commit", commit_failing_once)
    stats = run_worker(
        cfg, [load_candidate(RIDGE)], batch_size=200, idle_exit_s=3.0, exactly_once=True
    )
    assert stats.aborted == 1
    assert stats.requests > 1000  # the aborted batch, scored again
    committed = candidate_counts(cfg)
    assert len(committed) == 1000 and set(committed.values()) == {1}
    everything = candidate_counts(cfg, "read_uncommitted")
    assert sum(everything.values()) == stats.predictions > 1000
