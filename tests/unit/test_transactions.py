"""What a transactional stage does after a failed call, decided without a broker: abort and
rewind when the transaction can be aborted, exit (raise) when it cannot; retry a commit
librdkafka calls retriable; ids stable per --instance, unique without one."""

from __future__ import annotations

import os
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.errors import BrokerError
from streams.transactions import COMMIT_ATTEMPTS, commit, instance_ids, recover


class FakeProducer:
    """Records the transactional calls; ``commit_failures`` are raised by the next commits."""

    def __init__(self, commit_failures: list[KafkaError] | None = None) -> None:
        self.calls: list[str] = []
        self.commit_failures = list(commit_failures or [])
        self.abort_error: KafkaError | None = None

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self.calls.append("send_offsets")

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        if self.commit_failures:
            raise KafkaException(self.commit_failures.pop(0))

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")
        if self.abort_error is not None:
            raise KafkaException(self.abort_error)


class FakeConsumer:
    def consumer_group_metadata(self) -> object:
        return object()


def failure(**flags: bool) -> KafkaException:
    return KafkaException(KafkaError(KafkaError._STATE, "injected", **flags))


def test_an_abortable_failure_is_aborted_then_rewound() -> None:
    producer, rewound = FakeProducer(), []
    recover(
        producer,
        failure(txn_requires_abort=True),
        stage="worker",
        timeout=1.0,
        back_to_commit=lambda: rewound.append(True),
    )
    assert producer.calls == ["abort"] and rewound == [True]


@pytest.mark.parametrize(
    ("flags", "words"),
    [({"fatal": True}, "failed fatally (fenced"), ({}, "transaction failed: ")],
)
def test_a_fatal_or_unknown_failure_ends_the_stage(flags: dict[str, bool], words: str) -> None:
    producer, rewound = FakeProducer(), []
    with pytest.raises(BrokerError, match="worker") as info:
        recover(
            producer,
            failure(**flags),
            stage="worker",
            timeout=1.0,
            back_to_commit=lambda: rewound.append(True),
        )
    assert words in str(info.value)
    assert producer.calls == [] and rewound == []  # nothing aborted, nothing rewound


def test_a_failed_abort_ends_the_stage() -> None:
    producer = FakeProducer()
    producer.abort_error = KafkaError(KafkaError._TIMED_OUT, "broker away")
    with pytest.raises(BrokerError, match="could not rewind to its last commit"):
        recover(
            producer,
            failure(txn_requires_abort=True),
            stage="joiner",
            timeout=1.0,
            back_to_commit=lambda: None,
        )


def test_a_retriable_commit_failure_is_retried_then_given_up() -> None:
    retriable = KafkaError(KafkaError._TIMED_OUT, "slow", retriable=True)
    producer = FakeProducer([retriable])
    commit(producer, FakeConsumer(), [], 1.0)
    assert producer.calls == ["send_offsets", "commit", "commit"]

    producer = FakeProducer([retriable] * COMMIT_ATTEMPTS)
    with pytest.raises(KafkaException):
        commit(producer, FakeConsumer(), [], 1.0)
    assert producer.calls.count("commit") == COMMIT_ATTEMPTS

    producer = FakeProducer([KafkaError(KafkaError._STATE, "no", txn_requires_abort=True)])
    with pytest.raises(KafkaException):  # for recover() to abort: never retried
        commit(producer, FakeConsumer(), [], 1.0)
    assert producer.calls == ["send_offsets", "commit"]


def test_instance_ids() -> None:
    assert instance_ids("p", "worker", "w1") == ("w1", "p.worker.w1", "p.worker.w1")
    name, transactional, member = instance_ids("p", "joiner", None)
    assert name.endswith(f"-{os.getpid()}") and transactional == f"p.joiner.{name}"
    assert member is None  # no static membership for a one-off id
