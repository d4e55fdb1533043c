"""Helpers shared by the integration tests: run a stage as a real process, read topics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from streams.config import Config
from streams.kafka import Topics, ensure_topics
from streams.metrics.partial import PartialStats
from streams.schemas import default_codec

BASE_TIME = 1_700_000_000_000
"""A fixed event time, for tests that only check it is carried through unchanged."""


def recent_base(n: int, step_ms: int = 10) -> int:
    """An event time for ``n`` events ``step_ms`` apart that all end 10 s ago, on a window
    boundary: the joiner refuses event times far from their message's Kafka timestamp."""
    now = int(time.time() * 1000)
    return (now - n * step_ms - 10_000) // 10_000 * 10_000


def stage(cfg: Config, role: str, *argv: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``understudy <role>`` as its own process (own session, so it can be SIGKILLed)."""
    env = dict(os.environ)
    env.update(cfg.to_env())
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", role, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the stage and everything in its session: no cleanup runs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(proc)


def read_all(
    cfg: Config, topic: str, idle_s: float = 3.0, max_s: float = 60.0
) -> list[tuple[bytes | None, bytes | None, int]]:
    """Every committed message of ``topic`` as (key, value, partition), in partition order."""
    c = Consumer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "group.id": f"read-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    # assign, not subscribe: no group join to wait for, so idle_s really means "nothing new"
    partitions = c.list_topics(topic, timeout=30).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
    out: list[tuple[bytes | None, bytes | None, int]] = []
    last = time.monotonic()
    start = last
    try:
        while time.monotonic() - last < idle_s and time.monotonic() - start < max_s:
            msgs = c.consume(num_messages=10000, timeout=0.5)
            for m in msgs:
                if m.error():
                    continue
                out.append((m.key(), m.value(), m.partition() or 0))
            if msgs:
                last = time.monotonic()
    finally:
        c.close()
    return out


def snapshots(cfg: Config, idle_s: float = 2.0) -> list[dict[str, Any]]:
    codec = default_codec()
    return [
        codec.decode_as("MetricSnapshot", v)
        for _, v, _ in read_all(cfg, Topics(cfg.prefix).metrics, idle_s=idle_s)
    ]


def wait_for(
    check: Callable[[], Any], timeout: float, what: str, procs: list[Any] | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        for p in procs or []:
            if p.poll() is not None:
                raise AssertionError(f"a stage exited with {p.returncode} while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def final_cumulative(cfg: Config, pairs: int, candidates: int) -> dict[str, dict[str, Any]] | None:
    """The last CUMULATIVE snapshot per candidate, once each shows ``pairs`` pairs."""
    last: dict[str, dict[str, Any]] = {}
    for s in snapshots(cfg, idle_s=1.0):
        if s["scope"] == "CUMULATIVE":
            last[s["candidate"]] = s
    done = [s for s in last.values() if s["coverage"]["pairs"] >= pairs]
    return last if len(done) >= candidates else None


def send(p: Producer, topic: str, value: bytes | None, key: bytes | None, **kw: Any) -> None:
    """``produce`` that waits for room when the client's queue is full.

    A broker that has just started (or a topic whose leader is still being elected) can
    hold deliveries back long enough for 100,000 queued messages to fill the queue; a test
    that fills topics must wait then, not fail with ``BufferError``.
    """
    while True:
        try:
            p.produce(topic, value, key, **kw)
            return
        except BufferError:
            p.poll(0.2)


def produce_dataset(cfg: Config, n: int, seed: int = 3) -> dict[str, np.ndarray]:
    """Requests, primary and two candidates' predictions with fixed event times.

    Some candidate answers are missing (c2 skips every 50th request) and some events are
    sent twice, so the coverage counters have something to count.
    """
    ensure_topics(cfg)
    t = Topics(cfg.prefix)
    codec = default_codec()
    rng = np.random.default_rng(seed)
    prim = rng.normal(300.0, 50.0, n)
    c1 = prim + rng.normal(0.0, 5.0, n)
    c2 = prim + rng.normal(2.0, 9.0, n)
    lat = rng.lognormal(1.0, 0.6, (3, n))
    p = Producer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "enable.idempotence": True,
        }
    )
    enc_req = codec.encoder("Request")
    enc_pred = codec.encoder("Prediction")
    base = recent_base(n)
    for i in range(n):
        rid = f"req-{i}"
        ts = base + i * 10
        key = rid.encode()
        req = enc_req({"request_id": rid, "event_time": ts, "numeric_features": {"x": float(i)}})
        send(p, t.requests, req, key)
        answers = (
            ("prim@1", "PRIMARY", prim[i]),
            ("c1@1", "CANDIDATE", c1[i]),
            ("c2@1", "CANDIDATE", c2[i]),
        )
        for j, (mid, role, v) in enumerate(answers):
            if mid == "c2@1" and i % 50 == 0:
                continue
            value = enc_pred(
                {
                    "request_id": rid,
                    "event_time": ts,
                    "model_id": mid,
                    "role": role,
                    "value": float(v),
                    "latency_ms": float(lat[j, i]),
                }
            )
            send(p, t.predictions, value, key)
            if i % 97 == 0:
                send(p, t.predictions, value, key)  # an at-least-once duplicate
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    return {"prim": prim, "c1": c1, "c2": c2}


def fold_partials(cfg: Config) -> dict[str, PartialStats]:
    """Merge every partial on the topic per candidate: what a perfect evaluator would see."""
    codec = default_codec()
    out: dict[str, PartialStats] = {}
    for _, v, _ in read_all(cfg, Topics(cfg.prefix).partials):
        rec = codec.decode_as("Partial", v)
        out.setdefault(rec["candidate"], PartialStats()).merge(PartialStats.from_record(rec))
    return out


def committed_total(cfg: Config, group: str, topics: list[str], partitions: int) -> int:
    """Sum of the group's committed offsets, as they stand now.

    read_uncommitted on purpose: librdkafka asks for *stable* offsets when the consumer is
    read_committed (its default), and a stage killed between sending its offsets to a
    transaction and committing it leaves them pending until the next incarnation fences it,
    so a read_committed lookup times out instead of answering. The broker still returns
    only committed offsets here, never the pending ones.
    """
    c = Consumer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "group.id": group,
            "isolation.level": "read_uncommitted",
        }
    )
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
        return sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))
    finally:
        c.close()


def end_total(cfg: Config, topics: list[str], partitions: int) -> int:
    c = Consumer({"bootstrap.servers": cfg.bootstrap_servers, "group.id": "watermarks"})
    try:
        return sum(
            c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
            for t in topics
            for p in range(partitions)
        )
    finally:
        c.close()
