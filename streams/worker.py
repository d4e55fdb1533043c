"""The shadow worker: scores every mirrored request with each candidate model.

A consumer group on ``<prefix>.requests`` (so workers scale with its partitions). Each
micro-batch is decoded, scored by every candidate (vectorized where the model allows, see
:class:`streams.models.Candidate`), and answered with one Prediction per request per
candidate on ``<prefix>.predictions``:

- each candidate on its own thread, within a time budget per batch (``budget_s``), so one
  that is slow, hangs or raises costs its own predictions only: past the budget they are
  published as ``"timeout after N ms"`` errors (see :mod:`streams.isolation` for what then
  happens to the hung call and the candidate's next batches), and a candidate's answers are
  produced as soon as it has them, not after the slowest one's;
- with a latency that estimates one request called alone, as the primary's is measured
  (see :class:`streams.models.Candidate`); a vectorized call's amortized cost per request
  is kept apart, in :attr:`WorkerStats.candidates` and the worker's closing log line;

- keyed by request_id and written to *the request's partition*, explicitly, so predictions
  are co-partitioned with their requests whatever partitioner the service's producer used;
- stamped with the *request's* event time, so a late shadow answer still lands in its
  request's window;
- with the candidate's own latency, and its error if it failed: a model exception is an
  error prediction, never a crash.

Messages that are not Request events, or whose request_id is empty or whose key is null
or empty (the key must be the request_id, or the request cannot be co-partitioned with its
predictions), go to ``<prefix>.deadletter`` with the reason and their coordinates, and the
batch goes on.

Delivery guarantee, by default at-least-once. The batch's offsets are committed only after
every candidate's outcome for every request (an answer, an error or a timeout) and every
dead letter of the batch has been acknowledged by the broker; failed deliveries are
retried, and if they still fail the worker raises without committing, so a restarted worker
scores that batch again (the joiner recognises the duplicates). The commit is sent then
without waiting for its answer (:meth:`ShadowWorker._commit`): the next batch is not held
by its round trip, and librdkafka completes it before a revoke or a close. Nor is the next
batch held by the acknowledgements' round trip: they are awaited (and the offsets
committed) once the next batch is decoded and scored, just before its first prediction is
produced, or when the input goes idle, at a revoke, or at a stop
(:meth:`ShadowWorker._settle`). A worker with an online learner keeps the simpler order,
each batch settled before the next is consumed: its learner must see a batch delivered
before it learns.

With ``exactly_once`` (``understudy worker --exactly-once``), each batch is one Kafka
transaction instead (see :mod:`streams.transactions`): its predictions, its dead letters
and its input offsets are committed together or not at all, so a worker killed at any
point and started again leaves exactly one prediction per request per candidate for a
read_committed reader (the joiner is one). A failed transaction is aborted and the batch
scored again from the last commit; a fenced or fatally failed one ends the worker.

A rebalance's callbacks run inside ``consume()``, between batches: the revoke settles the
at-least-once batch produced last (delivered, then its commit sent) while its partitions
are still owned, and an exactly-once batch is committed or aborted before the next
``consume()``, so revoked partitions never have work in flight. Lost partitions (the group
gave them away already) commit nothing: their new owner scores that batch again. A
transaction still open at revoke can only be a batch abandoned by a stop or an error on its
way out (``close`` leaves the group): it is aborted there, never committed.

Stopping: ``stop`` ends the loop after the current batch, whose predictions are delivered
and offsets committed before :meth:`ShadowWorker.run` returns. When the broker is away, the
worker waits at most :data:`STOP_GRACE_S` for that batch, then leaves it uncommitted (a
restarted worker scores it again) rather than holding a supervisor's SIGTERM for minutes.
A fatal client error (librdkafka's ``error_cb`` with ``fatal()``: the client can never work
again) raises :class:`~streams.errors.BrokerError` at once, so the process exits non-zero
and a supervisor restarts it instead of it lingering idle.

The features a model sees are ``{**numeric_features, **categorical_features}``: one flat
dict, river style; a categorical feature shadows a numeric one of the same name. A model
not warmed up at load (a dict model without an operator's example request: no declared
features to build one from) gets its warm-up call on the first request consumed, before
anything is scored (see :meth:`streams.isolation.Lanes.warm_up`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streams.clientlog import CLIENT_LOG
from streams.config import Config
from streams.control import PrimaryFollower
from streams.cpuhome import CpuHome
from streams.deadletter import MAX_ID_CHARS, clip, dead_letter_of
from streams.errors import BrokerError, ConfigError, SchemaError
from streams.gctune import fewer_collections
from streams.isolation import DEFAULT_BUDGET_S, Lanes
from streams.kafka import (
    Topics,
    check_copartitioned,
    client_config,
    scrub,
    validate_client_options,
)
from streams.learning.learner import LearnSettings, OnlineLearner, ScoredBatch
from streams.models import Candidate, Features, Outcome
from streams.prediction_encoder import PredictionEncoder, RequestParts
from streams.request_decoder import RequestDecoder
from streams.schemas import Codec, default_codec
from streams.transactions import STUCK_S, Deadline, commit, instance_ids, recover, rewind

__all__ = ["ShadowWorker", "WorkerStats", "run_worker"]

log = logging.getLogger(__name__)

#: librdkafka's "let the partitioner choose" partition.
_ANY_PARTITION = -1

#: Delivery attempts for a batch's outputs (the first one included) before giving up.
DELIVERY_ATTEMPTS = 4

#: Producer defaults the user's ``kafka:`` options may override (tuning, not semantics).
_PRODUCER_DEFAULTS: dict[str, Any] = {
    "enable.idempotence": True,
    "linger.ms": 5,
    # A bounded wait for acknowledgements, so an unreachable broker surfaces as an error
    # within a minute instead of librdkafka's five.
    "message.timeout.ms": 60_000,
    # Only failures come back to Python (:meth:`ShadowWorker._on_delivery` keeps nothing
    # else): a report per success cost a Message object and a call per prediction.
    # Completion is still known: ``flush`` waits for every message's outcome either way.
    "delivery.report.only.error": True,
}

#: ``linger.ms`` of an at-least-once worker (the user's option wins). A batch's predictions
#: are produced in a burst, and their acknowledgements awaited once the next batch is scored,
#: a few ms later: librdkafka's 5 ms held them back past that point. bench/worker.py's
#: worker, one process alternating, three rounds each: 77,540 / 80,825 / 85,420 requests/s
#: with 5, 94,746 / 85,673 / 96,845 with 1, 63,114 / 79,781 / 64,589 with 0 (a produce
#: request per message: more CPU). An exactly-once batch ends in a commit that sends at
#: once anyway: 36,569 / 45,745 / 56,782 with 5, 39,564 / 42,491 / 38,233 with 1; it keeps 5.
AT_LEAST_ONCE_LINGER_MS = 1

#: ``transaction.timeout.ms`` of an exactly-once worker (the user's option wins): how long
#: the broker lets a killed worker's open transaction hold read_committed readers back
#: when no restart with the same ``--instance`` aborts it first. It must exceed a batch's
#: longest life: the budget plus delivery.
TXN_TIMEOUT_MS = 30_000

#: Bound on each transactional call (init, send offsets, commit, abort, rewind).
TXN_CALL_S = 30.0

#: Extra seconds ``idle_exit_s`` waits for the group's first partition assignment.
JOIN_GRACE_S = 30.0

#: Seconds a stopping worker waits for its last batch's acknowledgements (broker away).
STOP_GRACE_S = 5.0
POLL_S = 0.1
"""Longest wait for a batch to fill: the candidates' answers hold the joiner's watermark
back, so this wait adds to every window's delay at traffic too low to fill a batch."""


class _Abandoned(Exception):
    """The worker was stopped while its batch could not be delivered."""


@dataclass
class WorkerStats:
    """What a worker did: messages consumed, predictions produced, errors, dead letters.

    Counts are of work *done*, including batches re-scored after a restart.
    """

    #: Messages read from the requests topic, dead-lettered ones included.
    consumed: int = 0
    #: Valid requests scored (``consumed - dead_letters``).
    requests: int = 0
    #: Prediction events produced: ``requests x candidates``.
    predictions: int = 0
    #: Error predictions among ``predictions`` (model exceptions, NaN, bad output types,
    #: timeouts).
    errors: int = 0
    #: Timeout predictions among ``errors``: past the budget, or the candidate still busy.
    timeouts: int = 0
    dead_letters: int = 0
    batches: int = 0
    #: Messages re-produced after a failed delivery.
    redelivered: int = 0
    #: Exactly-once: batches whose transaction was aborted (then scored again).
    aborted: int = 0
    #: Per candidate: its lane's counts (:class:`streams.isolation.LaneStats`) and its call
    #: costs: ``single_ms`` (mean single call, what the published latencies estimate),
    #: ``amortized_ms`` (batch call cost per request, kept apart), ``single_calls``.
    candidates: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Per online learner (``--learn``): what it learned, what its store holds and dropped
    #: (:meth:`streams.learning.learner.OnlineLearner.report`).
    learners: dict[str, dict[str, Any]] = field(default_factory=dict)


class ShadowWorker:
    """One member of the shadow worker group; :meth:`run` until stopped or idle."""

    def __init__(
        self,
        cfg: Config,
        candidates: Sequence[Candidate],
        *,
        group_id: str | None = None,
        batch_size: int = 500,
        codec: Codec | None = None,
        budget_s: float = DEFAULT_BUDGET_S,
        exactly_once: bool | None = None,
        instance: str | None = None,
        learning: LearnSettings | None = None,
        pin_threads: bool = True,
    ) -> None:
        """``exactly_once``: one Kafka transaction per batch (None: ``cfg.worker_exactly_once``).
        ``instance``: a stable id of this worker (``--instance``): static group membership
        and a fixed transactional id, so a restart fences its predecessor at once; None for
        a unique one (see :func:`streams.transactions.instance_ids`). ``learning``: which
        candidates learn from ``<prefix>.labels`` while shadowed (:mod:`streams.learning`).
        ``pin_threads``: keep the poll thread and the candidates' lanes on one CPU, which
        moves (:mod:`streams.cpuhome`); False leaves them wherever Linux runs them."""
        if not candidates:
            raise ValueError("a shadow worker needs at least one candidate model")
        ids = [c.model_id for c in candidates]
        if len(set(ids)) != len(ids):
            raise ValueError(f"candidate model ids must be distinct, got {ids}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s}")
        self.budget_s = budget_s
        self.learning = learning
        if learning is not None:
            unknown = sorted(set(learning.models) - set(ids))
            if unknown:
                raise ConfigError(
                    f"--learn names {', '.join(unknown)}, which is not a --candidate "
                    f"(candidates: {', '.join(ids)})"
                )
        self._learners: list[OnlineLearner] = []
        self._lanes: Lanes | None = None
        self._primary: PrimaryFollower | None = None
        self.cfg = cfg
        self.candidates = list(candidates)
        self.group_id = group_id or f"{cfg.prefix}.worker"
        self.exactly_once = cfg.worker_exactly_once if exactly_once is None else exactly_once
        self.instance, self._transactional_id, self._member = instance_ids(
            cfg.prefix, "worker", instance
        )
        self._in_transaction = False
        #: when the transaction's call in progress is overdue: the CLI's watchdog ends a
        #: process whose Kafka call hangs past its timeout
        self.deadline = Deadline()
        self.batch_size = batch_size
        self.topics = Topics(cfg.prefix)
        self.codec = codec or default_codec()
        self.stats = WorkerStats()
        # hand-written, byte for byte / record for record what the codec gives: the two
        # per-request costs that fastavro made the largest (see each module)
        self._request_decoder = RequestDecoder(
            self.codec, answer_header=self.codec.schemas["Prediction"].header
        )
        self._prediction_encoder = PredictionEncoder(self.codec.schemas["Prediction"])
        self._encode_dead_letter = self.codec.encoder("DeadLetter")
        self._assigned: set[tuple[str, int]] = set()
        self._assigned_at = 0.0
        self._failed: list[tuple[KafkaError, Message]] = []
        self._fatal: KafkaError | None = None
        self._stop: threading.Event | None = None
        self._stop_deadline = float("inf")
        self._abandoned = False
        #: at-least-once without learners: the offsets of the batch produced last, whose
        #: acknowledgements are awaited (and its offsets committed) only when the next batch
        #: is ready to produce, or the input is idle, or the worker stops (:meth:`_settle`)
        self._unsettled: dict[tuple[str, int], int] | None = None
        self._pipelined = False
        self._consumer: Any = None
        self._producer: Any = None
        self._pin_threads = pin_threads
        self._home = CpuHome(enabled=False)  # made in run(), on the thread that polls

    # -- lifecycle -------------------------------------------------------------------------

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        idle_exit_s: float | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> WorkerStats:
        """Consume, score, produce, commit, until ``stop`` is set or the input is idle.

        ``idle_exit_s``: return after that many seconds without a message (counted from the
        latest partition assignment or message, so a slow group join is not "idle"; before
        the first assignment, :data:`JOIN_GRACE_S` more: a fresh broker's group coordinator
        can take seconds to load).
        ``on_batch`` gets the number of messages of each batch, for progress displays.
        """
        validate_client_options(self.cfg)
        check_copartitioned(self.cfg)
        self._stop = stop
        log.info(
            "shadow worker %s (%s) on %s: candidates %s",
            self.group_id,
            "exactly-once" if self.exactly_once else "at-least-once",
            self.topics.requests,
            ", ".join(c.model_id for c in self.candidates),
        )
        self._home = CpuHome(self._pin_threads)
        # a batch's records, features and outcomes live until it is produced: see gctune
        with fewer_collections():
            try:
                self._start_learners()
                # a learner must see its batch delivered before it learns: it keeps the simple
                # order (each batch settled before the next is consumed)
                self._pipelined = not self.exactly_once and not self._learners
                self._lanes = Lanes(self.candidates, self.budget_s, self._home)
                # a candidate promoted to primary (<prefix>.control) answers users now: the
                # service sends its answers, so it is no longer scored in the shadow
                self._primary = PrimaryFollower(self.cfg)
                self._open()
                self._loop(stop, idle_exit_s, on_batch)
                self._settled()
            finally:
                self.close()
        return self.stats

    def _loop(
        self,
        stop: threading.Event | None,
        idle_exit_s: float | None,
        on_batch: Callable[[int], None] | None,
    ) -> None:
        """Consume and process batches until ``stop``, idleness or an abandoned batch."""
        last_activity = time.monotonic()
        while stop is None or not stop.is_set():
            messages = self._consumer.consume(num_messages=self.batch_size, timeout=POLL_S)
            self._raise_if_fatal()
            for learner in self._learners:
                learner.settle(self._consumer)
            now = time.monotonic()
            if not messages:
                if not self._settled():
                    break
                if self._learn():
                    last_activity = now  # labels still coming: not idle
                self._producer.poll(0)  # serves error_cb: a fatal error ends an idle worker
                since = max(last_activity, self._assigned_at)
                if not self._assigned_at:  # the group has not answered yet
                    since += JOIN_GRACE_S
                if idle_exit_s is not None and now - since >= idle_exit_s:
                    log.info("shadow worker idle for %.1f s: stopping", now - since)
                    break
                continue
            last_activity = now
            self._home.settle()
            try:
                scored = self._process(messages)
            except _Abandoned:
                self._abandoned = True
                break
            self._learn(scored)
            if on_batch is not None:
                on_batch(len(messages))

    def _settled(self) -> bool:
        """:meth:`_settle` from the loop: False when a stop gave up waiting on Kafka."""
        try:
            self._settle()
        except _Abandoned:
            self._abandoned = True
            return False
        return True

    def _start_learners(self) -> None:
        """Restore each learner's checkpoint (its model replaces the spec's), open its
        labels consumer. Before the lanes exist: a lane holds its candidate's model."""
        if self.learning is None:
            return
        for name in self.learning.models:
            index = next(i for i, c in enumerate(self.candidates) if c.model_id == name)
            learner = OnlineLearner(
                self.cfg, self.candidates[index], index, self.learning, self.codec, self.budget_s
            )
            self.candidates[index] = learner.restore()
            learner.open(self._on_client_error)
            self._learners.append(learner)

    def _learn(self, scored: ScoredBatch | None = None) -> int:
        """Between batches: the delivered batch's features to the learners' stores, the
        labels that came, ``learn_one``, a checkpoint when due. Returns labels read.

        ``scored``: what :meth:`_process` returned for the batch just finished (None between
        batches, without learners, or for a batch aborted to be scored again)."""
        if not self._learners:
            return 0
        lanes = self._lanes
        assert lanes is not None
        read = 0
        for learner in self._learners:
            if scored is not None:
                learner.after_batch(scored)
            read += learner.poll()
            learner.release(self._consumer)
            learner.learn(lanes)
            learner.checkpoint(lanes)
        return read

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise BrokerError(
                f"fatal Kafka client error, the worker cannot go on: {self._fatal.str()}"
            )

    def _on_client_error(self, err: KafkaError) -> None:
        """Both clients' ``error_cb``: remember a fatal error, log the rest rarely."""
        if err.fatal() and self._fatal is None:
            self._fatal = err
        CLIENT_LOG.error_cb(err)

    def _stopping(self) -> bool:
        """Whether a stop was asked for more than :data:`STOP_GRACE_S` ago."""
        if self._stop is None or not self._stop.is_set():
            return False
        now = time.monotonic()
        if self._stop_deadline == float("inf"):
            self._stop_deadline = now + STOP_GRACE_S
        return now >= self._stop_deadline

    def _open(self) -> None:
        consumer_conf = client_config(self.cfg, error_cb=self._on_client_error)
        consumer_conf.update(
            {
                "on_commit": self._on_commit,
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        # a member lost in a broker outage is noticed after the session timeout: librdkafka's
        # 45 s default left answers 40-79 s late after a 20 s outage (chaos test), past the
        # join TTL; the user's own setting wins
        consumer_conf.setdefault("session.timeout.ms", 15000)
        if self._member is not None:
            consumer_conf["group.instance.id"] = self._member
        producer_conf = client_config(self.cfg, error_cb=self._on_client_error)
        if self.exactly_once:
            producer_conf["transactional.id"] = self._transactional_id
            producer_conf.setdefault("transaction.timeout.ms", TXN_TIMEOUT_MS)
            # librdkafka refuses a message timeout longer than the transaction's
            producer_conf.setdefault("message.timeout.ms", producer_conf["transaction.timeout.ms"])
        else:
            producer_conf.setdefault("linger.ms", AT_LEAST_ONCE_LINGER_MS)
        for key, value in _PRODUCER_DEFAULTS.items():
            producer_conf.setdefault(key, value)
        try:
            self._producer = Producer(producer_conf)
            self._consumer = Consumer(consumer_conf)
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(
                f"invalid Kafka client configuration for the worker: {scrub(str(exc), self.cfg)}"
            ) from None
        if self.exactly_once:
            try:
                # fences a previous incarnation with the same --instance, aborting its batch
                self._producer.init_transactions(TXN_CALL_S)
            except KafkaException as exc:
                raise BrokerError(f"the worker cannot initialise transactions: {exc}") from exc
        self._consumer.subscribe(
            [self.topics.requests],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def close(self) -> None:
        """Leave the group and flush the producer. Nothing is committed here: every batch
        committed its own offsets, and an unfinished one must be scored again."""
        self._home.release()  # the caller's thread as it was; the lanes follow at their next job
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        lanes, self._lanes = self._lanes, None
        learners, self._learners = self._learners, []
        for learner in learners:
            learner.close(None if self._abandoned or self._fatal is not None else lanes)
            self.stats.learners[learner.model_id] = report = learner.report()
            log.info(
                "learner %s: %s", learner.model_id, ", ".join(f"{k}={v}" for k, v in report.items())
            )
        if lanes is not None:
            lanes.close()
            self._report_candidates(lanes)
        follower, self._primary = self._primary, None
        if follower is not None:
            follower.close()
        try:
            if producer is not None and self._in_transaction:
                self._abort_open_transaction(producer)
            elif producer is not None:
                # Left-overs of an abandoned or failed batch, whose offsets were not committed:
                # dropped at once when the stop already waited (or the client is dead).
                gone = self._abandoned or self._fatal is not None
                if gone or producer.flush(STOP_GRACE_S):
                    producer.purge(in_queue=True, in_flight=True, blocking=False)
        finally:
            if consumer is not None:
                consumer.close()

    # -- rebalance -------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._assigned.update((tp.topic, tp.partition) for tp in partitions)
        self._assigned_at = time.monotonic()
        for learner in self._learners:
            learner.on_assign([tp.partition for tp in partitions])

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # The batch produced last is settled (delivered, then committed) while its
        # partitions are still ours; nothing else is pending: see the module docstring. A
        # transaction open here is a batch abandoned on the way out (close): never
        # committed for partitions we lose.
        if self._unsettled is not None and self._producer is not None:
            self._settled()
        if self._in_transaction and self._producer is not None:
            self._abort_open_transaction(self._producer)
        self._assigned.difference_update((tp.topic, tp.partition) for tp in partitions)
        for learner in self._learners:
            learner.on_revoke([tp.partition for tp in partitions])

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # Lost, not revoked: the group gave them to another member already, which scores
        # them again from the last commit; committing the last batch now would fail.
        self._unsettled = None
        self._on_revoke(consumer, partitions)

    # -- one batch -------------------------------------------------------------------------

    def _process(self, messages: list[Message]) -> ScoredBatch | None:
        """Decode, score, produce, wait for every acknowledgement, then commit.

        Returns the batch as the learners need it (:meth:`_scored_batch`) once it is
        delivered and committed: None without learners, and None for an exactly-once batch
        whose transaction was aborted (it is scored again, and its answers must not come
        from a model that learned its labels meanwhile)."""
        requests: list[dict[str, Any]] = []
        partitions: list[int] = []
        positions: list[int] = []
        stamps: list[int] = []
        heads: list[bytes | None] = []  # what each answer repeats of its request's bytes
        tails: list[bytes | None] = []
        ends: dict[int, int] = {}  # the next offset of each partition of the batch
        decode = self._request_decoder.decode_view
        consumed = 0
        self._failed = []
        if self.exactly_once:
            self._begin_transaction()
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise BrokerError(f"fatal consumer error on {self.topics.requests}: {err}")
                CLIENT_LOG.error_cb(err)  # rate-limited: repeated on every poll in an outage
                continue
            partition, offset = msg.partition(), msg.offset()
            if partition is None or offset is None:
                continue  # only error events lack coordinates
            consumed += 1
            ends[partition] = offset + 1
            try:
                request, head, tail = decode(msg.value())
            except SchemaError as exc:
                self._dead_letter(msg, str(exc))
                continue
            request_id = request["request_id"]
            if not request_id:
                self._dead_letter(msg, "request has an empty request_id")
                continue
            if len(request_id) > MAX_ID_CHARS:
                self._dead_letter(
                    msg,
                    f"request_id longer than {MAX_ID_CHARS} characters (its predictions "
                    "would not fit in a Kafka message)",
                )
                continue
            if not msg.key():
                self._dead_letter(
                    msg, "request has a null or empty key (it must be the request_id)"
                )
                continue
            kind, stamp = msg.timestamp()  # as _stamp(msg), inline: once per request
            requests.append(request)
            partitions.append(partition)
            positions.append(offset)
            stamps.append(stamp if kind != TIMESTAMP_NOT_AVAILABLE and stamp > 0 else 0)
            heads.append(head)
            tails.append(tail)
        self.stats.consumed += consumed
        topic = self.topics.requests  # the one topic the worker's consumer reads
        offsets = {(topic, partition): end for partition, end in ends.items()}
        self.stats.requests += len(requests)
        features: list[Features] = []
        skipped: frozenset[str] = frozenset()  # a batch of dead letters only skips no one
        if requests:
            features, skipped = self._score(requests, partitions, stamps, (heads, tails))
        scored = self._scored_batch(
            requests, features, skipped, partitions, stamps, positions, offsets
        )
        aborted = self.stats.aborted
        if self.exactly_once:
            self._commit_transaction(offsets)
        elif self._pipelined:
            self._settle()  # the previous batch, when this one had nothing to score
            self._unsettled = offsets
        else:
            self._await_deliveries()
            self._commit(offsets)
        self.stats.batches += 1
        # learners see a batch once its answers are out: never one aborted (scored again,
        # its answers must not come from a model that learned its labels meanwhile)
        return scored if self.stats.aborted == aborted else None

    def _scored_batch(
        self,
        requests: list[dict[str, Any]],
        features: list[Features],
        skipped: frozenset[str],
        partitions: list[int],
        stamps: list[int],
        positions: list[int],
        offsets: dict[tuple[str, int], int],
    ) -> ScoredBatch | None:
        """What the learners need of the batch just scored (None without learners)."""
        if not self._learners:
            return None
        return ScoredBatch(
            ids=[r["request_id"] for r in requests],
            features=features,  # the dicts the models saw, shared, not copied
            partitions=partitions,
            offsets=positions,
            event_times=[r["event_time"] for r in requests],
            stamps=stamps,
            skipped=skipped,
            consumed={partition: offset for (_, partition), offset in offsets.items()},
        )

    def _score(
        self,
        requests: list[dict[str, Any]],
        partitions: list[int],
        stamps: list[int],
        known: RequestParts,
    ) -> tuple[list[Features], frozenset[str]]:
        """Score the batch on every candidate's lane; produce each one's answers as they come.

        Returns the feature dicts the models saw (one per request, in order) and the model
        ids not scored because they are primary now: the learners store the one and skip
        the other (:class:`~streams.learning.learner.ScoredBatch`)."""
        features = [r["features"] for r in requests]
        ids = [r["request_id"] for r in requests]
        keys = [i.encode() for i in ids]
        topic = self.topics.predictions
        encoder = self._prediction_encoder
        # what every candidate's prediction of a request shares, encoded once per request
        parts = encoder.request_parts(requests, known)
        lanes = self._lanes
        assert lanes is not None
        lanes.warm_up(features[0])
        primary = self._primary.primary if self._primary is not None else None
        promoted = [i for i, c in enumerate(self.candidates) if c.model_id == primary]

        def deliver(index: int, outcomes: list[Outcome]) -> None:
            if self._unsettled is not None:
                # the previous batch's acknowledgements came while this one was decoded
                # and scored: its offsets are committed before anything of this one is
                # produced, so a flush waits for that batch alone
                self._settle()
            values = encoder.encode_outcomes(
                self.candidates[index].model_id, "CANDIDATE", requests, parts, outcomes
            )
            producer = self._producer
            produce = producer.produce
            on_delivery = self._on_delivery
            for value, key, partition, stamp in zip(values, keys, partitions, stamps, strict=True):
                try:
                    # positional (topic, value, key, partition, callback, on_delivery,
                    # timestamp), as confluent-kafka declares them: its keyword parsing cost
                    # 0.4 us of a 1.0 us call, twice per request
                    produce(topic, value, key, partition, on_delivery, None, stamp)
                except (BufferError, KafkaException):
                    # a full local queue or a client error: the slow path waits or says why
                    self._produce(topic, value, key, partition, stamp)
            producer.poll(0)  # hand them to librdkafka's sender now, not at flush
            errors = [o.error for o in outcomes if o.error is not None]
            self.stats.predictions += len(outcomes)
            self.stats.errors += len(errors)
            self.stats.timeouts += sum(1 for e in errors if e.startswith("timeout"))

        lanes.score(features, ids, deliver, skip=promoted)
        return features, frozenset(self.candidates[i].model_id for i in promoted)

    def _report_candidates(self, lanes: Lanes) -> None:
        """Each candidate's lane counts and call costs into the stats, and one log line."""
        for lane in lanes.lanes:
            cand = lane.candidate
            cost = cand.latency
            report: dict[str, Any] = asdict(lane.stats)
            report.update(
                single_calls=cost.single_calls,
                single_ms=cost.single_mean_ms,
                amortized_ms=cost.amortized_ms,
            )
            self.stats.candidates[cand.model_id] = report
            log.info(
                "candidate %s: %s",
                cand.model_id,
                ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in report.items()
                ),
            )

    def _dead_letter(self, msg: Message, reason: str) -> None:
        self.stats.dead_letters += 1
        value = self._encode_dead_letter(dead_letter_of("worker", msg, reason))
        self._produce(self.topics.deadletter, value, clip(msg.key()), _ANY_PARTITION)

    # -- delivery and commit ---------------------------------------------------------------

    def _produce(
        self, topic: str, value: bytes, key: bytes | None, partition: int, stamp: int = 0
    ) -> None:
        """``stamp``: the Kafka timestamp to give the message (0: now).

        A candidate's answer carries its request's timestamp, so the joiner judges its event
        time (:mod:`streams.join.timecheck`) as it judged the request's: a worker that
        catches up on a backlog older than ``max_age_ms`` must not turn every answer into a
        dead letter.
        """
        producer = self._producer
        while True:
            try:
                producer.produce(
                    topic,
                    value,
                    key,
                    partition=partition,
                    timestamp=stamp,
                    on_delivery=self._on_delivery,
                )
                return
            except BufferError:
                producer.poll(0.1)  # local queue full: let deliveries drain
                self._raise_if_fatal()
                if self._stopping():
                    raise _Abandoned from None
            except KafkaException as exc:
                raise BrokerError(f"cannot produce to {topic}: {exc}") from exc

    def _settle(self) -> None:
        """Wait for the acknowledgements of the batch produced last, then commit its offsets
        (at-least-once, pipelined: see :attr:`_unsettled`). Raises as
        :meth:`_await_deliveries`, and then the batch is not committed."""
        offsets, self._unsettled = self._unsettled, None
        if offsets is None:
            return
        self._await_deliveries()
        self._commit(offsets)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        # One bound method for every message (no per-message closure); a failed message
        # still carries its topic, partition, key and value, which is all a retry needs.
        if err is not None:
            self._failed.append((err, msg))

    def _await_deliveries(self) -> None:
        """Wait until the broker acknowledged everything produced; retry the failures.

        Raises :class:`BrokerError` when some messages still fail after
        :data:`DELIVERY_ATTEMPTS`, and the caller then does not commit; raises
        :class:`_Abandoned` (no commit either) when a stop waited :data:`STOP_GRACE_S`.
        """
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            # Every produced message gets exactly one delivery report within
            # message.timeout.ms, so this ends; flush in slices to stay responsive.
            while self._producer.flush(0.5) > 0:
                self._raise_if_fatal()
                if self._stopping():
                    log.warning(
                        "stopped while Kafka does not acknowledge the batch: its offsets are "
                        "not committed, a restarted worker scores it again"
                    )
                    raise _Abandoned
            if not self._failed:
                return
            failed, self._failed = self._failed, []
            first = failed[0][0]
            log.warning(
                "%d messages of the batch not delivered (attempt %d/%d): %s",
                len(failed),
                attempt,
                DELIVERY_ATTEMPTS,
                first,
            )
            if attempt == DELIVERY_ATTEMPTS or any(err.fatal() for err, _ in failed):
                raise BrokerError(
                    f"cannot deliver {len(failed)} predictions/dead letters of a batch "
                    f"(first error: {first}); its offsets are not committed, so it will be "
                    "scored again after a restart"
                )
            time.sleep(min(0.5 * attempt, 2.0))
            if self._stopping():
                raise _Abandoned
            self.stats.redelivered += len(failed)
            for _, msg in failed:
                topic, value, partition = msg.topic(), msg.value(), msg.partition()
                assert topic is not None and value is not None  # we never produce without
                if partition is None or partition < 0:
                    partition = _ANY_PARTITION
                self._produce(topic, value, msg.key(), partition, _stamp(msg))

    def _owned(self, offsets: dict[tuple[str, int], int]) -> list[TopicPartition]:
        """The batch's next offsets, for the partitions this worker still holds."""
        return [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in offsets.items()
            if (topic, partition) in self._assigned
        ]

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit the delivered batch's offsets without waiting for the broker's answer.

        The batch's predictions are acknowledged already (the at-least-once promise is about
        *when* a commit is sent, and it is sent only now), so the commit's round trip need
        not hold the next batch: librdkafka sends the group's commits in order, and makes a
        rebalance's revoke and :meth:`close` wait for those in flight (an assignment is not
        released, nor the group left, while a commit is outstanding). A commit that fails
        is reported to :meth:`_on_commit`: the batch may be scored twice, as before.
        """
        owned = self._owned(offsets)
        if not owned:
            return
        try:
            self._consumer.commit(offsets=owned, asynchronous=True)
        except KafkaException as exc:
            # Typically the group rebalanced while the batch was scored: the partitions'
            # new owner starts from the last commit and scores them again (at-least-once).
            log.warning("offset commit failed, the batch may be scored twice: %s", exc)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """The consumer's ``on_commit``: what an asynchronous commit came to."""
        if err is not None:
            log.warning("offset commit failed, the batch may be scored twice: %s", err)
            return
        failed = [tp for tp in partitions or [] if tp.error is not None]
        if failed:
            log.warning(
                "offset commit failed for %d partitions, they may be scored twice: %s",
                len(failed),
                failed[0].error,
            )

    # -- exactly-once ----------------------------------------------------------------------

    def _begin_transaction(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise BrokerError(f"the worker cannot begin a transaction: {exc}") from exc
        self._in_transaction = True
        # the batch's scoring runs inside the transaction: its budget comes on top
        self.deadline.set(STUCK_S + self.budget_s, "transaction")

    def _commit_transaction(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit the batch's predictions, dead letters and offsets as one; on an abortable
        failure abort it and rewind to the last commit, so the batch is scored again."""
        try:
            commit(self._producer, self._consumer, self._owned(offsets), TXN_CALL_S, self.deadline)
        except KafkaException as exc:
            self._in_transaction = False
            self.deadline.clear()  # recovery bounds its own calls
            self._raise_if_fatal()
            recover(
                self._producer,
                exc,
                stage="worker",
                timeout=TXN_CALL_S,
                back_to_commit=lambda: rewind(self._consumer, TXN_CALL_S),
            )
            self.stats.aborted += 1
            return
        self._in_transaction = False
        self.deadline.clear()

    def _abort_open_transaction(self, producer: Any) -> None:
        """Abort the batch in flight (a stop, an error, a revoke on the way out): none of it
        is committed, and the partitions' next owner scores it from the last commit."""
        self._in_transaction = False
        self.deadline.clear()
        try:
            producer.abort_transaction(STOP_GRACE_S)
        except KafkaException as exc:
            # the broker aborts it anyway after transaction.timeout.ms, or when a restart
            # with the same --instance fences this one
            log.warning("could not abort the worker's open transaction: %s", exc)


def run_worker(
    cfg: Config,
    candidates: Sequence[Candidate],
    *,
    group_id: str | None = None,
    batch_size: int = 500,
    stop: threading.Event | None = None,
    idle_exit_s: float | None = None,
    on_batch: Callable[[int], None] | None = None,
    budget_s: float = DEFAULT_BUDGET_S,
    exactly_once: bool | None = None,
    instance: str | None = None,
    learning: LearnSettings | None = None,
    pin_threads: bool = True,
) -> WorkerStats:
    """Run one shadow worker until ``stop`` is set or ``idle_exit_s`` passes without input.

    The consumer group defaults to ``<prefix>.worker``: start more workers with the same
    group to share the partitions of ``<prefix>.requests``. ``budget_s``: each candidate's
    time budget per batch (see :mod:`streams.isolation`). ``exactly_once``, ``instance``
    and ``pin_threads``: see :class:`ShadowWorker`.
    """
    worker = ShadowWorker(
        cfg,
        candidates,
        group_id=group_id,
        batch_size=batch_size,
        budget_s=budget_s,
        exactly_once=exactly_once,
        instance=instance,
        learning=learning,
        pin_threads=pin_threads,
    )
    return worker.run(stop=stop, idle_exit_s=idle_exit_s, on_batch=on_batch)


def _stamp(msg: Message) -> int:
    """The message's Kafka timestamp, or 0 (produce stamps it now) when it has none."""
    kind, ts = msg.timestamp()
    return ts if kind != TIMESTAMP_NOT_AVAILABLE and ts > 0 else 0
