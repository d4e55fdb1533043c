"""The evaluator's gap reader on a transactional topic, as the joiner writes partials:
every range gives exactly the committed records in it (not the transaction markers, not
what an aborted transaction wrote), reading forward or after a step back."""

from __future__ import annotations

import itertools

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import Config
from streams.evaluator import GapReader


def test_ranges_give_the_committed_records_in_them_forward_and_back(
    kafka_bootstrap: str, prefix: str
) -> None:
    topic = f"{prefix}.gaps"
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": topic})
    producer.init_transactions(30)
    offsets: dict[bytes, int] = {}

    def delivered(err: object, msg: object) -> None:
        assert err is None
        offsets[msg.value()] = msg.offset()  # type: ignore[attr-defined]

    committed: list[bytes] = []
    for i in range(40):
        producer.begin_transaction()
        values = [f"{i}-{j}".encode() for j in range(1 + i % 3)]
        for v in values:
            producer.produce(topic, v, key=b"k", partition=0, on_delivery=delivered)
        producer.flush(30)
        if i % 7 == 3:
            producer.abort_transaction(30)
        else:
            producer.commit_transaction(30)
            committed += values
    producer.flush(30)
    end = max(offsets.values()) + 2  # past the last marker
    expected = {offsets[v]: v for v in committed}
    reader = GapReader(Config(bootstrap_servers=kafka_bootstrap, prefix=prefix), topic, 30.0)
    cuts = [0, 1, 2, 5, 6, 13, 30, 31, 55, 80, end]

    def check(lo: int, hi: int) -> None:
        got = reader.read(0, lo, hi)
        assert [(o, v) for o, _, v in got] == sorted(
            (o, v) for o, v in expected.items() if lo <= o < hi
        ), (lo, hi)

    for lo, hi in itertools.pairwise(cuts):  # forward, as the evaluator reads
        check(lo, hi)
    check(10, 40)  # a step back (another evaluator run): it re-reads from there
    check(40, 41)
    check(41, end)
    assert len(committed) < len(offsets)  # there were aborted records to skip
