"""The tap against a real broker: what goes in comes out, decodable and co-partitioned."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from streams.config import Config
from streams.kafka import Topics, ensure_topics
from streams.schemas import default_codec
from streams.tap import Tap, TapStats

N = 2_000
PARTITIONS = 6


def java_partition(key: bytes, partitions: int) -> int:
    """Kafka's Java default partitioner for a keyed record: murmur2, positive, modulo.

    Written out here (from ``org.apache.kafka.common.utils.Utils.murmur2``) so the test
    checks the promise itself: the tap places keys where a Java producer would.
    """
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    length = len(key)
    h = (0x9747B28C ^ length) & mask
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(key[i : i + 4], "little")
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
    tail = length % 4
    base = length - tail
    if tail == 3:
        h ^= key[base + 2] << 16
    if tail >= 2:
        h ^= key[base + 1] << 8
    if tail >= 1:
        h ^= key[base]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return (h & 0x7FFFFFFF) % partitions


def test_java_partition_matches_known_values() -> None:
    """murmur2 reference values of Kafka's own ``UtilsTest.testMurmur2``."""
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for key, java_int in cases.items():
        assert java_partition(key, 1 << 31) == java_int & 0x7FFFFFFF


def read_all(bootstrap: str, group: str, topics: list[str], expected: int) -> list[Any]:
    """Every message of ``topics`` from the start, checking the exact count via offsets."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        total = 0
        for topic in topics:
            for p in range(PARTITIONS):
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                total += high - low
        assert total == expected, f"{total} messages in the topics, expected {expected}"
        consumer.subscribe(topics)
        messages: list[Any] = []
        deadline = time.monotonic() + 60
        while len(messages) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=1.0):
                assert msg.error() is None, msg.error()
                messages.append(msg)
        return messages
    finally:
        consumer.close()


def test_tap_round_trip_through_kafka(kafka_bootstrap: str, prefix: str) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=PARTITIONS)
    ensure_topics(cfg)
    topics = Topics(prefix)
    ids = [f"{prefix}-req-{i:05d}" for i in range(N)]

    tap = Tap(cfg, use_case="checkout")
    before = time.time_ns() // 1_000_000
    for i, request_id in enumerate(ids):
        assert tap.record_request(
            request_id,
            {"amount": float(i), "items": 3.0},
            {"country": "FR"},
            context={"tenant": f"t{i % 3}"},
        )
        assert tap.record_prediction(
            request_id, "fraud@3", value=i / N, latency_ms=1.5, event_time_ms=1_700_000_000_000
        )
    after = time.time_ns() // 1_000_000
    assert tap.flush(timeout=60) == 0
    assert tap.stats() == TapStats(accepted=2 * N, sent=2 * N)
    stats = tap.close(timeout=60)
    assert stats == TapStats(accepted=2 * N, sent=2 * N)

    messages = read_all(
        kafka_bootstrap, f"{prefix}-check", [topics.requests, topics.predictions], 2 * N
    )
    codec = default_codec()
    partition_of: dict[str, dict[str, int]] = {topics.requests: {}, topics.predictions: {}}
    seen: dict[str, Counter[str]] = {topics.requests: Counter(), topics.predictions: Counter()}
    for msg in messages:
        name, record = codec.decode(msg.value())
        topic = msg.topic()
        assert name == ("Request" if topic == topics.requests else "Prediction")
        request_id = record["request_id"]
        assert msg.key() == request_id.encode("utf-8")
        assert msg.partition() == java_partition(msg.key(), PARTITIONS)
        partition_of[topic][request_id] = msg.partition()
        seen[topic][request_id] += 1
        i = int(request_id.rsplit("-", 1)[1])
        assert record["use_case"] == "checkout"
        if name == "Request":
            assert before <= record["event_time"] <= after  # "now", read at the call
            assert record["numeric_features"] == {"amount": float(i), "items": 3.0}
            assert record["categorical_features"] == {"country": "FR"}
            assert record["context"] == {"tenant": f"t{i % 3}"}
        else:
            assert record["event_time"] == 1_700_000_000_000
            assert record["role"] == "PRIMARY"
            assert record["model_id"] == "fraud@3"
            assert record["value"] == i / N
            assert record["latency_ms"] == 1.5
            assert record["error"] is None

    for topic in (topics.requests, topics.predictions):
        assert seen[topic] == Counter(ids), f"{topic}: not exactly the ids sent, once each"
    assert partition_of[topics.requests] == partition_of[topics.predictions]
    assert len(set(partition_of[topics.requests].values())) == PARTITIONS  # keys spread


def test_an_open_tap_flushes_at_interpreter_exit(kafka_bootstrap: str, prefix: str) -> None:
    """A service that forgets close() still gets its last records out when it exits."""
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=PARTITIONS)
    ensure_topics(cfg)
    code = (
        "from streams.config import Config\n"
        "from streams.tap import Tap\n"
        f"tap = Tap(Config(bootstrap_servers={kafka_bootstrap!r}, prefix={prefix!r}))\n"
        "for i in range(50):\n"
        "    tap.record_request(f'exit-{i}', {'x': float(i)})\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNDERSTUDY_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    messages = read_all(kafka_bootstrap, f"{prefix}-check", [Topics(prefix).requests], 50)
    codec = default_codec()
    ids = sorted(codec.decode_as("Request", m.value())["request_id"] for m in messages)
    assert ids == sorted(f"exit-{i}" for i in range(50))


FORK_SERVICE = """
import dataclasses, json, os, sys, time
from streams.config import Config
from streams.tap import Tap

tap = Tap(Config(bootstrap_servers=sys.argv[1], prefix=sys.argv[2]))
for i in range(5):
    tap.record_request(f"parent-{i}", {"x": float(i)})
tap.flush(10)
pid = os.fork()  # a pre-forking server: the tap was made before its workers
if pid == 0:
    for i in range(100):
        tap.record_request(f"child-{i}", {"x": float(i)})
        tap.record_prediction(f"child-{i}", "m@1", value=float(i))
    stats = tap.close(10)
    print(json.dumps({"child": dataclasses.asdict(stats), "instance": tap.instance}), flush=True)
    sys.exit(0)  # a normal exit: the inherited clients must not hang it
started = time.monotonic()
while time.monotonic() - started < 60:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    raise SystemExit("the child did not exit within 60 s")
for i in range(5, 10):
    tap.record_request(f"parent-{i}", {"x": float(i)})
stats = tap.close(10)
report = {"parent": dataclasses.asdict(stats), "child_status": status}
print(json.dumps({**report, "instance": tap.instance}))
"""


def test_a_tap_made_before_fork_works_in_the_child(kafka_bootstrap: str, prefix: str) -> None:
    """A pre-forking server (gunicorn, multiprocessing with fork) made its tap before the
    fork: the child's records reach Kafka and its stats account for them, the parent's
    too. Before, the child's records were accepted (True) and never sent nor counted."""
    import json

    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=PARTITIONS)
    ensure_topics(cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNDERSTUDY_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", FORK_SERVICE, kafka_bootstrap, prefix],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    child = next(x for x in lines if "child" in x)
    parent = next(x for x in lines if "parent" in x)
    assert parent["child_status"] == 0
    assert child["child"]["accepted"] == 200 and child["child"]["sent"] == 200, child
    assert parent["parent"]["accepted"] == 10 and parent["parent"]["sent"] == 10, parent
    assert child["instance"] != parent["instance"]  # its own TapStats reports
    t = Topics(prefix)
    codec = default_codec()
    requests = read_all(kafka_bootstrap, f"{prefix}-fork", [t.requests], 110)
    ids = Counter(codec.decode_as("Request", m.value())["request_id"] for m in requests)
    assert set(ids) == {f"parent-{i}" for i in range(10)} | {f"child-{i}" for i in range(100)}
    assert set(ids.values()) == {1}
    predictions = read_all(kafka_bootstrap, f"{prefix}-fork-p", [t.predictions], 100)
    assert len(predictions) == 100
