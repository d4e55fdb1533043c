"""Fuzzing the shadow worker on the real broker: hostile input is data, never a crash.

Hypothesis draws a batch of a few hundred messages for ``<prefix>.requests``, good and bad
mixed (:class:`support.FuzzBuilder`: random bytes, truncated Avro, unknown fingerprints,
Predictions and Labels on the requests topic, tombstones, empty request ids, null and empty
keys; good requests with unicode ids and feature names, 10,000 features, NaN, inf, 1e308
feature values, event times in microseconds, 0 or next year, which the worker scores like
any other: judging time is the joiner's job). Three candidates score them: the demo's
vectorized ridge model, a scalar model that sums its numeric features (inf and NaN come
out of it), and a classifier whose class names are the request's feature names (unicode
labels, non-finite scores). After the worker went idle:

- every bad message is exactly one dead letter (by source partition and offset), with the
  worker as its stage, a reason, and the message's key and value;
- every good request has exactly one prediction per candidate, in the request's partition,
  keyed by its request_id, with its event time, and with a finite value, a label or an
  error: a model that chokes on NaN or inf gives an error prediction, never a crash.

No shrinking: each example is a run on the broker, and a failing one prints its kinds.

A targeted case beyond the mix, a defect these tests found and that is now fixed: a request
as large as a default producer sends (its dead letter or prediction was larger: dead
letters are now cut to fit, and a request_id too long to echo is a dead letter).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any
from uuid import uuid4

import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, given, note, settings
from support import (
    FuzzBuilder,
    FuzzPool,
    biggest_messages,
    dead_letters,
    fuzz_plans,
    fuzz_pools,
    produce_fuzz,
    read_all,
    recent_base,
)

from streams.config import Config
from streams.kafka import Topics, ensure_topics
from streams.models import Candidate, load_candidate
from streams.schemas import default_codec
from streams.worker import ShadowWorker

N = 300
PARTITIONS = 3
IDLE_EXIT_S = 3.0
RIDGE = "price-ridge@4=streams.demo_models:ridge_candidate"


class SumModel:
    """Scalar regression: the sum of the numeric features (inf, NaN and overflow included)."""

    def predict_one(self, x: dict[str, Any]) -> float:
        return math.fsum(v for v in x.values() if isinstance(v, float))


class ScoresModel:
    """Classifier whose classes are the request's feature names, scored by their values."""

    def predict_one(self, x: dict[str, Any]) -> dict[str, float]:
        return {k: v for k, v in list(x.items())[:5] if isinstance(v, float)}


def candidates() -> list[Candidate]:
    return [
        load_candidate(RIDGE),
        Candidate("fuzz-sum@1", SumModel()),
        Candidate("fuzz-scores@1", ScoresModel()),
    ]


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(pool=fuzz_pools(), plan=fuzz_plans(FuzzBuilder.WORKER_KINDS, N))
def test_hostile_requests_are_dead_letters_and_good_ones_are_scored(
    kafka_bootstrap: str, pool: FuzzPool, plan: list[tuple[str, int]]
) -> None:
    prefix = f"fzw{uuid4().hex[:10]}"
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=PARTITIONS)
    ensure_topics(cfg)
    topics = Topics(prefix)
    msgs = FuzzBuilder("worker", PARTITIONS, pool, recent_base(0)).build(plan)
    kinds = Counter(f"{m.kind}{'/dead' if m.dead else ''}" for m in msgs)
    note(f"prefix {prefix}: {dict(kinds)}")
    print(f"fuzz {prefix}:", dict(sorted(kinds.items())))  # shown with -s
    coords = produce_fuzz(cfg, msgs)
    models = candidates()
    good = {
        m.record["request_id"]: (c, m)
        for c, m in zip(coords, msgs, strict=True)
        if not m.dead and m.record
    }
    dead = sum(m.dead for m in msgs)

    # any exception here is the crash this test exists to catch
    stats = ShadowWorker(cfg, models, batch_size=100).run(idle_exit_s=IDLE_EXIT_S)

    assert (stats.consumed, stats.requests, stats.dead_letters) == (len(msgs), len(good), dead)
    assert stats.predictions == len(good) * len(models)

    # Dead letters: one per bad message, none for a good one, each saying where it came from.
    source = dict(zip(coords, msgs, strict=True))
    letters = dead_letters(cfg)
    at = Counter((d["source_topic"], d["source_partition"], d["source_offset"]) for d in letters)
    assert max(at.values(), default=1) == 1, [k for k, n in at.items() if n > 1][:5]
    bad = {c for c, m in source.items() if m.dead}
    assert set(at) == bad, (
        f"missing: {[source[c].kind for c in bad - set(at)][:10]}, "
        f"unexpected: {[(source[c].kind, c) for c in set(at) - bad][:10]}"
    )
    for d in letters:
        m = source[(d["source_topic"], d["source_partition"], d["source_offset"])]
        assert d["stage"] == "worker"
        assert d["reason"]
        assert (d["key"], d["value"]) == (m.key, m.value)

    # Predictions: exactly one per good request per candidate, each a value, label or error.
    codec = default_codec()
    seen: Counter[tuple[str, str]] = Counter()
    errors: Counter[str] = Counter()
    for key, value, partition in read_all(cfg, topics.predictions):
        p = codec.decode_as("Prediction", value)
        (_, req_partition, _), m = good[p["request_id"]]
        assert m.record is not None
        seen[(p["request_id"], p["model_id"])] += 1
        assert key == p["request_id"].encode()
        assert partition == req_partition
        assert p["event_time"] == m.record["event_time"]
        assert p["role"] == "CANDIDATE"
        if p["error"] is not None:
            errors[p["model_id"]] += 1
            assert p["value"] is None and p["label"] is None
        elif p["value"] is not None:
            assert math.isfinite(p["value"]) and p["label"] is None
        else:
            assert p["label"] is not None
            assert all(math.isfinite(s) for s in p["scores"].values())
        assert p["latency_ms"] is not None and math.isfinite(p["latency_ms"])
        assert p["latency_ms"] >= 0
    want = {(rid, c.model_id) for rid in good for c in models}
    assert set(seen) == want
    assert max(seen.values()) == 1
    assert sum(errors.values()) == stats.errors


@pytest.mark.parametrize(
    "kind",
    ["garbage", "long_request_id"],
)
def test_a_request_as_large_as_kafka_takes_is_a_dead_letter_or_a_prediction(
    kafka_bootstrap: str, prefix: str, kind: str
) -> None:
    """The largest message a default producer sends: the worker's dead letter (key and
    value plus the reason) or its prediction (the request_id twice, plus the model id) is
    larger still."""
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=1)
    ensure_topics(cfg)
    topics = Topics(prefix)
    key, value = biggest_messages()[kind]
    codec = default_codec()
    fine = codec.encode("Request", {"request_id": "fine", "event_time": recent_base(0)})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topics.requests, value, key, partition=0)
    producer.produce(topics.requests, fine, b"fine", partition=0)
    assert producer.flush(30) == 0

    stats = ShadowWorker(cfg, [load_candidate(RIDGE)]).run(idle_exit_s=IDLE_EXIT_S)

    assert stats.consumed == 2
    outputs = len(dead_letters(cfg)) + len(read_all(cfg, topics.predictions))
    assert outputs == 2
