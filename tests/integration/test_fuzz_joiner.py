"""Fuzzing the joiner on the real broker: hostile input is data, never a crash.

Hypothesis draws a batch of a few hundred messages for ``<prefix>.requests`` and
``<prefix>.predictions``, good and bad mixed (:class:`support.FuzzBuilder`: random bytes,
truncated Avro, unknown fingerprints, events of the wrong type, tombstones, empty request
ids and model ids, null and empty keys, event times in microseconds, 0, next year and the
long extremes; good requests with unicode ids and feature names, 10,000 features, NaN,
inf and 1e308 values and latencies, negative latencies). The joiner runs to the end of the
input, and then:

- every bad message is exactly one dead letter (by source topic, partition and offset),
  with the joiner as its stage, a reason, and the message's key and value;
- every good event is counted exactly in the partials' coverage: requests, pairs,
  predictions, errors, dropped latencies, invalid pairs, latency sketch counts;
- the '*' partials' conservation ledger holds on every partition and counts the requests
  topic's dead letters.

No shrinking: each example is a run on the broker, and a failing one prints its kinds.

Targeted cases beyond the mix, each a defect these tests found and that is now fixed: a
message as large as a default producer sends (its dead letter was larger: dead letters are
now cut to fit); a partition that only ever saw bad messages (its dead letters never
reached a partial: they are now placed once it idles); many long model ids (the ledger
outgrew a Kafka message: ids and candidates per partition are now bounded).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any
from uuid import uuid4

import numpy as np
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, given, note, settings
from support import (
    FUZZ_CANDIDATE,
    FUZZ_PRIMARY,
    YEAR_MS,
    FuzzBuilder,
    FuzzMessage,
    FuzzPool,
    biggest_messages,
    dead_letters,
    fold_partials,
    fuzz_plans,
    fuzz_pools,
    latest_ledgers,
    produce_fuzz,
    recent_base,
    send,
)

from streams.config import Config
from streams.join.ledger import TERMS
from streams.joiner import Joiner
from streams.kafka import Topics, ensure_topics
from streams.metrics.partial import SHARED
from streams.schemas import default_codec

N = 300
PARTITIONS = 3
IDLE_EXIT_S = 4.0


def run_joiner(cfg: Config) -> Any:
    return Joiner(cfg).run(idle_exit_s=IDLE_EXIT_S)


def expected(msgs: list[FuzzMessage]) -> dict[str, Any]:
    """The coverage a correct joiner reports for the good messages of a batch."""
    good = [m for m in msgs if not m.dead]
    requests = [m for m in good if m.stream == "requests"]
    answers = [m for m in good if m.stream == "predictions"]
    by_group: dict[int, dict[str, dict[str, Any]]] = {}
    for m in answers:
        assert m.record is not None
        role = "prim" if m.record["role"] == "PRIMARY" else "cand"
        by_group.setdefault(m.group, {})[role] = m.record
    out: Counter[str] = Counter()
    for side in ("prim", "cand"):
        recs = [
            m.record
            for m in answers
            if m.record and (m.record["role"] == "PRIMARY") == (side == "prim")
        ]
        out[f"{side}_predictions"] = len(recs)
        out[f"{side}_errors"] = sum(r["error"] is not None for r in recs)
        lats = [r["latency_ms"] for r in recs if r["latency_ms"] is not None]
        kept = sum(math.isfinite(x) and x >= 0 for x in lats)
        out[f"{side}_latencies"] = kept
        out[f"{side}_dropped_latencies"] = len(lats) - kept
    for sides in by_group.values():
        if "prim" not in sides or "cand" not in sides:
            continue
        out["pairs"] += 1
        p, c = sides["prim"], sides["cand"]
        if p["error"] is not None or c["error"] is not None:
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            d = np.float64(c["value"]) - np.float64(p["value"])
            ok = np.isfinite(d) and np.isfinite(d * d)
        out["regression_n" if ok else "invalid"] += 1
    out["requests"] = len(requests)
    out["dead_requests"] = sum(m.dead and m.stream == "requests" for m in msgs)
    out["dead"] = sum(m.dead for m in msgs)
    return dict(out)


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(pool=fuzz_pools(), plan=fuzz_plans(FuzzBuilder.JOINER_KINDS, N))
def test_hostile_input_is_dead_letters_and_good_events_are_counted(
    kafka_bootstrap: str, pool: FuzzPool, plan: list[tuple[str, int]]
) -> None:
    prefix = f"fzj{uuid4().hex[:10]}"
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=PARTITIONS)
    ensure_topics(cfg)
    topics = Topics(prefix)
    msgs = FuzzBuilder("joiner", PARTITIONS, pool, recent_base(0)).build(plan)
    kinds = Counter(f"{m.kind}{'/dead' if m.dead else ''}" for m in msgs)
    note(f"prefix {prefix}: {dict(kinds)}")
    print(f"fuzz {prefix}:", dict(sorted(kinds.items())))  # shown with -s
    coords = produce_fuzz(cfg, msgs)
    want = expected(msgs)

    stats = run_joiner(cfg)  # any exception here is the crash this test exists to catch

    assert stats.consumed == len(msgs)
    assert stats.dead_letters == want["dead"]

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
        assert d["stage"] == "joiner"
        assert d["reason"]
        assert (d["key"], d["value"]) == (m.key, m.value)
        assert d["source_topic"] in (topics.requests, topics.predictions)

    # Good events: counted, exactly.
    folded = fold_partials(cfg)
    shared, cand = folded[SHARED], folded[FUZZ_CANDIDATE]
    cov_s, cov_c = shared.coverage, cand.coverage
    assert cov_s["requests"] == want["requests"]
    assert cov_c["pairs"] == want.get("pairs", 0)
    assert cov_s["primary_predictions"] == want["prim_predictions"]
    assert cov_c["candidate_predictions"] == want["cand_predictions"]
    assert cov_s["primary_errors"] == want["prim_errors"]
    assert cov_c["candidate_errors"] == want["cand_errors"]
    assert cov_s["dropped_latencies"] == want["prim_dropped_latencies"]
    assert cov_c["dropped_latencies"] == want["cand_dropped_latencies"]
    assert shared.primary_latency.count == want["prim_latencies"]
    assert cand.candidate_latency.count == want["cand_latencies"]
    assert cov_c["invalid"] == want.get("invalid", 0)
    assert cand.regression_n == want.get("regression_n", 0)
    assert sum(s.coverage["duplicates"] for s in folded.values()) == 0
    assert set(folded) <= {SHARED, FUZZ_CANDIDATE}, set(folded)  # no model id from garbage
    assert FUZZ_PRIMARY not in folded

    # The conservation ledger: every request, the dead-lettered ones included.
    ledgers = latest_ledgers(cfg)
    assert ledgers, "no '*' partial carried a ledger"
    total: Counter[str] = Counter()
    pairs = 0
    for p, ledger in ledgers.items():
        for c, terms in ledger.items():
            assert terms["requests"] == sum(terms[k] for k in TERMS), (p, c, terms)
        total.update(ledger[SHARED])
        pairs += ledger.get(FUZZ_CANDIDATE, ledger[SHARED])["pairs"]
    assert total["requests"] == want["requests"] + want["dead_requests"]
    assert total["dead_letters"] == want["dead_requests"]
    assert pairs == want.get("pairs", 0)
    # and the coverage counts every dead letter, of either topic, in some '*' window
    assert cov_s["dead_letters"] == want["dead"]


@pytest.mark.parametrize(
    "kind",
    [
        "garbage",
        "long_request_id",
    ],
)
def test_a_message_as_large_as_kafka_takes_is_a_dead_letter_or_counted(
    kafka_bootstrap: str, prefix: str, kind: str
) -> None:
    """The largest message a default producer sends, on the requests topic: garbage, and a
    valid request with a half-megabyte request_id (longer than any stage accepts), are each
    one dead letter, cut to fit (copied whole, it would not), and the stage goes on."""
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

    stats = run_joiner(cfg)

    assert stats.consumed == 2
    letters = dead_letters(cfg)
    requests = fold_partials(cfg)[SHARED].coverage["requests"]
    assert (len(letters), requests) == (1, 1)


def test_a_partition_that_only_ever_saw_bad_messages_still_accounts_for_them(
    kafka_bootstrap: str, prefix: str
) -> None:
    """Dead letters are placed in the window of the partition's newest event time; on a
    partition with no believable event at all, they must still reach the partials."""
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    ensure_topics(cfg)
    topics = Topics(prefix)
    codec = default_codec()
    t = recent_base(0)
    good = codec.encode("Request", {"request_id": "r", "event_time": t})
    future = codec.encode("Request", {"request_id": "f", "event_time": t + YEAR_MS})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topics.requests, good, b"r", partition=0)
    producer.produce(topics.requests, b"garbage", b"g", partition=1)
    producer.produce(topics.requests, future, b"f", partition=1)
    producer.produce(topics.predictions, b"\xc3\x01" + bytes(8), b"u", partition=1)
    assert producer.flush(30) == 0

    stats = run_joiner(cfg)

    assert (stats.consumed, stats.dead_letters) == (4, 3)
    assert len(dead_letters(cfg)) == 3
    assert fold_partials(cfg)[SHARED].coverage["dead_letters"] == 3
    ledgers = latest_ledgers(cfg)
    assert 1 in ledgers, "partition 1 published no '*' partial, so no ledger"
    assert ledgers[1][SHARED]["dead_letters"] == 2
    assert ledgers[1][SHARED]["requests"] == 2


def test_many_long_model_ids_do_not_stop_the_joiner(kafka_bootstrap: str, prefix: str) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=1)
    ensure_topics(cfg)
    topics = Topics(prefix)
    codec = default_codec()
    t = recent_base(0)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(200):
        rid = f"r{i}"
        req = codec.encode("Request", {"request_id": rid, "event_time": t + i})
        send(producer, topics.requests, req, rid.encode(), partition=0)
        for role, model in (("PRIMARY", FUZZ_PRIMARY), ("CANDIDATE", f"{i}:" + "🦄" * 1500)):
            answer = {
                "request_id": rid,
                "event_time": t + i,
                "model_id": model,
                "role": role,
                "value": 1.0,
                "latency_ms": 1.0,
            }
            send(
                producer,
                topics.predictions,
                codec.encode("Prediction", answer),
                rid.encode(),
                partition=0,
            )
        producer.poll(0)
    assert producer.flush(30) == 0

    stats = run_joiner(cfg)

    assert stats.consumed == 600
    assert fold_partials(cfg)[SHARED].coverage["requests"] == 200
    # each long id is refused as a dead letter, counted, and the joiner goes on
    assert stats.dead_letters == 200
