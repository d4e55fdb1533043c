"""SIGTERM stops the evaluator within 10 s, rc 0, with its work committed.

Reported: in 5 of 11 runs it did not exit within 30 s of SIGTERM. Here it is stopped three
times while partials stream in (written in transactions, as the joiner writes them), and
restarted each time; in the end every window is published exactly once.

A clean SIGTERM stop returns 0, as the worker and the joiner do; a stop that cannot finish
within the evaluator's deadline (8 s) exits 1 (see streams/evaluator.py).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from support import committed_total, end_total, snapshots, stage, terminate, wait_for

from streams.config import Config
from streams.kafka import Topics, ensure_topics
from streams.metrics.partial import SHARED, PartialStats
from streams.schemas import default_codec

#: judged on timing: run alone after the parallel phase (see the Makefile)
pytestmark = pytest.mark.serial

W = 1000
PARTITIONS = 3
CANDIDATES = ("a@1", "b@1")
WINDOWS = 300
STOP_WITHIN_S = 10.0
CODEC = default_codec()


def window_partials(w: int) -> Iterator[tuple[bytes, bytes]]:
    """Every joiner partition's partials of window ``w``: candidates, then ``*``."""
    for p in range(PARTITIONS):
        for cand in (*CANDIDATES, SHARED):
            stats = PartialStats()
            stats.count("requests" if cand == SHARED else "pairs", 2)
            rec = stats.to_partial(
                joiner_partition=p,
                partition_count=PARTITIONS,
                candidate=cand,
                primary="prim@1",
                window_start=w * W,
                window_end=(w + 1) * W,
                watermark=(w + 1) * W if cand == SHARED else 0,
            )
            yield cand.encode(), CODEC.encode("Partial", rec)


def feed(cfg: Config, stop: threading.Event) -> None:
    """All windows, a few per transaction, paced so that the evaluator works all along."""
    topic = Topics(cfg.prefix).partials
    p = Producer(
        {"bootstrap.servers": cfg.bootstrap_servers, "transactional.id": f"{cfg.prefix}.feed"}
    )
    p.init_transactions(30)
    for first in range(0, WINDOWS, 5):
        if stop.is_set():
            return
        p.begin_transaction()
        for w in range(first, first + 5):
            for key, value in window_partials(w):
                p.produce(topic, value, key, partition=0)
        p.commit_transaction(30)
        time.sleep(0.1)


def test_sigterm_mid_work_stops_within_10s_rc_0_and_nothing_is_lost_or_doubled(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, window_ms=W)
    ensure_topics(cfg)
    partials = [Topics(prefix).partials]
    group = f"{prefix}.evaluator"
    stop_feeding = threading.Event()
    feeder = threading.Thread(target=feed, args=(cfg, stop_feeding), daemon=True)
    feeder.start()
    stops: list[tuple[float, int | None]] = []
    try:
        for run in range(3):
            log = tmp_path / f"evaluator-{run}.log"
            proc = stage(cfg, "evaluator", log=log)
            try:
                before = committed_total(cfg, group, partials, 1)
                # mid-work: it has committed something new, and partials are still waiting
                wait_for(
                    lambda before=before: committed_total(cfg, group, partials, 1) > before,
                    120,
                    f"evaluator run {run} to commit",
                    [proc],
                )
                time.sleep(1.0)
                backlog = end_total(cfg, partials, 1) - committed_total(cfg, group, partials, 1)
                assert backlog > 0, "no partials waiting: the stop would not land mid-work"
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                try:
                    code: int | None = proc.wait(30)
                except subprocess.TimeoutExpired:
                    code = None
                stops.append((time.monotonic() - started, code))
            finally:
                terminate(proc)  # SIGKILLs it if still there: the next run must not share
            assert code is not None and stops[-1][0] <= STOP_WITHIN_S, (
                f"run {run}: no exit within {STOP_WITHIN_S} s of SIGTERM ({stops}):\n"
                + log.read_text()[-3000:]
            )
            assert code == 0, f"run {run}: rc {code}\n" + log.read_text()[-3000:]
            # its log is a file: no terminal escapes (faust's start-up spinner wrote some)
            assert b"\x1b" not in log.read_bytes()
        feeder.join(300)
        proc = stage(cfg, "evaluator", log=tmp_path / "evaluator-final.log")
        expected = len(CANDIDATES) * WINDOWS

        def published() -> list[tuple[str, int]] | None:
            snaps = snapshots(cfg, idle_s=1.0)
            windows = [(s["candidate"], s["window_start"]) for s in snaps if s["scope"] == "WINDOW"]
            return windows if len(set(windows)) >= expected else None

        try:
            wait_for(published, 300, "every window", [proc])
        finally:
            terminate(proc)
    finally:
        stop_feeding.set()
        feeder.join(60)
    snaps = snapshots(cfg, idle_s=1.0)
    window_keys = [(s["candidate"], s["window_start"]) for s in snaps if s["scope"] == "WINDOW"]
    # every window published exactly once, whatever the stops
    assert len(window_keys) == len(set(window_keys)) == expected, stops
    last = {s["candidate"]: s for s in snaps if s["scope"] == "CUMULATIVE"}
    for cand in CANDIDATES:
        assert last[cand]["coverage"]["pairs"] == 2 * PARTITIONS * WINDOWS
        assert last[cand]["late_partials"] == 0
