"""The broker everything else runs on: it answers, it does transactions, its lifecycle holds.

The first two tests run against the session broker (whatever the fixture found). The
lifecycle tests start their own embedded brokers in temporary homes so that stopping one
never touches the session broker.
"""

from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams import broker
from streams.errors import BrokerError


def _create_topic(admin: AdminClient, name: str, partitions: int = 1) -> None:
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions)])
    for future in futures.values():
        future.result(timeout=30)


def _consume_values(bootstrap: str, topic: str, group: str, isolation: str, want: int) -> list[str]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    values: list[str] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(values) < want and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=100, timeout=0.5):
                assert message.error() is None, message.error()
                value = message.value()
                assert value is not None
                values.append(value.decode())
    finally:
        consumer.close()
    return values


def test_session_broker_answers_metadata(admin: AdminClient) -> None:
    metadata = admin.list_topics(timeout=10)
    assert metadata.brokers, "the broker returned no broker in its metadata"
    assert metadata.cluster_id


def test_transactions_work_on_the_single_node(
    kafka_bootstrap: str, admin: AdminClient, prefix: str
) -> None:
    """Transactions need the transaction-state settings for one node; without them
    init_transactions() times out. A read_committed reader must see only committed data."""
    topic = f"{prefix}.tx"
    _create_topic(admin, topic)
    producer = Producer(
        {"bootstrap.servers": kafka_bootstrap, "transactional.id": f"{prefix}-producer"}
    )
    producer.init_transactions(30)

    producer.begin_transaction()
    for i in range(3):
        producer.produce(topic, key=b"k", value=f"committed-{i}".encode())
    producer.commit_transaction(30)

    producer.begin_transaction()
    for i in range(2):
        producer.produce(topic, key=b"k", value=f"aborted-{i}".encode())
    producer.flush(30)  # the aborted records really reach the log...
    producer.abort_transaction(30)

    producer.begin_transaction()
    producer.produce(topic, key=b"k", value=b"after-abort")
    producer.commit_transaction(30)

    # The aborted records sit between the committed ones in the log: in order, any leak
    # would show up among the first four values.
    committed = ["committed-0", "committed-1", "committed-2", "after-abort"]
    assert _consume_values(kafka_bootstrap, topic, f"{prefix}-rc", "read_committed", 4) == (
        committed
    )
    # ...and only the isolation level hides them.
    everything = _consume_values(kafka_bootstrap, topic, f"{prefix}-ru", "read_uncommitted", 6)
    assert sorted(everything) == sorted([*committed, "aborted-0", "aborted-1"])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    return cmdline.exists() and b"kafka.Kafka" in cmdline.read_bytes()


def test_start_is_idempotent_and_stop_stops(tmp_path: Path) -> None:
    home = tmp_path / "broker"
    try:
        # Two concurrent starts on one home: the lock makes the second reuse the first.
        with ThreadPoolExecutor(max_workers=2) as pool:
            first, second = pool.map(lambda _: broker.start(home=home), range(2))
        assert first == second
        assert broker.start(home=home).pid == first.pid
        assert broker.status(home) == first

        _create_topic(AdminClient({"bootstrap.servers": first.bootstrap}), "survives-restart")

        assert broker.stop(home) is True
        assert broker.status(home) is None
        assert not (home / "broker.json").exists()
        assert not _pid_alive(first.pid)
        assert broker.stop(home) is False

        # A restart of the same data directory keeps the port and the topics.
        again = broker.start(home=home)
        assert again.pid != first.pid
        assert again.bootstrap == first.bootstrap
        topics = AdminClient({"bootstrap.servers": again.bootstrap}).list_topics(timeout=10)
        assert "survives-restart" in topics.topics
    finally:
        broker.stop(home)
    assert broker.status(home) is None


def test_a_broker_that_dies_reports_its_log(tmp_path: Path) -> None:
    home = tmp_path / "broker"
    with pytest.raises(BrokerError, match="Invalid maximum heap size") as caught:
        broker.start(home=home, heap="lots", timeout=60)
    assert "Last lines of" in str(caught.value)
    assert broker.status(home) is None
    assert not (home / "broker.json").exists()


def test_a_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    home = tmp_path / "broker"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port}"):
            broker.start(port=port, home=home)
    assert not (home / "broker.log").exists()


def test_a_borrowed_broker_is_left_as_it_was_found(tmp_path: Path) -> None:
    """What the benches use: start one only if none runs, and stop only the one started."""
    home = tmp_path / "broker"
    try:
        with broker.borrowed(home=home) as started:
            assert broker.status(home) == started
        assert broker.status(home) is None  # started for the block, gone after it
        assert not _pid_alive(started.pid)

        running = broker.start(home=home)
        with broker.borrowed(home=home) as info:
            assert info == running
        assert broker.status(home) == running  # the user's broker is left alone

        broker.stop(home)
        with broker.borrowed(home=home, keep=True) as kept:
            pass
        assert broker.status(home) == kept  # asked to keep it
    finally:
        broker.stop(home)
