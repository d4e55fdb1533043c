"""The shadow worker on a real broker: one prediction per request per candidate, in the
request's partition, errors as data, garbage dead-lettered, offsets committed only after
delivery and respected on restart."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from support import stage

from streams.config import Config
from streams.errors import BrokerError
from streams.gctune import THRESHOLDS
from streams.kafka import Topics, ensure_topics
from streams.models import load_candidate
from streams.schemas import default_codec
from streams.simulation import USE_CASE, run_service
from streams.worker import ShadowWorker, WorkerStats, run_worker

RIDGE = "price-ridge@4=streams.demo_models:ridge_candidate"
FLAKY = "price-flaky@1=streams.demo_models:flaky_candidate"
IDLE_S = 3.0


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def read_all(bootstrap: str, topic: str, timeout: float = 30.0) -> list[Record]:
    """Every committed message of ``topic`` up to its current end, all partitions."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # the end of a transactional log is a commit marker, never delivered
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends: dict[int, int] = {}
        assignment = []
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
                assignment.append(TopicPartition(topic, p, low))
        consumer.assign(assignment)
        out: list[Record] = []
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(done) < len(ends):
            assert time.monotonic() < deadline, f"timed out reading {topic}"
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None
                err = msg.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    if offset >= ends[partition]:
                        done.add(partition)
                    continue
                assert err is None, err
                out.append(Record(partition, offset, msg.key(), msg.value()))
                if offset + 1 >= ends[partition]:
                    done.add(partition)
        return out
    finally:
        consumer.close()


def committed_vs_end(bootstrap: str, group: str, topic: str) -> tuple[list[int], list[int]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        ends = [
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        ]
        return [tp.offset for tp in committed], ends
    finally:
        consumer.close()


def candidate_predictions(bootstrap: str, topic: str) -> list[tuple[Record, dict]]:
    codec = default_codec()
    out = []
    for rec in read_all(bootstrap, topic):
        pred = codec.decode_as("Prediction", rec.value)
        if pred["role"] == "CANDIDATE":
            out.append((rec, pred))
    return out


def test_worker_scores_every_request_once_per_candidate(kafka_bootstrap: str, prefix: str) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=4)
    topics = Topics(prefix)
    ensure_topics(cfg)
    codec = default_codec()

    service = run_service(cfg, events=1000, rate=0, seed=3)
    assert (service.requests, service.sent, service.dropped, service.failed) == (1000, 2000, 0, 0)

    # Three messages the worker cannot use, in three partitions.
    wrong_type = codec.encode(
        "Prediction",
        {"request_id": "x", "event_time": 0, "model_id": "m@1", "role": "PRIMARY"},
    )
    valid_request = codec.encode("Request", {"request_id": "cut", "event_time": 1})
    garbage = [
        (0, b"g-0", b"not avro at all"),
        (1, b"g-1", wrong_type),
        (2, b"g-2", valid_request[:11]),  # header intact, body cut short
    ]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition, key, value in garbage:
        producer.produce(topics.requests, value, key, partition=partition)
    assert producer.flush(10) == 0

    candidates = [load_candidate(RIDGE), load_candidate(FLAKY)]
    batches: list[int] = []
    thresholds: set[tuple[int, ...]] = set()

    cpus: list[int] = []  # how many CPUs the poll thread may run on, at each batch

    def on_batch(size: int) -> None:
        batches.append(size)
        thresholds.add(gc.get_threshold())
        cpus.append(len(os.sched_getaffinity(0)))

    before, allowed = gc.get_threshold(), os.sched_getaffinity(0)
    stats = run_worker(cfg, candidates, batch_size=200, idle_exit_s=IDLE_S, on_batch=on_batch)
    assert stats.consumed == 1003 == sum(batches)
    # fewer collections while it ran (streams/gctune.py); the host's thresholds back after
    assert thresholds == {THRESHOLDS} != {before}
    assert gc.get_threshold() == before
    # its Python threads on one CPU (streams/cpuhome.py; lifted for a batch every 2 s); the
    # caller's thread free again after
    if len(allowed) >= 2:
        assert 1 in cpus
    assert os.sched_getaffinity(0) == allowed
    assert stats.requests == 1000
    assert stats.dead_letters == 3
    assert stats.predictions == 2000
    assert stats.errors > 0

    # Where each request is, from the requests topic itself.
    requests: dict[str, tuple[int, dict]] = {}
    garbage_at: dict[tuple[int, int], Record] = {}
    for rec in read_all(kafka_bootstrap, topics.requests):
        if rec.key in {key for _, key, _ in garbage}:
            garbage_at[(rec.partition, rec.offset)] = rec
        else:
            req = codec.decode_as("Request", rec.value)
            requests[req["request_id"]] = (rec.partition, req)
    assert len(requests) == 1000 and len(garbage_at) == 3

    preds = candidate_predictions(kafka_bootstrap, topics.predictions)
    per_model = Counter(p["model_id"] for _, p in preds)
    assert per_model == {"price-ridge@4": 1000, "price-flaky@1": 1000}
    errors = Counter()
    for model_id in per_model:
        mine = [(rec, p) for rec, p in preds if p["model_id"] == model_id]
        assert {p["request_id"] for _, p in mine} == set(requests)  # distinct, all of them
        for rec, p in mine:
            partition, req = requests[p["request_id"]]
            assert rec.partition == partition, "prediction not co-partitioned with its request"
            assert rec.key == p["request_id"].encode()
            assert p["event_time"] == req["event_time"]
            assert p["use_case"] == USE_CASE
            assert p["latency_ms"] is not None and p["latency_ms"] >= 0
            if p["error"] is None:
                assert p["value"] is not None and p["label"] is None
            else:
                assert p["value"] is None
                assert p["error"].startswith("RuntimeError: feature store timeout")
                errors[model_id] += 1
    assert errors["price-ridge@4"] == 0
    assert 0 < errors["price-flaky@1"] < 50
    assert stats.errors == errors["price-flaky@1"]

    dead = [
        codec.decode_as("DeadLetter", rec.value)
        for rec in read_all(kafka_bootstrap, topics.deadletter)
    ]
    assert len(dead) == 3
    for letter in dead:
        assert letter["stage"] == "worker"
        assert letter["source_topic"] == topics.requests
        source = garbage_at[(letter["source_partition"], letter["source_offset"])]
        assert (letter["key"], letter["value"]) == (source.key, source.value)
    reasons = {letter["key"]: letter["reason"] for letter in dead}
    assert "missing C3 01 header" in reasons[b"g-0"]
    assert "expected a Request message, got Prediction" in reasons[b"g-1"]
    assert "cannot decode Request body" in reasons[b"g-2"]

    committed, ends = committed_vs_end(kafka_bootstrap, f"{prefix}.worker", topics.requests)
    assert committed == ends


def test_restarted_worker_rescores_nothing(kafka_bootstrap: str, prefix: str) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=3)
    topics = Topics(prefix)
    ensure_topics(cfg)
    candidates = [load_candidate(RIDGE)]
    group = f"{prefix}.shadow"
    run_service(cfg, events=300, rate=0, seed=1)

    # First run: stopped cleanly (not idle) once everything was consumed.
    stop = threading.Event()
    seen: list[int] = []

    def on_batch(n: int) -> None:
        seen.append(n)
        if sum(seen) >= 300:
            stop.set()

    first = run_worker(cfg, candidates, group_id=group, batch_size=64, stop=stop, on_batch=on_batch)
    assert (first.consumed, first.predictions) == (300, 300)

    # Restarted: its committed offsets are the end offsets, so it scores nothing.
    second = run_worker(cfg, candidates, group_id=group, idle_exit_s=IDLE_S)
    assert replace(second, candidates={}) == WorkerStats()  # counts only, not call costs

    # New traffic after the restart: only that is scored.
    run_service(cfg, events=100, rate=0, seed=2)
    third = run_worker(cfg, candidates, group_id=group, idle_exit_s=IDLE_S)
    assert (third.consumed, third.predictions) == (100, 100)

    preds = candidate_predictions(kafka_bootstrap, topics.predictions)
    assert len(preds) == 400
    assert len({p["request_id"] for _, p in preds}) == 400
    committed, ends = committed_vs_end(kafka_bootstrap, group, topics.requests)
    assert committed == ends


def test_stop_event_ends_an_idle_worker(kafka_bootstrap: str, prefix: str) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    ensure_topics(cfg)
    stop = threading.Event()
    result: list[WorkerStats] = []
    thread = threading.Thread(
        target=lambda: result.append(run_worker(cfg, [load_candidate(RIDGE)], stop=stop))
    )
    thread.start()
    time.sleep(1.0)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert [replace(r, candidates={}) for r in result] == [WorkerStats()]


def test_two_workers_share_the_partitions(kafka_bootstrap: str, prefix: str) -> None:
    """A second worker joining mid-stream triggers a rebalance; nothing is lost.

    The service runs for 6 s because the first worker only learns of the rebalance at its
    next heartbeat (``heartbeat.interval.ms``, 3 s by default).
    """
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=4)
    topics = Topics(prefix)
    ensure_topics(cfg)
    candidates = [load_candidate(RIDGE)]
    results: dict[str, WorkerStats] = {}

    def work(name: str) -> None:
        results[name] = run_worker(cfg, candidates, batch_size=50, idle_exit_s=IDLE_S)

    service = threading.Thread(
        target=run_service, args=(cfg,), kwargs={"events": 6000, "rate": 1000}
    )
    first = threading.Thread(target=work, args=("a",))
    second = threading.Thread(target=work, args=("b",))
    first.start()
    service.start()
    time.sleep(1.0)
    second.start()
    for thread in (service, first, second):
        thread.join(60)
        assert not thread.is_alive()

    assert results["a"].consumed > 0 and results["b"].consumed > 0
    preds = candidate_predictions(kafka_bootstrap, topics.predictions)
    ids = {p["request_id"] for _, p in preds}
    assert ids == {f"7-{i}" for i in range(6000)}  # at least once each
    # and only once: the first worker's revoke settled the batch it had produced last
    # (delivered, its offsets committed) before the second took its partitions over
    assert len(preds) == 6000
    assert results["a"].consumed + results["b"].consumed == len(preds)
    committed, ends = committed_vs_end(kafka_bootstrap, f"{prefix}.worker", topics.requests)
    assert committed == ends


class FakeMessage:
    """What a failed delivery report carries: enough to produce the message again."""

    def __init__(
        self, topic: str, partition: int, key: bytes | None, value: bytes, stamp: int = 0
    ) -> None:
        self._coords = (topic, partition, key, value)
        self._stamp = stamp

    def timestamp(self) -> tuple[int, int]:
        from confluent_kafka import TIMESTAMP_CREATE_TIME, TIMESTAMP_NOT_AVAILABLE

        kind = TIMESTAMP_CREATE_TIME if self._stamp else TIMESTAMP_NOT_AVAILABLE
        return kind, self._stamp

    def topic(self) -> str:
        return self._coords[0]

    def partition(self) -> int:
        return self._coords[1]

    def key(self) -> bytes | None:
        return self._coords[2]

    def value(self) -> bytes:
        return self._coords[3]


class LossyProducer:
    """A real producer whose first ``fail`` prediction messages time out (never sent)."""

    def __init__(self, inner: Producer, topic: str, fail: int) -> None:
        self.inner = inner
        self.topic = topic
        self.fail = fail
        self.reports: list[tuple[Callable[..., None], FakeMessage]] = []

    def produce(  # confluent-kafka's signature: the worker passes its arguments by position
        self,
        topic: str,
        value: bytes,
        key: Any,
        partition: int = -1,
        callback: Any = None,
        on_delivery: Any = None,
        timestamp: int = 0,
    ) -> None:
        on_delivery = callback or on_delivery
        if topic == self.topic and self.fail > 0:
            self.fail -= 1
            failed = FakeMessage(topic, partition, key, value, timestamp)
            self.reports.append((on_delivery, failed))
            return
        self.inner.produce(
            topic, value, key, partition=partition, on_delivery=on_delivery, timestamp=timestamp
        )

    def flush(self, timeout: float) -> int:
        left = self.inner.flush(timeout)
        reports, self.reports = self.reports, []
        for callback, msg in reports:
            callback(KafkaError(KafkaError._MSG_TIMED_OUT), msg)
        return left

    def poll(self, timeout: float) -> int:
        return self.inner.poll(timeout)


def lossy_worker(cfg: Config, fail: int) -> ShadowWorker:
    worker = ShadowWorker(cfg, [load_candidate(RIDGE)], batch_size=500)
    real_open = worker._open

    def open_lossy() -> None:
        real_open()
        worker._producer = LossyProducer(worker._producer, Topics(cfg.prefix).predictions, fail)

    worker._open = open_lossy  # type: ignore[method-assign]
    return worker


def test_failed_deliveries_are_retried_before_commit(kafka_bootstrap: str, prefix: str) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    topics = Topics(prefix)
    ensure_topics(cfg)
    run_service(cfg, events=200, rate=0)

    stats = lossy_worker(cfg, fail=5).run(idle_exit_s=IDLE_S)
    assert stats.redelivered == 5
    preds = candidate_predictions(kafka_bootstrap, topics.predictions)
    assert sorted(p["request_id"] for _, p in preds) == sorted(f"7-{i}" for i in range(200))
    committed, ends = committed_vs_end(kafka_bootstrap, f"{prefix}.worker", topics.requests)
    assert committed == ends


def test_undeliverable_batch_raises_without_commit(kafka_bootstrap: str, prefix: str) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    topics = Topics(prefix)
    ensure_topics(cfg)
    run_service(cfg, events=200, rate=0)

    with pytest.raises(BrokerError, match="not committed"):
        lossy_worker(cfg, fail=10**9).run(idle_exit_s=IDLE_S)
    committed, _ = committed_vs_end(kafka_bootstrap, f"{prefix}.worker", topics.requests)
    assert all(offset < 0 for offset in committed)  # nothing committed

    # At-least-once: a healthy restart scores everything.
    stats = run_worker(cfg, [load_candidate(RIDGE)], idle_exit_s=IDLE_S)
    assert stats.consumed == 200


# ---------------------------------------------------------------------------------------
# Keys, stopping and fatal errors


@pytest.mark.parametrize("exactly_once", [False, True])
def test_null_key_empty_key_and_empty_request_id_are_dead_letters(
    kafka_bootstrap: str, prefix: str, exactly_once: bool
) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    topics = Topics(prefix)
    ensure_topics(cfg)
    codec = default_codec()
    request = codec.encode("Request", {"request_id": "r-1", "event_time": 1})
    nameless = codec.encode("Request", {"request_id": "", "event_time": 1})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topics.requests, request, None, partition=0)  # null key
    producer.produce(topics.requests, request, b"", partition=1)  # empty key
    producer.produce(topics.requests, nameless, b"x", partition=0)  # empty request_id
    producer.produce(topics.requests, request, b"r-1", partition=1)  # fine
    assert producer.flush(10) == 0

    stats = run_worker(cfg, [load_candidate(RIDGE)], idle_exit_s=IDLE_S, exactly_once=exactly_once)
    assert (stats.consumed, stats.requests, stats.dead_letters) == (4, 1, 3)
    reasons = sorted(
        codec.decode_as("DeadLetter", rec.value)["reason"]
        for rec in read_all(kafka_bootstrap, topics.deadletter)
    )
    assert reasons == [
        "request has a null or empty key (it must be the request_id)",
        "request has a null or empty key (it must be the request_id)",
        "request has an empty request_id",
    ]
    assert [p["request_id"] for _, p in candidate_predictions(kafka_bootstrap, topics.predictions)]
    assert len(candidate_predictions(kafka_bootstrap, topics.predictions)) == 1


@pytest.mark.serial  # a 10 s deadline
@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_sigterm_stops_the_worker_within_10_s_with_its_work_committed(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, mode: str
) -> None:
    """SIGTERM finishes the batch, delivers, commits and leaves the group: the process
    exits 0 at once, the group is empty, and a restart scores exactly what was left."""
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    topics = Topics(prefix)
    ensure_topics(cfg)
    extra = ["--exactly-once"] if mode == "exactly-once" else []
    proc = stage(cfg, "worker", "--candidate", RIDGE, *extra, log=tmp_path / "worker.log")
    try:
        run_service(cfg, events=300, rate=0)
        deadline = time.monotonic() + 60
        while len(candidate_predictions(kafka_bootstrap, topics.predictions)) < 300:
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
            time.sleep(0.5)
        run_service(cfg, events=2000, rate=0, seed=8)  # work in hand when the signal comes
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    log = (tmp_path / "worker.log").read_text()
    assert rc == 0, log
    assert took < 10.0, log
    assert "Traceback" not in log
    # it left the group, rather than holding its partitions until its session expires
    group = f"{prefix}.worker"
    client = AdminClient({"bootstrap.servers": kafka_bootstrap})
    described = client.describe_consumer_groups([group])[group].result(10)
    assert described.members == [], described.members
    # What it consumed it delivered and committed: a restart scores exactly the rest.
    committed, ends = committed_vs_end(kafka_bootstrap, group, topics.requests)
    done = sum(max(c, 0) for c in committed)
    scored = len(candidate_predictions(kafka_bootstrap, topics.predictions))
    assert done == scored
    rest = run_worker(
        cfg, [load_candidate(RIDGE)], idle_exit_s=IDLE_S, exactly_once=mode == "exactly-once"
    )
    assert rest.consumed == sum(ends) - done
    preds = candidate_predictions(kafka_bootstrap, topics.predictions)
    assert len(preds) == len({p["request_id"] for _, p in preds}) == 2300


class Unacknowledged:
    """A producer whose messages the broker never acknowledges (Kafka away)."""

    def __init__(self) -> None:
        self.pending = 0
        self.purged = False

    def produce(self, topic: str, *_: Any, **__: Any) -> None:
        self.pending += 1

    def flush(self, timeout: float) -> int:
        time.sleep(timeout)
        return self.pending

    def poll(self, timeout: float) -> int:
        return 0

    def purge(self, **_: Any) -> None:
        self.purged = True
        self.pending = 0


@pytest.mark.serial  # a 10 s deadline
def test_stop_while_kafka_does_not_acknowledge_ends_within_10_s_without_commit(
    kafka_bootstrap: str, prefix: str
) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    topics = Topics(prefix)
    ensure_topics(cfg)
    run_service(cfg, events=100, rate=0)
    worker = ShadowWorker(cfg, [load_candidate(RIDGE)])
    real_open = worker._open
    blackhole = Unacknowledged()

    def open_blackhole() -> None:
        real_open()
        worker._producer.flush(5)
        worker._producer = blackhole

    worker._open = open_blackhole  # type: ignore[method-assign]
    stop = threading.Event()
    result: list[WorkerStats] = []
    thread = threading.Thread(target=lambda: result.append(worker.run(stop=stop)))
    thread.start()
    deadline = time.monotonic() + 30
    while blackhole.pending == 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    started = time.monotonic()
    stop.set()
    thread.join(15)
    assert not thread.is_alive()
    assert time.monotonic() - started < 10.0
    assert blackhole.purged
    assert result and result[0].consumed > 0
    committed, _ = committed_vs_end(kafka_bootstrap, f"{prefix}.worker", topics.requests)
    assert all(offset < 0 for offset in committed)  # at-least-once: scored again later


def test_fatal_client_error_ends_the_worker_with_a_clear_error(
    kafka_bootstrap: str, prefix: str
) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    ensure_topics(cfg)
    worker = ShadowWorker(cfg, [load_candidate(RIDGE)])
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            worker.run(stop=stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(2.0)
    # What librdkafka's error_cb reports when, say, the idempotent producer is fenced.
    worker._on_client_error(KafkaError(KafkaError._FENCED, "producer fenced", fatal=True))
    thread.join(10)
    stop.set()
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], BrokerError)
    assert "fatal Kafka client error" in str(errors[0])
    assert "producer fenced" in str(errors[0])


def test_a_backlog_older_than_max_age_still_joins(kafka_bootstrap: str, prefix: str) -> None:
    """A worker that catches up on requests 30 minutes old (after an outage, say) stamps
    each answer with its request's Kafka timestamp, so the joiner judges the answer's event
    time as it judged the request's, and pairs them: with the produce time, every answer
    would be 30 min behind its message (max_age_ms is 10 min) and become a dead letter."""
    from support import fold_partials

    from streams.joiner import run_joiner

    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    topics = Topics(prefix)
    ensure_topics(cfg)
    codec = default_codec()
    n = 200
    then = int(time.time() * 1000) - 30 * 60_000
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(n):
        rid = f"old-{i}"
        t = then + 10 * i
        common = {"request_id": rid, "event_time": t, "use_case": USE_CASE}
        request = codec.encode("Request", {**common, "numeric_features": {"sqft": 1000.0 + i}})
        primary = codec.encode(
            "Prediction",
            {**common, "model_id": "price@1", "role": "PRIMARY", "value": 1.0, "latency_ms": 1.0},
        )
        # the service's tap stamped them when they happened
        producer.produce(topics.requests, request, rid.encode(), timestamp=t)
        producer.produce(topics.predictions, primary, rid.encode(), timestamp=t)
    assert producer.flush(10) == 0

    stats = run_worker(cfg, [load_candidate(RIDGE)], batch_size=64, idle_exit_s=IDLE_S)
    assert stats.predictions == n

    stamp_of = {}
    for topic in (topics.requests, topics.predictions):
        consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": uuid4().hex})
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        seen = 0
        deadline = time.monotonic() + 30
        want = n if topic == topics.requests else 2 * n
        while seen < want and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.5):
                assert msg.error() is None
                seen += 1
                rec = codec.decode(msg.value())[1]
                role = rec.get("role", "REQUEST")
                stamp_of[(rec["request_id"], role)] = msg.timestamp()[1]
        consumer.close()
        assert seen == want
    for i in range(n):
        rid = f"old-{i}"
        assert stamp_of[(rid, "CANDIDATE")] == stamp_of[(rid, "REQUEST")] == then + 10 * i

    joined = run_joiner(cfg, idle_exit_s=IDLE_S)
    assert joined.dead_letters == 0
    totals = fold_partials(cfg)
    assert totals["price-ridge@4"].to_record()["coverage"]["pairs"] == n


# ---------------------------------------------------------------------------------------
# Isolation (issue 9): each candidate on its own, within a budget


SLOW_AND_RAISING = """
import time

class SlowFirstBatch:
    '''Sleeps past the budget in its first batch call (after the warm-up call).'''

    def __init__(self):
        self.calls = 0

    def predict_many(self, xs):
        self.calls += 1
        if self.calls == 2:  # call 1 is the warm-up on the first request
            time.sleep(4.0)
        return [1.0] * len(xs)

class RaisesOnSomeBatches:
    '''Raises on every 3rd call (a batch, or a batch of one when a sample is timed).'''

    def __init__(self):
        self.calls = 0

    def predict_many(self, xs):
        self.calls += 1
        if self.calls % 3 == 0:
            raise RuntimeError(f"model server restarting (call {self.calls})")
        return [2.0] * len(xs)

slow = SlowFirstBatch()
raising = RaisesOnSomeBatches()
"""


class Arrivals:
    """A reader of the predictions topic that notes when each prediction arrives."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.codec = default_codec()
        self.seen: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"arrivals-{uuid4().hex}",
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,  # arrival times to ~10 ms, not librdkafka's 500
                "enable.auto.commit": False,
            }
        )
        self._consumer.subscribe([topic])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self._consumer.consume(num_messages=1000, timeout=0.05):
                if msg.error() is None:
                    pred = self.codec.decode_as("Prediction", msg.value())
                    self.seen.append((time.monotonic(), pred))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()


def test_a_candidate_past_its_budget_does_not_delay_the_other(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    topics = Topics(prefix)
    ensure_topics(cfg)
    models = tmp_path / "isolation_models.py"
    models.write_text(SLOW_AND_RAISING)
    candidates = [load_candidate(f"slow@1={models}:slow"), load_candidate(RIDGE)]
    run_service(cfg, events=400, rate=0, seed=11)
    arrivals = Arrivals(kafka_bootstrap, topics.predictions)
    time.sleep(1.0)  # the reader has joined its group before the first prediction

    worker = ShadowWorker(cfg, candidates, batch_size=500, budget_s=1.5)
    batches: list[tuple[float, list[str]]] = []
    score = worker._score

    def timed_score(
        requests: list[dict], partitions: list[int], stamps: list[int], known: Any
    ) -> tuple[list[dict], frozenset[str]]:
        batches.append((time.monotonic(), [r["request_id"] for r in requests]))
        return score(requests, partitions, stamps, known)

    worker._score = timed_score  # type: ignore[method-assign]
    try:
        stats = worker.run(idle_exit_s=IDLE_S)
        time.sleep(1.0)
    finally:
        arrivals.close()

    assert stats.requests == stats.consumed == 400
    assert stats.predictions == 800
    first_start, first_ids = batches[0]
    first = set(first_ids)
    fast = [(t, p) for t, p in arrivals.seen if p["model_id"] == "price-ridge@4"]
    slow = [(t, p) for t, p in arrivals.seen if p["model_id"] == "slow@1"]
    assert len({p["request_id"] for _, p in fast}) == 400
    assert all(p["error"] is None for _, p in fast)
    # the fast candidate's answers for the first batch were published (read back by another
    # consumer) before the slow one's 1.5 s budget for that batch ran out
    fast_first = [t - first_start for t, p in fast if p["request_id"] in first]
    slow_first = [(t - first_start, p) for t, p in slow if p["request_id"] in first]
    assert len(fast_first) == len(first) == len(slow_first)
    assert max(fast_first) < 1.5, max(fast_first)
    assert min(t for t, _ in slow_first) >= 1.5
    assert {p["error"] for _, p in slow_first} == {"timeout after 1500 ms"}
    assert {p["latency_ms"] for _, p in slow_first} == {1500.0}
    # the hung call kept its lane busy: batches of the next 2.5 s timed out at once
    later = [p for _, p in slow if p["request_id"] not in first]
    assert all(
        p["error"] is None or p["error"].startswith("timeout: busy with a call past its 1500 ms")
        for p in later
    )
    assert stats.candidates["slow@1"]["timed_out"] == 1
    assert stats.timeouts == sum(1 for _, p in slow if p["error"] is not None)
    committed, ends = committed_vs_end(kafka_bootstrap, f"{prefix}.worker", topics.requests)
    assert committed == ends


def test_a_raising_candidate_leaves_the_others_predictions_intact(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    topics = Topics(prefix)
    ensure_topics(cfg)
    models = tmp_path / "isolation_models.py"
    models.write_text(SLOW_AND_RAISING)
    candidates = [load_candidate(f"raising@1={models}:raising"), load_candidate(RIDGE)]
    run_service(cfg, events=1000, rate=0, seed=12)
    stats = run_worker(cfg, candidates, batch_size=50, idle_exit_s=IDLE_S)
    assert stats.requests == 1000
    preds = candidate_predictions(kafka_bootstrap, topics.predictions)
    ridge = [p for _, p in preds if p["model_id"] == "price-ridge@4"]
    raising = [p for _, p in preds if p["model_id"] == "raising@1"]
    assert len({p["request_id"] for p in ridge}) == len(ridge) == 1000
    assert all(p["error"] is None and p["value"] is not None for p in ridge)
    assert len({p["request_id"] for p in raising}) == len(raising) == 1000
    failed = [p for p in raising if p["error"] is not None]
    assert failed, "the raising candidate never raised"
    assert all(p["error"].startswith("RuntimeError: model server restarting") for p in failed)
    assert all(p["value"] == 2.0 for p in raising if p["error"] is None)
    assert stats.errors == len(failed) and stats.timeouts == 0
    committed, ends = committed_vs_end(kafka_bootstrap, f"{prefix}.worker", topics.requests)
    assert committed == ends


def test_a_joblib_sklearn_model_named_on_the_command_line_shadows_the_demo(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    import joblib
    import numpy as np
    from sklearn.linear_model import Ridge

    from streams.demo_models import NUMERIC

    rng = np.random.default_rng(5)
    X = rng.uniform(0.0, 5.0, size=(500, len(NUMERIC)))
    model = Ridge(alpha=0.5).fit(X, X @ np.arange(1.0, len(NUMERIC) + 1) + 40.0)
    path = tmp_path / "price-sk.joblib"
    joblib.dump(model, path)
    order = ",".join(NUMERIC)

    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=3)
    topics = Topics(prefix)
    ensure_topics(cfg)
    run_service(cfg, events=600, rate=0, seed=13)
    log = tmp_path / "worker.log"
    proc = stage(
        cfg,
        "worker",
        "--candidate",
        f"price-sk@1={path}?features={order}",
        "--idle-exit",
        "3",
        log=log,
    )
    try:
        assert proc.wait(120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    codec = default_codec()
    requests = {}
    for rec in read_all(kafka_bootstrap, topics.requests):
        req = codec.decode_as("Request", rec.value)
        requests[req["request_id"]] = req
    preds = [p for _, p in candidate_predictions(kafka_bootstrap, topics.predictions)]
    assert len(requests) == 600 and len(preds) == 600
    assert {p["model_id"] for p in preds} == {"price-sk@1"}
    assert all(p["error"] is None for p in preds)
    ids = [p["request_id"] for p in preds]
    rows = np.array([[requests[i]["numeric_features"][n] for n in NUMERIC] for i in ids])
    assert [p["value"] for p in preds] == model.predict(rows).tolist()
    assert all(p["latency_ms"] > 0 for p in preds)
