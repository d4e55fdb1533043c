"""Kafka transactions of a consume-transform-produce stage: ids, commit, abort and rewind.

The joiner (every batch) and the shadow worker (``--exactly-once``) publish a batch's
outputs and its input offsets in one transaction, so that a process killed at any point
leaves either all of a batch or none of it, and a read_committed reader sees each output
once. What they share lives here:

- :func:`instance_ids`: the ``transactional.id`` (and static ``group.instance.id``) of one
  running instance. A fixed ``--instance`` fences the previous incarnation at once (its open
  transaction is aborted by :meth:`~confluent_kafka.Producer.init_transactions`) and, with
  static membership, takes its partitions back without a rebalance. Without one each
  process gets a unique id, so two instances started the same way never fence each other;
  a killed one's open transaction is then aborted by the broker after
  ``transaction.timeout.ms``, and until then its partitions' committed offsets are
  "unstable": a successor waits for them instead of reading past them (KIP-447).
- :func:`commit`: the batch's offsets sent to the transaction with the consumer's group
  metadata (generation included, so a member that lost its partitions in a rebalance
  cannot commit over their new owner: the broker refuses, and the batch is aborted), then
  the commit, each retried while librdkafka calls the failure retriable.
- :func:`recover`: after a failed call, abort and go back to the last commit when
  librdkafka says the transaction can be aborted; raise when it cannot (fenced, fatal), so
  the process exits and a restart resumes from the last commit.
- :class:`Deadline`: when the transaction's Kafka call in progress is overdue, for the
  CLI's watchdog to end a process whose call hangs past its own timeout.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

from streams.errors import BrokerError, UnderstudyError

__all__ = [
    "CALL_SLACK_S",
    "COMMIT_ATTEMPTS",
    "SEND_OFFSETS_S",
    "STUCK_S",
    "Deadline",
    "commit",
    "instance_ids",
    "recover",
    "rewind",
]

log = logging.getLogger(__name__)

#: Tries of ``send_offsets_to_transaction`` and of ``commit_transaction`` while their
#: failure is retriable (a timeout, say).
COMMIT_ATTEMPTS = 3

SEND_OFFSETS_S = 10.0
"""Timeout of ``send_offsets_to_transaction``: a round trip or two to the coordinators, well
under a second when they are up. Shorter than the commit's: librdkafka ignores it while the
group coordinator is down (confluentinc/librdkafka#5456), so past it the watchdog acts."""

CALL_SLACK_S = 5.0
"""How long past its own timeout a call may take before the watchdog calls it hung."""

STUCK_S = 75.0
"""Bound on a whole transaction whose call in progress set no tighter deadline (the produce
loop, a begin): the calls' own timeouts add up to 60 s."""


class Deadline:
    """When the Kafka call in progress is overdue (monotonic seconds; None between
    transactions), read by the CLI's watchdog thread.

    Why: after a broker outage ``send_offsets_to_transaction`` was seen never to return
    although its timeout was 30 s (librdkafka#5456), and no other thread can interrupt
    it. The process then exits, and a supervisor's restart resumes from the last commit.
    Each call sets its own deadline (its timeout plus :data:`CALL_SLACK_S`: 15 s for the
    offsets), and the watchdog acts once the broker has answered for a while past it
    (``streams.cli``); a single bound for the whole transaction waited 75 s, even with
    the broker back, and a CI run's joiner came back too late for its test.
    """

    def __init__(self) -> None:
        self.at: float | None = None
        #: what is being waited for, for the watchdog's message
        self.what = ""

    def set(self, seconds: float, what: str) -> None:
        self.at, self.what = time.monotonic() + seconds, what

    def clear(self) -> None:
        self.at = None

    def overdue(self, now: float) -> bool:
        at = self.at
        return at is not None and now > at


def instance_ids(prefix: str, role: str, instance: str | None) -> tuple[str, str, str | None]:
    """``(instance, transactional.id, group.instance.id)`` of one process of ``role``.

    ``instance`` is the operator's stable id (``--instance``), or None for a unique one
    (``host-pid``, and no static membership: a unique member id would only keep a dead
    member's partitions from the others until its session timed out).
    """
    if instance is None:
        name = f"{socket.gethostname()}-{os.getpid()}"
        return name, f"{prefix}.{role}.{name}", None
    member = f"{prefix}.{role}.{instance}"
    return instance, member, member


def commit(
    producer: Any,
    consumer: Any,
    offsets: list[TopicPartition],
    timeout: float,
    deadline: Deadline | None = None,
) -> None:
    """Send ``offsets`` (the next offset to read, per partition) into the open transaction
    and commit it. Raises the client's :class:`KafkaException` for :func:`recover`.
    ``deadline``: set before each call to its timeout plus :data:`CALL_SLACK_S`."""
    deadline = deadline or Deadline()
    send_s = min(timeout, SEND_OFFSETS_S)
    metadata = consumer.consumer_group_metadata()

    def send_offsets_to_transaction() -> None:
        deadline.set(send_s + CALL_SLACK_S, "send_offsets_to_transaction")
        producer.send_offsets_to_transaction(offsets, metadata, send_s)

    def commit_transaction() -> None:
        deadline.set(timeout + CALL_SLACK_S, "commit_transaction")
        producer.commit_transaction(timeout)

    _retrying(send_offsets_to_transaction)
    _retrying(commit_transaction)


def _retrying(call: Callable[[], None]) -> None:
    """``call`` again while librdkafka says its failure is retriable (a timeout, a broker
    connection lost just after an outage: seen on send_offsets_to_transaction), at most
    :data:`COMMIT_ATTEMPTS` times; any other failure is raised for :func:`recover`."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            call()
            return
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            retriable = err is not None and getattr(err, "retriable", lambda: False)()
            if not retriable or attempt == COMMIT_ATTEMPTS:
                raise
            log.warning("%s failed (%s): trying again", call.__name__, err)


def rewind(consumer: Any, timeout: float) -> None:
    """Seek every assigned partition back to the group's committed offset (the beginning
    where nothing was committed): what an aborted batch read is read again."""
    committed = consumer.committed(consumer.assignment(), timeout=timeout)
    for tp in committed:
        if tp.offset < 0:
            tp.offset = OFFSET_BEGINNING
        consumer.seek(tp)


def recover(
    producer: Any,
    exc: KafkaException,
    *,
    stage: str,
    timeout: float,
    back_to_commit: Callable[[], None],
) -> None:
    """After ``exc`` from a transactional call: abort, then ``back_to_commit()`` (at least
    :func:`rewind`) when the transaction can be aborted; otherwise raise :class:`BrokerError`
    (fenced by a newer instance, or fatal), so the process exits non-zero and its successor
    resumes from the last commit."""
    err = exc.args[0] if exc.args else None
    if err is not None and getattr(err, "fatal", lambda: False)():
        raise BrokerError(
            f"{stage} transaction failed fatally (fenced by another instance with the same "
            f"--instance, or the broker lost the transaction): {exc}"
        ) from exc
    if err is not None and getattr(err, "txn_requires_abort", lambda: False)():
        log.warning("aborting the %s transaction: %s; rewinding to the last commit", stage, err)
        try:
            producer.abort_transaction(timeout)
            back_to_commit()
        except (KafkaException, UnderstudyError) as again:
            raise BrokerError(
                f"{stage} could not rewind to its last commit after {err}: {again}; "
                "exiting so that a restart resumes from it"
            ) from again
        return
    raise BrokerError(
        f"{stage} transaction failed: {exc}; exiting so that a restart resumes from the last commit"
    ) from exc
