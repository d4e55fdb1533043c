"""Quiet partitions do not stall windows: snapshots come while traffic flows (issue 6, item 3).

Six partitions, 2 s windows. Worker, joiner and evaluator run as processes; the public
``Tap`` mirrors ~150 requests/s for ~20 s with current event times, on request ids chosen
by their murmur2 partition (the tap's ``murmur2_random`` partitioner), in two shapes:

* all traffic on one partition of six (five partitions never see an event);
* five busy partitions and one silent.

In both, WINDOW snapshots must appear on ``<prefix>.metrics`` while traffic still flows,
each within two windows of its end plus a slack (see :data:`BOUND_MS`), and at the end each
candidate's CUMULATIVE snapshot counts every request sent with the conservation law holding.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from support import stage, terminate, wait_for

from streams import Tap
from streams.config import Config
from streams.demo_models import CANDIDATE_SPECS, PRIMARY_ID, HouseMarket, primary
from streams.kafka import Topics, ensure_topics
from streams.schemas import default_codec

#: judged on timing: run alone after the parallel phase (see the Makefile)
pytestmark = pytest.mark.serial

PARTITIONS = 6
WINDOW_MS = 2000
LATENESS_MS = 500
IDLE_FLUSH_MS = 1000
RATE = 150  # requests/s
TRAFFIC_S = 20.0
CANDIDATES = tuple(spec.split("=", 1)[0] for spec in CANDIDATE_SPECS)

#: How late a window snapshot may be: two windows (the evaluator's grace, what the issue
#: asks), plus the slack the design allows on top of a busy partition's own delay:
#: lateness (the watermark trails the newest event time by it), one idle_flush period
#: (a silent partition's processing-time watermark moves once per idle_flush_ms, so its
#: '*' partial can trail by up to that much), and 1 s for the joiner's transaction commit
#: and the evaluator's read-committed consume, merge and transactional publish.
BOUND_MS = 2 * WINDOW_MS + LATENESS_MS + IDLE_FLUSH_MS + 1000


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``, librdkafka's ``murmur2``)."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
    tail = length - length % 4
    extra = length % 4
    if extra == 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_of(key: str, partitions: int = PARTITIONS) -> int:
    """The partition librdkafka's ``murmur2_random`` partitioner gives a non-empty key."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def test_murmur2_matches_kafkas_reference_values() -> None:
    # from the Java client's UtilsTest.testMurmur2 (signed ints there)
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, signed in cases.items():
        assert murmur2(data) == signed & 0xFFFFFFFF, data


def ids_on(partitions: set[int], n: int, tag: str) -> list[str]:
    """``n`` request ids whose partitions are ``partitions``, spread round-robin over them."""
    pools: dict[int, list[str]] = {p: [] for p in partitions}
    i = 0
    while any(len(pool) < -(-n // len(partitions)) for pool in pools.values()):
        rid = f"{tag}-{i}"
        p = partition_of(rid)
        if p in pools:
            pools[p].append(rid)
        i += 1
    order = sorted(partitions)
    return [pools[order[j % len(order)]][j // len(order)] for j in range(n)]


@dataclass
class Watch:
    """Every snapshot on the metrics topic, read in a thread as the evaluator commits it."""

    cfg: Config
    snaps: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        topic = Topics(self.cfg.prefix).metrics
        decode = default_codec().decode_as
        c = Consumer(
            {
                "bootstrap.servers": self.cfg.bootstrap_servers,
                "group.id": f"watch-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        parts = c.list_topics(topic, timeout=30).topics[topic].partitions
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(parts)])
        try:
            while not self.stop.is_set():
                for m in c.consume(num_messages=500, timeout=0.3):
                    if m.error() is None:
                        snap = decode("MetricSnapshot", m.value())
                        snap["_seen_ms"] = int(time.time() * 1000)
                        self.snaps.append(snap)
        finally:
            c.close()

    def final(self, requests: int) -> dict[str, dict[str, Any]] | None:
        last: dict[str, dict[str, Any]] = {}
        for s in list(self.snaps):
            if s["scope"] == "CUMULATIVE":
                last[s["candidate"]] = s
        done = all(
            c in last
            and last[c]["coverage"]["requests"] >= requests
            and last[c]["coverage"]["pairs"] >= requests
            for c in CANDIDATES
        )
        return last if done else None


def groups_stable(cfg: Config, groups: list[str]) -> bool:
    admin = AdminClient({"bootstrap.servers": cfg.bootstrap_servers})
    for fut in admin.describe_consumer_groups(groups, request_timeout=10).values():
        try:
            d = fut.result()
        except Exception:
            return False
        if d.state.name != "STABLE" or not d.members:
            return False
    return True


def send_traffic(cfg: Config, ids: list[str]) -> tuple[int, int, int]:
    """Mirror ``ids`` at :data:`RATE` through the tap; (sent requests, start ms, end ms)."""
    market = HouseMarket(11)
    samples = market.sample(len(ids))
    tap = Tap(cfg)
    start = time.monotonic()
    start_ms = int(time.time() * 1000)
    try:
        for i, (rid, (numeric, categorical, context)) in enumerate(zip(ids, samples, strict=True)):
            ahead = start + i / RATE - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
            now_ms = int(time.time() * 1000)
            assert tap.record_request(
                rid, numeric, categorical, context=context, event_time_ms=now_ms
            )
            value = float(primary.predict_one({**numeric, **categorical}))
            assert tap.record_prediction(
                rid, PRIMARY_ID, value=value, latency_ms=1.0, event_time_ms=now_ms
            )
        end_ms = int(time.time() * 1000)
    finally:
        stats = tap.close(timeout=30)
    assert stats.dropped == 0 and stats.failed == 0 and stats.encode_errors == 0, stats
    assert stats.sent == 2 * len(ids)
    return len(ids), start_ms, end_ms


@pytest.fixture
def cfg(kafka_bootstrap: str, prefix: str) -> Config:
    c = Config(
        bootstrap_servers=kafka_bootstrap,
        prefix=prefix,
        partitions=PARTITIONS,
        window_ms=WINDOW_MS,
        lateness_ms=LATENESS_MS,
        idle_flush_ms=IDLE_FLUSH_MS,
    )
    ensure_topics(c)
    return c


@pytest.fixture
def pipeline(cfg: Config, tmp_path: Path) -> Iterator[Watch]:
    cand_args = [a for spec in CANDIDATE_SPECS for a in ("--candidate", spec)]
    procs = [
        stage(cfg, "worker", *cand_args, log=tmp_path / "worker.log"),
        stage(cfg, "joiner", log=tmp_path / "joiner.log"),
        stage(cfg, "evaluator", log=tmp_path / "evaluator.log"),
    ]
    watch = Watch(cfg)
    thread = threading.Thread(target=watch.run, daemon=True)
    try:
        groups = [f"{cfg.prefix}.{g}" for g in ("worker", "joiner", "evaluator")]
        wait_for(lambda: groups_stable(cfg, groups), 90, "stages to join their groups", procs)
        thread.start()
        yield watch
        for p in procs:
            assert p.poll() is None, f"a stage exited with {p.returncode}; logs in {tmp_path}"
    finally:
        watch.stop.set()
        for p in reversed(procs):
            terminate(p)
        thread.join(10)


def requests_per_partition(cfg: Config) -> list[int]:
    c = Consumer({"bootstrap.servers": cfg.bootstrap_servers, "group.id": "watermarks"})
    try:
        topic = Topics(cfg.prefix).requests
        return [
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(PARTITIONS)
        ]
    finally:
        c.close()


@pytest.mark.parametrize(
    ("busy", "shape"),
    [({2}, "one partition of six"), ({0, 1, 2, 3, 5}, "five busy, one silent")],
    ids=["one-of-six", "five-busy-one-silent"],
)
def test_windows_close_while_traffic_flows(
    cfg: Config, pipeline: Watch, busy: set[int], shape: str
) -> None:
    ids = ids_on(busy, int(RATE * TRAFFIC_S), tag=uuid.uuid4().hex[:6])
    sent, start_ms, end_ms = send_traffic(cfg, ids)

    # the traffic went where it was meant to: the partitioner is the one computed here
    counts = requests_per_partition(cfg)
    assert [p for p in range(PARTITIONS) if counts[p]] == sorted(busy), counts
    assert sum(counts) == sent

    during = [s for s in list(pipeline.snaps) if s["scope"] == "WINDOW" and s["_seen_ms"] < end_ms]
    # windows (epoch-aligned) that hold traffic from their start and were due, by the
    # bound, before the traffic stopped: each must have been published while it flowed
    first_end = -(-start_ms // WINDOW_MS) * WINDOW_MS + WINDOW_MS
    due = set(range(first_end, end_ms - BOUND_MS + 1, WINDOW_MS))
    assert len(due) >= 5, (start_ms, end_ms)
    for cand in CANDIDATES:
        seen = {s["window_end"] for s in during if s["candidate"] == cand}
        assert due <= seen, (shape, cand, sorted(due - seen), sorted(seen))

    # and typically well within the bound: closed because every partition's progress passed
    # the end (the silent ones through idleness), not by the evaluator's grace period, which
    # alone would put every delay past 2 windows + lateness (a variant of this test with
    # idle_flush_ms = 60 s showed it)
    delays = sorted(s["emitted_at"] - s["window_end"] for s in during)
    assert delays[len(delays) // 2] < 2 * WINDOW_MS, delays
    print(
        f"{shape}: {len(during)} window snapshots during traffic, delay p50 "
        f"{delays[len(delays) // 2]} ms, max {delays[-1]} ms"
    )

    try:
        final = wait_for(lambda: pipeline.final(sent), 90, f"final cumulatives ({shape})")
    except AssertionError as exc:
        last = {s["candidate"]: s for s in list(pipeline.snaps) if s["scope"] == "CUMULATIVE"}
        got = {c: (s["coverage"], s["conservation"]) for c, s in last.items()}
        raise AssertionError(f"{exc}; last cumulatives: {got}") from None

    windows = [s for s in list(pipeline.snaps) if s["scope"] == "WINDOW"]
    # each window that ended while traffic flowed came within two windows (+ slack) of its end
    late = [
        (s["candidate"], s["window_end"], s["emitted_at"] - s["window_end"])
        for s in windows
        if s["window_end"] <= end_ms and s["emitted_at"] - s["window_end"] > BOUND_MS
    ]
    assert not late, late

    # at the end: every request counted once per candidate, and the law holds
    for cand in CANDIDATES:
        snap = final[cand]
        law = snap["conservation"]
        assert snap["coverage"]["requests"] == sent, (cand, snap["coverage"])
        assert snap["coverage"]["pairs"] == sent, (cand, snap["coverage"])
        assert law is not None and law["holds"], (cand, law)
        assert law["requests"] == sent, (cand, law)
        assert sum(law["terms"].values()) == sent, (cand, law)
