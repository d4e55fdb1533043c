"""State written before a schema upgrade restores after it, through the real broker.

The joiner's changelog and the evaluator's tables keep statistics as Avro ``Partial``
records. Here an Understudy of Partial v1 wrote them (encoded with history v1, as the
released code did); the current code reads the compacted topics back the way it restores
(``read_compacted``: read_committed, last value of a key wins) and decodes them with the
current codec: the numbers are the ones written, and every field v2 added is at its default.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import Config
from streams.kafka import Topics, client_config, ensure_topics, read_compacted
from streams.metrics.partial import COVERAGE_FIELDS, PartialStats
from streams.schemas import default_codec

NEW_COUNTERS = COVERAGE_FIELDS[12:]  # every counter Partial v1 did not have
WS = 1_700_000_000_000


def stats(seed: int) -> PartialStats:
    """Statistics with every part filled: coverage, exact sums, labels, both sketches."""
    rng = np.random.default_rng(seed)
    s = PartialStats()
    for i, name in enumerate(COVERAGE_FIELDS):
        if name not in NEW_COUNTERS:
            s.count(name, 10 * seed + i + 1)
    s.add_regression(rng.normal(size=50), rng.normal(size=50))
    s.add_classification(["a", "b", "a", "c"], ["a", "a", "a", "c"])
    s.add_latency(rng.lognormal(1.0, 0.5, 40), rng.lognormal(1.5, 0.5, 30))
    return s


def as_v1(record: dict[str, Any]) -> dict[str, Any]:
    """A current Partial record as Partial v1 had it: no ledger, twelve counters, and none
    of v3's profiles and slices or v4's labelled losses."""
    v3 = ("ledger", "profile", "slices", "slice_overflow", "labelled")
    rec = {k: v for k, v in record.items() if k not in v3}
    rec["coverage"] = {k: v for k, v in record["coverage"].items() if k not in NEW_COUNTERS}
    return rec


def v1_message(record: dict[str, Any]) -> bytes:
    return default_codec().versions["Partial"][1].encode(as_v1(record))


def test_v1_partials_in_compacted_state_restore_into_the_current_schema(
    kafka_bootstrap: str, prefix: str, admin: AdminClient
) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    ensure_topics(cfg)
    joiner_state = Topics(prefix).joiner_state  # the joiner's real compacted changelog
    evaluator_table = f"{prefix}.evaluator-windows-changelog"  # shaped like a faust table's
    spec = NewTopic(evaluator_table, 1, 1, config={"cleanup.policy": "compact"})
    for fut in admin.create_topics([spec]).values():
        fut.result(30)

    codec = default_codec()
    first, latest, other, cumulative = stats(1), stats(2), stats(3), stats(4)
    acc_key = b"a" + json.dumps(["cand@2", WS]).encode()  # the joiner's accumulator key
    other_key = b"a" + json.dumps(["*", WS]).encode()
    producer = Producer(client_config(cfg))
    # an accumulator written twice before the upgrade: the last value of the key wins
    for s in (first, latest):
        message = v1_message(s.to_partial(candidate="cand@2", window_start=WS))
        producer.produce(joiner_state, message, acc_key, partition=1)
    producer.produce(
        joiner_state, v1_message(other.to_partial(candidate="*")), other_key, partition=1
    )
    # evaluator table: one v1 entry, and one the upgraded evaluator wrote (current version)
    old_entry = cumulative.to_partial(candidate="cand@2", joiner_partition=1, seq=3)
    producer.produce(evaluator_table, v1_message(old_entry), b"cand@2|1", partition=0)
    producer.produce(
        evaluator_table, codec.encode("Partial", latest.to_partial()), b"cand@3|1", partition=0
    )
    assert producer.flush(30) == 0

    restored = read_compacted(cfg, joiner_state, 1, group=f"{prefix}.restore", timeout=60)
    assert set(restored) == {acc_key, other_key}
    assert all(
        v is not None and v[2:10] == codec.versions["Partial"][1].fingerprint
        for v in restored.values()
    )
    for key, want in ((acc_key, latest), (other_key, other)):
        value = restored[key]
        assert value is not None
        rec = codec.decode_as("Partial", value)
        assert rec["ledger"] == {}
        assert all(rec["coverage"][k] == 0 for k in NEW_COUNTERS)
        got = PartialStats.from_record(rec)
        assert got.to_record() == want.to_record()
    acc = codec.decode_as("Partial", restored[acc_key])
    assert (acc["candidate"], acc["window_start"]) == ("cand@2", WS)
    assert acc["coverage"]["requests"] == 21 and acc["coverage"]["invalid"] == 32
    assert PartialStats.from_record(acc).regression_n == 50

    table = read_compacted(cfg, evaluator_table, 0, group=f"{prefix}.restore-table", timeout=60)
    old = codec.decode_as("Partial", table[b"cand@2|1"])
    assert (old["joiner_partition"], old["seq"], old["ledger"]) == (1, 3, {})
    assert PartialStats.from_record(old).to_record() == cumulative.to_record()
    new = PartialStats.from_record(codec.decode_as("Partial", table[b"cand@3|1"]))
    assert new.to_record() == latest.to_record()
    # merged across versions and written back: a current Partial with the sum of both
    merged = PartialStats.from_record(old)
    merged.merge(new)
    again = codec.decode_as("Partial", codec.encode("Partial", merged.to_partial()))
    assert (
        again["coverage"]["requests"]
        == cumulative.coverage["requests"] + latest.coverage["requests"]
    )
