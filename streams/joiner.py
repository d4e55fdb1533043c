"""The joiner: the hot path from raw events to mergeable partial statistics.

A confluent-kafka batch loop (a faust agent costs ~10x more per event, see DESIGN section
1). Each batch is one Kafka transaction holding the partials it closed, the changes of its
state (a compacted changelog topic, one partition per input partition), its dead letters
and its input offsets: the consume-transform-produce pattern. So a joiner killed with
SIGKILL and started again resumes from the last committed batch with exactly that batch's
state, and ends with the numbers of one that never died.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from streams.config import Config
from streams.deadletter import clip, dead_letter_of
from streams.errors import SchemaError, UnderstudyError
from streams.gctune import fewer_collections
from streams.join.clock import STREAMS
from streams.join.decode import FastDecoder
from streams.join.start_offsets import StartOffsets
from streams.join.windows import publish_order
from streams.joinstate import Emitted, PartitionState
from streams.kafka import Topics, check_copartitioned, client_config, read_compacted
from streams.metrics.partial import PartialStats
from streams.schemas import Codec, default_codec
from streams.transactions import STUCK_S, Deadline, commit, instance_ids, recover, rewind

log = logging.getLogger(__name__)

DEFAULT_BATCH = 5000
"""Most messages one batch (one transaction) takes from the consumer."""
TXN_TIMEOUT_S = 30.0
"""Timeout of each transactional call (sending offsets, committing)."""
POLL_S = 0.2
"""Longest wait for a batch to fill. Each batch is one transaction, and a window's partial
can leave only with the transaction of the batch that passed its end: at traffic too low to
fill ``batch_size``, this wait is part of every partial's delay (0.5 s made the soak's p99
freshness 2.2 s against a goal of lateness + 1 s), while at full speed batches fill first."""
COMMITTED_LOOKUP_S = 1.0
"""Bound on one committed-offset lookup of the idleness check (``join/start_offsets.py``)."""
RECOVERY_TIMEOUT_S = 20.0
"""Bound on each Kafka call while rewinding after an aborted transaction: past it the
joiner exits non-zero (a supervisor restarts it) rather than waiting on a broker."""


@dataclass
class JoinerStats:
    consumed: int = 0
    batches: int = 0
    partials: int = 0
    dead_letters: int = 0
    restored_partitions: int = 0


class Joiner:
    """Consume requests and predictions, join, accumulate, publish partials, exactly once."""

    def __init__(
        self,
        cfg: Config,
        *,
        instance: str | None = None,
        batch_size: int = DEFAULT_BATCH,
        codec: Codec | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cfg = cfg
        self.topics = Topics(cfg.prefix)
        self.codec = codec or default_codec()
        self.batch_size = batch_size
        self.partition_count = check_copartitioned(cfg)
        self.states: dict[int, PartitionState] = {}
        self.stats = JoinerStats()
        self._last_data = time.monotonic()
        #: wall time of the last event per (partition, stream), and of the last idle tick
        self._last_seen: dict[tuple[int, str], float] = {}
        self._last_idle_tick = 0.0
        self._fatal: str | None = None
        #: where consumption of a (topic, partition) started, for the idleness check
        self._starts = StartOffsets(
            lambda tp: self.consumer.committed([tp], timeout=COMMITTED_LOOKUP_S)[0].offset,
            backoff_s=cfg.idle_flush_ms / 1000,
        )
        #: when the transaction's call in progress is overdue: a watchdog (the CLI's) ends
        #: a process whose Kafka call hangs past its timeout
        self.deadline = Deadline()
        self._decode = FastDecoder(self.codec).decode
        self._encode_partial = self.codec.encoder("Partial")
        self._encode_dead = self.codec.encoder("DeadLetter")
        # a fixed id (``--instance``) fences the previous incarnation at once and takes its
        # partitions back without a rebalance; without one, a unique id per process, so
        # that two joiners started the same way never fence each other
        self.instance, transactional_id, member = instance_ids(cfg.prefix, "joiner", instance)
        consumer_extra: dict[str, object] = {
            "group.id": f"{cfg.prefix}.joiner",
            "session.timeout.ms": 15000,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "partition.assignment.strategy": "range",
            "error_cb": self._on_error,
        }
        if member is not None:
            consumer_extra["group.instance.id"] = member
        self.producer = Producer(
            client_config(
                cfg,
                **{
                    "transactional.id": transactional_id,
                    "linger.ms": 5,
                    "transaction.timeout.ms": 30000,
                    "error_cb": self._on_error,
                },
            )
        )
        self.consumer = Consumer(client_config(cfg, **consumer_extra))

    # -- lifecycle -----------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event | None = None,
        idle_exit_s: float | None = None,
        on_batch: Callable[[JoinerStats], None] | None = None,
    ) -> JoinerStats:
        """Run until ``stop`` is set, or until idle for ``idle_exit_s`` after flushing."""
        stop = stop or threading.Event()
        try:
            self.producer.init_transactions(30)  # fences a previous incarnation, aborts its txn
        except KafkaException as exc:
            raise UnderstudyError(f"joiner cannot initialise transactions: {exc}") from exc
        self.consumer.subscribe(
            [self.topics.requests, self.topics.predictions, self.topics.labels],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        with fewer_collections():
            return self._loop(stop, idle_exit_s, on_batch)

    def _loop(
        self,
        stop: threading.Event,
        idle_exit_s: float | None,
        on_batch: Callable[[JoinerStats], None] | None,
    ) -> JoinerStats:
        try:
            while not stop.is_set():
                if self._fatal is not None:
                    raise UnderstudyError(f"joiner cannot carry on: {self._fatal}")
                msgs = self.consumer.consume(num_messages=self.batch_size, timeout=POLL_S)
                if msgs:
                    self._process(msgs)
                ticked = self._idle_ticks()  # always: idleness is judged every round
                if (ticked or msgs) and on_batch:
                    on_batch(self.stats)
                if msgs:
                    continue
                idle = time.monotonic() - self._last_data
                if idle_exit_s is not None and self.states and idle >= idle_exit_s:
                    self._close_all()  # the end of the input: publish its last windows
                    if on_batch:
                        on_batch(self.stats)
                    break
        finally:
            self.close()
        return self.stats

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka's error callback: a fatal error ends the loop, with its reason."""
        if err.fatal():
            self._fatal = f"fatal Kafka error: {err.str()}"

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # already closed
            self.consumer.close()
        self.producer.flush(10)

    # -- rebalancing and restore ---------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        new = sorted({tp.partition for tp in partitions} - set(self.states))
        for p in new:
            self.states[p] = self._restore(p)
            self.stats.restored_partitions += 1
        for tp in partitions:
            self._starts.forget(tp)
        if new:
            now = time.monotonic()
            self._last_data = now  # idleness counts from a usable assignment
            for p in new:
                for stream in STREAMS:
                    self._last_seen[(p, stream)] = now
            log.info("joiner assigned partitions %s", new)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # every batch is committed before the next consume(), so nothing is in flight here
        for p in {tp.partition for tp in partitions}:
            self.states.pop(p, None)

    def _restore(self, p: int, timeout: float = 120.0) -> PartitionState:
        """Rebuild partition ``p``'s state from its changelog, to the last committed batch."""
        st = self._new_state(p)
        changelog = read_compacted(
            self.cfg,
            self.topics.joiner_state,
            p,
            group=f"{self.cfg.prefix}.joiner-restore",
            timeout=timeout,
        )
        for key, value in changelog.items():
            st.restore(key, value, self._decode_acc)
        st.finish_restore()
        return st

    def _new_state(self, p: int) -> PartitionState:
        c = self.cfg
        return PartitionState(
            p,
            c.window_ms,
            c.lateness_ms,
            c.join_ttl_ms,
            max_age_ms=c.max_age_ms,
            max_skew_ms=c.max_skew_ms,
            max_pending=c.max_pending,
            label_horizon_ms=c.label_horizon_ms,
            label_budget=c.label_budget,
        )

    def _decode_acc(self, value: bytes) -> PartialStats:
        return PartialStats.from_record(self.codec.decode_as("Partial", value))

    def _encode_acc(self, key: tuple[str, int], stats: PartialStats) -> bytes:
        return self._encode_partial(stats.to_partial(candidate=key[0], window_start=key[1]))

    # -- the batch -----------------------------------------------------------------------

    def _process(self, msgs: list[Message]) -> None:
        decode = self._decode
        requests, predictions = self.topics.requests, self.topics.predictions
        labels = self.topics.labels
        states = self.states
        touched: set[int] = set()
        dead: list[tuple[Message, str]] = []
        n = 0
        wall = time.monotonic()
        last_seen = self._last_seen
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.fatal() or err.code() == KafkaError._FATAL:
                    raise UnderstudyError(f"joiner cannot carry on: fatal consume error {err}")
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", err)
                continue
            n += 1
            part: int = m.partition()  # type: ignore[assignment]
            st = states.get(part)
            if st is None:  # not ours any more; the new owner will read it
                continue
            topic = m.topic()
            stream = (
                "requests"
                if topic == requests
                else ("labels" if topic == labels else "predictions")
            )
            touched.add(part)
            ts_type, ts = m.timestamp()
            now = ts if ts_type != TIMESTAMP_NOT_AVAILABLE else int(time.time() * 1000)
            try:
                if not m.key():
                    raise SchemaError("message has no key (the request_id must be the key)")
                name, rec = decode(m.value())
                if topic == requests and name == "Request":
                    last_seen[(part, stream)] = wall
                    reason = st.on_request(rec, now)
                elif topic == predictions and name == "Prediction":
                    # the primary's answers and the candidates' are two streams in time
                    kind = "predictions" if rec.get("role") == "PRIMARY" else "candidates"
                    last_seen[(part, kind)] = wall
                    reason = st.on_prediction(rec, now)
                elif topic == labels and name == "Label":
                    reason = st.on_label(rec, now)  # labels never hold the watermark back
                else:
                    raise SchemaError(f"a {name} message does not belong on {topic}")
                if reason is not None:
                    dead.append((m, reason))  # the state counted it already
            except SchemaError as exc:
                st.on_dead_letter(stream)
                dead.append((m, str(exc)))
            except (KeyError, TypeError, ValueError) as exc:
                st.on_dead_letter(stream)
                dead.append((m, f"cannot join: {exc!r}"))
        self.stats.consumed += n
        self._last_data = wall
        self._transact(touched, dead)

    def _idle_ticks(self) -> bool:
        """Declare idleness: a stream (requests, primary answers, candidates' answers) read
        to its end and quiet for ``idle_flush_ms`` stops holding its partition's watermark
        back; a partition with all of them quiet lets processing time move its watermark,
        once per ``idle_flush_ms``. Committed like a batch."""
        wall = time.monotonic()
        limit = self.cfg.idle_flush_ms / 1000
        tick = wall - self._last_idle_tick >= limit  # all partitions together: one transaction
        touched: set[int] = set()
        for p, st in self.states.items():
            quiet = [
                s
                for s in STREAMS
                if wall - self._last_seen.get((p, s), wall) >= limit and self._caught_up(p, s)
            ]
            for stream in quiet:
                if stream not in st.clock.idle:
                    st.mark_idle(stream)
                    touched.add(p)
            if tick and len(quiet) == len(STREAMS):
                st.idle_until(int(time.time() * 1000))
                touched.add(p)
        if tick and touched:
            self._last_idle_tick = wall
        if touched:
            self._transact(touched, [])
        return bool(touched)

    def _caught_up(self, p: int, stream: str) -> bool:
        """Whether we have read all there is of ``stream`` on partition ``p``.

        A partition is idle when its log has nothing more, not when this process has been
        busy with other partitions for a while (a backlog): librdkafka's cached high
        watermark from the last fetch says which.
        """
        topic = self.topics.requests if stream == "requests" else self.topics.predictions
        # ("candidates" are answers on the predictions topic too)
        tp = TopicPartition(topic, p)
        try:
            low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            pos = self.consumer.position([tp])[0].offset
            if pos < 0:
                # nothing consumed there since the assignment: we start from the commit
                start = self._starts.get(tp, low)
                if start is None:
                    return False
                pos = start
        except KafkaException:
            return False
        if high < 0:
            return False  # no fetch answered yet: we do not know
        return high == 0 or pos >= high

    def _close_all(self) -> None:
        """The end of the input: classify every open join, publish every open window."""
        now = int(time.time() * 1000)
        for st in self.states.values():
            st.place_dead_letters(now)  # the idle flush may not have come before the exit
            st.finish_open()
        emitted = {p: st.advance(close_all=True) for p, st in self.states.items()}
        self._transact(set(self.states), [], emitted)

    def _transact(
        self,
        touched: set[int],
        dead: list[tuple[Message, str]],
        emitted: dict[int, list[Emitted]] | None = None,
    ) -> None:
        if emitted is None:
            emitted = {p: self.states[p].advance() for p in touched}
        producer = self.producer
        self.deadline.set(STUCK_S, "transaction")
        try:
            producer.begin_transaction()
            for p, e in publish_order({p: emitted.get(p, []) for p in touched}):
                rec = e.stats.to_partial(
                    joiner_partition=p,
                    partition_count=self.partition_count,
                    candidate=e.candidate,
                    primary=e.primary,
                    window_start=e.window_start,
                    window_end=e.window_start + self.cfg.window_ms,
                    seq=e.seq,
                    watermark=e.watermark,
                    ledger=e.ledger or {},
                )
                producer.produce(
                    self.topics.partials, self._encode_partial(rec), e.candidate.encode()
                )
                self.stats.partials += 1
            for p in touched:
                for key, value in self.states[p].changes(self._encode_acc):
                    producer.produce(self.topics.joiner_state, value, key, partition=p)
                producer.poll(0)
            for m, reason in dead:
                producer.produce(
                    self.topics.deadletter, self._dead_letter(m, reason), clip(m.key())
                )
                self.stats.dead_letters += 1
            positions = [
                tp for tp in self.consumer.position(self.consumer.assignment()) if tp.offset >= 0
            ]
            commit(producer, self.consumer, positions, TXN_TIMEOUT_S, self.deadline)
        except KafkaException as exc:
            self.deadline.clear()  # recovery bounds its own calls
            self._recover_from(exc)
            return
        finally:
            self.deadline.clear()
        self.stats.batches += 1

    def _recover_from(self, exc: KafkaException) -> None:
        recover(
            self.producer,
            exc,
            stage="joiner",
            timeout=RECOVERY_TIMEOUT_S,
            back_to_commit=self._rewind,
        )

    def _rewind(self) -> None:
        """After an abort: state and positions go back to the last committed batch."""
        for p in {tp.partition for tp in self.consumer.assignment()}:
            self.states[p] = self._restore(p, timeout=RECOVERY_TIMEOUT_S)
        rewind(self.consumer, RECOVERY_TIMEOUT_S)

    def _dead_letter(self, m: Message, reason: str) -> bytes:
        return self._encode_dead(dead_letter_of("joiner", m, reason))


def run_joiner(
    cfg: Config,
    *,
    instance: str | None = None,
    stop: threading.Event | None = None,
    idle_exit_s: float | None = None,
    on_batch: Callable[[JoinerStats], None] | None = None,
) -> JoinerStats:
    """Run one joiner instance (the CLI's ``understudy joiner``)."""
    return Joiner(cfg, instance=instance).run(stop=stop, idle_exit_s=idle_exit_s, on_batch=on_batch)
