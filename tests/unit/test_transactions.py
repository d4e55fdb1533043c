"""What a transactional stage does after a failed call, decided without a broker: abort and
rewind when the transaction can be aborted, exit (raise) when it cannot; retry a commit
librdkafka calls retriable; ids stable per --instance, unique without one."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.errors import BrokerError
from streams.transactions import (
    CALL_SLACK_S,
    COMMIT_ATTEMPTS,
    SEND_OFFSETS_S,
    Deadline,
    commit,
    instance_ids,
    recover,
)


class FakeProducer:
    """Records the transactional calls; ``commit_failures`` are raised by the next commits."""

    def __init__(self, commit_failures: list[KafkaError] | None = None) -> None:
        self.calls: list[str] = []
        self.commit_failures = list(commit_failures or [])
        self.abort_error: KafkaError | None = None
        self.send_failures: list[KafkaError] = []

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self.calls.append("send_offsets")
        if self.send_failures:
            raise KafkaException(self.send_failures.pop(0))

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


def test_a_retriable_send_offsets_failure_is_retried() -> None:
    """Seen just after a broker outage: "Failed to add offsets to transaction on broker
    TxnCoordinator/1: Local: Broker transport failure", retriable by librdkafka's word; it
    ended the joiner before it was retried."""
    transport = KafkaError(KafkaError._TRANSPORT, "transport failure", retriable=True)
    producer = FakeProducer()
    producer.send_failures = [transport]
    commit(producer, FakeConsumer(), [], 1.0)
    assert producer.calls == ["send_offsets", "send_offsets", "commit"]
    producer = FakeProducer()
    producer.send_failures = [transport] * COMMIT_ATTEMPTS
    with pytest.raises(KafkaException):
        commit(producer, FakeConsumer(), [], 1.0)
    assert producer.calls == ["send_offsets"] * COMMIT_ATTEMPTS


def test_instance_ids() -> None:
    assert instance_ids("p", "worker", "w1") == ("w1", "p.worker.w1", "p.worker.w1")
    name, transactional, member = instance_ids("p", "joiner", None)
    assert name.endswith(f"-{os.getpid()}") and transactional == f"p.joiner.{name}"
    assert member is None  # no static membership for a one-off id


class RecordingProducer(FakeProducer):
    """Notes, at each call, how long the watchdog would let it run and its own timeout."""

    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline
        self.allowed: list[tuple[str, float, float]] = []

    def _note(self, what: str, timeout: float) -> None:
        assert self.deadline.at is not None
        left = self.deadline.at - time.monotonic()
        self.allowed.append((what, round(left), timeout))

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self._note(self.deadline.what, timeout)

    def commit_transaction(self, timeout: float) -> None:
        self._note(self.deadline.what, timeout)


def test_each_transactional_call_is_watched_at_its_own_timeout() -> None:
    """librdkafka's send_offsets_to_transaction ignores its timeout while the group
    coordinator is down (#5456): the watchdog must call it hung at 10 + 5 s, not wait for
    the whole transaction's 75 s bound, which let a CI run's joiner come back too late."""
    deadline = Deadline()
    producer = RecordingProducer(deadline)
    commit(producer, FakeConsumer(), [], 30.0, deadline)
    assert producer.allowed == [
        ("send_offsets_to_transaction", SEND_OFFSETS_S + CALL_SLACK_S, SEND_OFFSETS_S),
        ("commit_transaction", 30.0 + CALL_SLACK_S, 30.0),
    ]
    assert not deadline.overdue(time.monotonic())
    deadline.set(-1.0, "commit_transaction")
    assert deadline.overdue(time.monotonic())
    deadline.clear()
    assert not deadline.overdue(time.monotonic() + 1e6)


WATCHDOG = "import types\nimport streams.cli as cli\nfrom streams.transactions import Deadline\n"


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a process of its own: the watchdog ends it with ``os._exit``."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_watchdog_waits_out_an_outage_then_exits_with_every_threads_stack() -> None:
    """Overdue while the broker does not answer: the stage waits (the call may return once
    it is back). Overdue while it answers, for HUNG_AFTER_BACK_S: exit 1, stacks on stderr."""
    code = WATCHDOG + (
        "import itertools, sys\n"
        "cli.HUNG_AFTER_BACK_S = 0.5\n"
        "d = Deadline(); d.set(-1.0, 'send_offsets_to_transaction')\n"
        "probes = itertools.count()\n"
        "def answers():  # an outage of 20 probes, then the broker is back\n"
        "    n = next(probes); print('probe', n, file=sys.stderr, flush=True); return n >= 20\n"
        "cli._watch_transactions(types.SimpleNamespace(deadline=d), 'joiner', answers, 0.01)\n"
    )
    done = run_python(code)
    assert done.returncode == 1
    said = done.stderr.index("the joiner's send_offsets_to_transaction has not returned")
    assert done.stderr.index("probe 20\n") < said  # not during the outage
    assert "most recent call first" in done.stderr[said:]  # the stacks, for the log


def test_the_watchdog_leaves_a_call_that_returns_in_time() -> None:
    code = WATCHDOG + (
        "import threading, time\n"
        "cli.HUNG_AFTER_BACK_S = 0.2\n"
        "d = Deadline(); d.set(0.3, 'commit_transaction')\n"
        "stage = types.SimpleNamespace(deadline=d)\n"
        "w = lambda: cli._watch_transactions(stage, 'w', lambda: True, 0.01)\n"
        "threading.Thread(target=w, daemon=True).start()\n"
        "time.sleep(0.2); d.clear(); time.sleep(1.0)\n"
        "print('alive')\n"
    )
    done = run_python(code)
    assert (done.returncode, done.stdout.strip()) == (0, "alive"), done.stderr
