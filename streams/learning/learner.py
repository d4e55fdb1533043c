"""An online learner inside the shadow worker: predict first, learn when the label comes.

A river candidate named with ``understudy worker --learn MODEL_ID`` keeps learning from
``<prefix>.labels`` while it is shadowed. It is scored like any candidate; then, after the
batch's predictions are delivered (committed), each scored request's features go to a
bounded :class:`~streams.learning.store.FeatureStore`. Its label, when it comes, is paired
with them and handed to ``learn_one(x, y)``. So every published prediction was made before
the model learned from that request's label: the losses the joiner and evaluator compute
from them are *progressive validation*, the honest measure of an online model.

Time order is kept as well: a matched pair is learned only once every assigned partition
that still has requests to read has scored past its label's event time
(:meth:`OnlineLearner.release`, the rule in :mod:`streams.learning.timeorder`), so a worker
catching up on a backlog, reading one partition ahead of another, does not answer old
requests with what later ones taught.

This module is the learner's lifecycle: it follows the worker's assignment, decides where
each partition's labels are read from, feeds the store, learns on the lane and writes the
checkpoints. The labels are read by a consumer of the learner's own
(:mod:`streams.learning.labels`, which says why); the requests scored since a checkpoint
come back after a restart by :mod:`streams.learning.refill`.

Where the labels of a partition are read from:

- a partition in the checkpoint: from the checkpoint's offset. The requests scored after
  the checkpoint (committed by the group, so their predictions are out) are read back from
  ``<prefix>.requests`` into the store first (the *refill*, at most ``cap`` of them): their
  labels, read again from the checkpoint's offset, are learned once, by the restored model;
- a partition seen for the first time: from the first label stamped at most
  :data:`LABEL_SLACK_MS` before the first request this worker scored there (Kafka
  timestamps: a request's truth is known after it was served). Labels of requests scored
  before this learner held the partition find no features and end ``unmatched``.

A partition taken away by a rebalance keeps its state until the rebalance's assignment: if
it comes back (an eager rebalance gives everything back at once) nothing is lost; if not,
its features and early labels are dropped, counted ``revoked``.

``learn_one`` and the checkpoint's pickling run on the candidate's own lane
(:meth:`streams.isolation.Lanes.call`), so the model is never read by a prediction while it
changes, and a ``learn_one`` that hangs costs that candidate's predictions only (timeouts),
as a hung prediction would. The labels of a learn call past the budget count as
``learn_timeouts``: whether the model took them in is unknown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.config import Config
from streams.errors import CheckpointError, ModelLoadError
from streams.isolation import Lanes
from streams.kafka import Topics
from streams.learning.checkpoint import Checkpoint, checkpoint_path, load, lock, save
from streams.learning.labels import LABEL_SLACK_MS, LabelsReader
from streams.learning.refill import refill
from streams.learning.store import DEFAULT_CAP, FeatureStore
from streams.learning.timeorder import HeldPairs, ScoringProgress
from streams.models import Candidate, Features
from streams.schemas import Codec

__all__ = [
    "DEFAULT_CHECKPOINT_S",
    "LABEL_SLACK_MS",
    "LearnSettings",
    "OnlineLearner",
    "ScoredBatch",
]

log = logging.getLogger(__name__)

AT_END_SETTLE_S = 2.0
"""How long a partition read to its end must have been quiet before it stops holding
learning back (:func:`streams.learning.timeorder.frontier`): longer than a fetch waits
(librdkafka's ``fetch.wait.max.ms``, 500 ms by default) and than the tap's own lag on a
busy host, so a request served before a label is fetched and scored before the label is
learned. The joiner allows events the same lateness by default (``lateness_ms``)."""
#: Seconds between checkpoints, by default (and one more when the worker stops).
DEFAULT_CHECKPOINT_S = 30.0
#: Bound on a checkpoint's pickling, on the candidate's lane.
PICKLE_TIMEOUT_S = 60.0
#: Bound on each look-up of the group's committed offsets and the requests' watermarks.
KAFKA_CALL_S = 30.0


@dataclass(frozen=True)
class LearnSettings:
    """Which candidates learn, where their state lives, and the store's bounds."""

    models: tuple[str, ...]
    state_dir: Path
    cap: int = DEFAULT_CAP
    horizon_ms: int = 86_400_000
    checkpoint_s: float = DEFAULT_CHECKPOINT_S

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("no learning candidate named")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"a learning candidate is named twice: {list(self.models)}")
        if self.cap < 1:
            raise ValueError(f"the learner's cap must be >= 1, got {self.cap}")
        if self.horizon_ms < 0:
            raise ValueError(f"the learner's horizon must be >= 0, got {self.horizon_ms}")
        if self.checkpoint_s <= 0:
            raise ValueError(f"the checkpoint interval must be > 0 s, got {self.checkpoint_s}")


@dataclass(frozen=True)
class ScoredBatch:
    """The requests of one delivered batch, as the learner needs them (parallel lists)."""

    ids: list[str]
    features: list[Features]
    partitions: list[int]
    offsets: list[int]
    event_times: list[int]
    #: Each request's Kafka timestamp (0: none).
    stamps: list[int]
    #: Model ids not scored in this batch (promoted to primary).
    skipped: frozenset[str] = frozenset()
    #: Per partition, the offset after the batch's last message (dead letters included).
    consumed: dict[int, int] = field(default_factory=dict)


def _learn_all(model: Any, pairs: Sequence[tuple[Features, Any]]) -> tuple[int, int, str | None]:
    """``learn_one`` on each pair, in order: (learned, raised, the first error's text)."""
    learned = errors = 0
    first: str | None = None
    for x, y in pairs:
        try:
            model.learn_one(x, y)
            learned += 1
        except Exception as exc:  # one bad label must not stop the learning
            errors += 1
            if first is None:
                first = f"{type(exc).__name__}: {exc}"[:500]
    return learned, errors, first


class OnlineLearner:
    """One learning candidate: its store, its labels reader and its checkpoint."""

    def __init__(
        self,
        cfg: Config,
        candidate: Candidate,
        index: int,
        settings: LearnSettings,
        codec: Codec,
        budget_s: float,
    ) -> None:
        if not callable(getattr(candidate.model, "learn_one", None)):
            raise ModelLoadError(
                f"--learn {candidate.model_id}: its model ({type(candidate.model).__name__}) "
                "has no learn_one(x, y); only river-style models can learn online"
            )
        self.cfg = cfg
        self.candidate = candidate
        self.index = index
        self.settings = settings
        self.budget_s = budget_s
        self.topics = Topics(cfg.prefix)
        self.path = checkpoint_path(settings.state_dir, candidate.model_id)
        self.store = FeatureStore(settings.cap, settings.horizon_ms)
        self.labels = LabelsReader(cfg, candidate.model_id, codec.decode_as)
        self.requests_next: dict[int, int] = {}
        self.learned = 0
        self.learn_errors = 0
        self.learn_timeouts = 0
        self.refilled = 0
        self.saves = 0
        self.restores = 0
        self._decode = codec.decode_as
        self._assigned: set[int] = set()
        self._revoked: set[int] = set()
        self._fresh: set[int] = set()  # labels positioned at the first scored request
        self._settle: set[int] = set()  # labels positioned from a known offset, refill first
        self._ready: list[tuple[Features, Any]] = []
        #: matched pairs waiting for the scoring to pass their label's event time
        self._held = HeldPairs()
        #: where the scoring stands on each assigned partition (idle past the config's
        #: ``idle_flush_ms``, a partition holds nothing back)
        self._progress = ScoringProgress()
        self._locate: set[int] = set()
        #: drop counters at the last checkpoint: what grew since is logged as a warning
        self._dropped_seen: dict[str, int] = {}
        self._dirty = False
        self._last_save = time.monotonic()
        self._lock: int | None = None

    @property
    def model_id(self) -> str:
        return self.candidate.model_id

    @property
    def labels_next(self) -> dict[int, int]:
        """Per partition, the next label offset to read: the reader's, checkpointed."""
        return self.labels.next

    @property
    def bad_labels(self) -> int:
        """Labels not decodable or without a value: they teach nothing."""
        return self.labels.bad

    # -- start and stop ----------------------------------------------------------------

    def restore(self) -> Candidate:
        """Lock the state file, load the checkpoint if any; the candidate to score."""
        if self._lock is None:
            self._lock = lock(self.path)
        ckpt = load(self.path, self.model_id, self.cfg.prefix)
        if ckpt is None:
            log.info(
                "learner %s: no checkpoint at %s, starting from its spec", self.model_id, self.path
            )
            return self.candidate
        store = ckpt.store
        store.cap, store.horizon_ms = self.settings.cap, self.settings.horizon_ms
        self.store = store
        self.labels.next = dict(ckpt.labels_next)
        self.requests_next = dict(ckpt.requests_next)
        for label_ms, x, y in ckpt.held:
            self._held.hold(x, y, label_ms)
        self.learned, self.learn_errors = ckpt.learned, ckpt.learn_errors
        self.learn_timeouts, self.saves = ckpt.learn_timeouts, ckpt.saves
        self.restores = ckpt.restores + 1
        self._dropped_seen = self._drop_counts()
        old = self.candidate
        restored = Candidate(old.model_id, ckpt.model, None, old.sample_rate)
        # warmed up like any dict model: untimed, on the first request (see Lanes.warm_up)
        self.candidate = restored
        log.warning(  # a restart is news: visible at the CLI's default level
            "learner %s restored from %s: %d pairs learned so far, %d features awaiting "
            "labels, %d early labels, label offsets %s",
            self.model_id,
            self.path,
            self.learned,
            len(store),
            store.early_labels,
            dict(sorted(self.labels_next.items())),
        )
        return restored

    def open(self, error_cb: Callable[[KafkaError], None]) -> None:
        """Create the labels consumer (``error_cb``: the worker's, for both its clients)."""
        self.labels.open(error_cb)

    def close(self, lanes: Lanes | None) -> None:
        """A last checkpoint (when the lane is free), then close the labels consumer."""
        try:
            if lanes is not None:
                self.checkpoint(lanes, force=True)
        except CheckpointError as exc:
            log.error("learner %s: %s", self.model_id, exc)
        finally:
            held, self._lock = self._lock, None
            try:
                self.labels.close()
            finally:
                if held is not None:
                    os.close(held)

    # -- following the worker's assignment ---------------------------------------------

    def on_assign(self, partitions: Sequence[int]) -> None:
        """Partitions of requests the group gave the worker (inside its rebalance callback:
        no Kafka call here; :meth:`settle` and :meth:`after_batch` position the labels)."""
        for p in partitions:
            self._assigned.add(p)
            self._revoked.discard(p)
            self._locate.add(p)
            self._progress.assigned(p, time.monotonic())
            if p in self.labels.next:
                self._settle.add(p)
            else:
                self._fresh.add(p)
        for p in sorted(self._revoked):  # taken away for good: another worker learns there
            dropped = self.store.drop_partition(p)
            self.labels.next.pop(p, None)
            self.requests_next.pop(p, None)
            self._progress.forget(p)
            log.info("learner %s: partition %d gone, %d entries dropped", self.model_id, p, dropped)
            self._dirty = True
        self._revoked.clear()

    def on_revoke(self, partitions: Sequence[int]) -> None:
        """Stop reading those partitions' labels; their state waits for the next assignment."""
        gone = [p for p in partitions if p in self._assigned]
        self.labels.unassign(gone)
        for p in gone:
            self._assigned.discard(p)
            self._fresh.discard(p)
            self._settle.discard(p)
            self._revoked.add(p)

    def settle(self, requests_consumer: Any) -> None:
        """Position the labels of partitions whose offset is known (the checkpoint's, or
        before a rebalance), after refilling the store with the requests scored since.

        Called between batches, before the next one is scored: the group's committed offset
        of each such partition is then where scoring resumes."""
        if not self._locate or not self.labels.is_open:
            return
        located = sorted(self._locate)
        self._locate.clear()
        topic = self.topics.requests
        try:
            committed = {
                tp.partition: tp.offset
                for tp in requests_consumer.committed(
                    [TopicPartition(topic, p) for p in located], timeout=KAFKA_CALL_S
                )
            }
            for p in located:  # where scoring resumes: the commit, or the log's start
                low, _ = requests_consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=KAFKA_CALL_S
                )
                self._progress.resumes_at(p, max(committed.get(p, -1), low))
        except KafkaException as exc:
            log.warning(
                "learner %s: cannot read the committed offsets of %s (%s): no refill (the "
                "labels of requests scored after the checkpoint will be unmatched), and "
                "learning there keeps the labels' order, not the requests' time",
                self.model_id,
                located,
                exc,
            )
            committed = {}
        parts = sorted(self._settle.intersection(located))
        self._settle.difference_update(parts)
        for p in parts:
            end = committed.get(p, -1)
            start = self.requests_next.get(p)
            if start is not None and end > start:
                self._refill(p, max(start, end - self.store.cap), end)
        self.labels.assign({p: self.labels.next[p] for p in parts})

    def _refill(self, partition: int, start: int, end: int) -> None:
        """Requests ``[start, end)`` of a partition, scored before a restart, back into the
        store (:func:`streams.learning.refill.refill`)."""
        added, last = refill(
            self.cfg, self.model_id, self._decode, self.store, self._held, partition, start, end
        )
        if last is not None:
            self.requests_next[partition] = last
        self.refilled += added
        self._dirty = True

    # -- the work between batches ------------------------------------------------------

    def after_batch(self, batch: ScoredBatch) -> None:
        """The delivered batch's requests this candidate scored go to the store."""
        self._progress.scored(batch.consumed, batch.partitions, batch.event_times, time.monotonic())
        if self.model_id in batch.skipped:
            return
        first: dict[int, int] = {}
        store, hold, nxt = self.store, self._held.hold, self.requests_next
        for rid, x, p, off, t, stamp in zip(
            batch.ids,
            batch.features,
            batch.partitions,
            batch.offsets,
            batch.event_times,
            batch.stamps,
            strict=True,
        ):
            if p in self._fresh:
                first[p] = min(first.get(p, stamp), stamp)
            pair = store.add(p, rid, t, x)
            if pair is not None:
                hold(*pair)
            nxt[p] = off + 1
        if first:
            self._fresh.difference_update(first)
            try:
                self.labels.assign_from_times(first, self.settings.horizon_ms)
            except KafkaException as exc:
                # their labels wait: positioned again on the partitions' next batch
                self._fresh.update(first)
                log.warning(
                    "learner %s: cannot position labels of %s: %s",
                    self.model_id,
                    sorted(first),
                    exc,
                )
        self._dirty = True

    def poll(self) -> int:
        """Read the labels that are there (no wait); pair them. Returns how many were read."""
        read, labels = self.labels.poll()
        store, hold = self.store, self._held.hold
        for p, rid, label_ms, y in labels:
            pair = store.label(p, rid, label_ms, y)
            if pair is not None:
                hold(*pair)
        if read:
            self._dirty = True
        return read

    def release(self, requests_consumer: Any) -> None:
        """Hand to :meth:`learn` the pairs whose label's event time the scoring has passed.

        Predict first holds request by request anyway (a request's features are stored only
        once it is scored). This keeps *time* order too: a worker catching up on a backlog
        reads one partition ahead of another, and a label learned from the head of one would
        reach the model before it answers older requests of the others, which a model
        running live could not have known. So a pair waits until every assigned partition
        that still has requests to read has scored past its label's event time; partitions
        read to their end (by the consumer's position) and quiet for
        :data:`AT_END_SETTLE_S` hold nothing back.
        """
        if self._held:
            self._ready += self._held.release(self._frontier(requests_consumer))

    def _frontier(self, consumer: Any) -> float:
        """:meth:`streams.learning.timeorder.ScoringProgress.frontier` of the assigned
        partitions, with the consumer's positions and the high watermarks of its last
        fetches (both local look-ups, no request to Kafka)."""
        topic = self.topics.requests
        assigned = sorted(self._assigned)
        positions: dict[int, int] = {}
        # on an error, our own count of what was read stands
        with contextlib.suppress(KafkaException):
            if assigned:
                positions = {
                    tp.partition: tp.offset
                    for tp in consumer.position([TopicPartition(topic, p) for p in assigned])
                }

        def ends(p: int) -> tuple[int, int]:
            try:
                _, h = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            except KafkaException:
                h = -1
            return positions.get(p, -1), int(h)

        now = time.monotonic()
        idle_before = now - self.cfg.idle_flush_ms / 1000.0
        settled_before = now - AT_END_SETTLE_S
        return self._progress.frontier(assigned, ends, idle_before, settled_before)

    def learn(self, lanes: Lanes) -> None:
        """``learn_one`` on every ready pair, on the candidate's lane; kept when it is busy."""
        if not self._ready:
            return
        pairs, self._ready = self._ready, []
        call = lanes.call(
            self.index,
            lambda: _learn_all(self.candidate.model, pairs),
            timeout=self.budget_s,
        )
        if not call.ran:
            self._ready = pairs + self._ready  # the lane is busy (a hung call): later
            return
        self._dirty = True
        if call.timed_out:
            self.learn_timeouts += len(pairs)
            log.warning(
                "learner %s: learn_one on %d labels ran past the %.1f s budget; its lane is busy "
                "until it returns",
                self.model_id,
                len(pairs),
                self.budget_s,
            )
            return
        if call.failure is not None:
            self.learn_errors += len(pairs)
            log.warning("learner %s: learning failed: %s", self.model_id, call.failure)
            return
        learned, errors, first = call.result
        self.learned += learned
        if errors:
            if not self.learn_errors:
                log.warning("learner %s: learn_one raised: %s", self.model_id, first)
            self.learn_errors += errors

    def checkpoint(self, lanes: Lanes, *, force: bool = False) -> bool:
        """Write the checkpoint when due (``checkpoint_s``) or forced, and anything changed.

        Only with every ready pair learned (their labels' offsets are in it) and the lane
        free (the model is pickled on it, never while it changes)."""
        if not self._dirty:
            return False
        if not force and time.monotonic() - self._last_save < self.settings.checkpoint_s:
            return False
        self.learn(lanes)
        if self._ready:
            return False
        ckpt = Checkpoint(
            model_id=self.model_id,
            prefix=self.cfg.prefix,
            model=self.candidate.model,
            store=self.store,
            labels_next=dict(self.labels.next),
            requests_next=dict(self.requests_next),
            held=self._held.items(),
            learned=self.learned,
            learn_errors=self.learn_errors,
            learn_timeouts=self.learn_timeouts,
            saves=self.saves + 1,
            restores=self.restores,
        )
        call = lanes.call(
            self.index,
            lambda: pickle.dumps(ckpt, protocol=pickle.HIGHEST_PROTOCOL),
            PICKLE_TIMEOUT_S,
        )
        if not call.ok:
            log.warning(
                "learner %s: checkpoint not written (its lane is busy, or pickling failed: %s)",
                self.model_id,
                call.failure,
            )
            return False
        try:
            save(self.path, call.result)
        except CheckpointError as exc:
            if force:
                raise
            # learning goes on in memory; a crash before the next success loses more of it
            log.error(
                "learner %s: %s (trying again in %.0f s)",
                self.model_id,
                exc,
                self.settings.checkpoint_s,
            )
            self._last_save = time.monotonic()
            return False
        self.saves += 1
        self._dirty = False
        self._last_save = time.monotonic()
        s = self.store.stats
        log.info(
            "learner %s checkpoint %d (%d bytes): learned %d, awaiting %d, early %d, "
            "unmatched %d, evicted %d, expired %d, duplicate labels %d",
            self.model_id,
            self.saves,
            len(call.result),
            self.learned,
            len(self.store),
            self.store.early_labels,
            s.unmatched,
            s.evicted,
            s.expired,
            s.label_duplicates,
        )
        self._warn_dropped()
        return True

    def _warn_dropped(self) -> None:
        """One warning per checkpoint interval when something was dropped since the last
        one: never silent, never one line per event."""
        now = self._drop_counts()
        grown = {k: v - self._dropped_seen.get(k, 0) for k, v in now.items()}
        self._dropped_seen = now
        if any(grown.values()):
            log.warning(
                "learner %s since its last checkpoint: %s",
                self.model_id,
                ", ".join(f"{v} {k}" for k, v in grown.items() if v),
            )

    def _drop_counts(self) -> dict[str, int]:
        s = self.store.stats
        return {
            "features evicted (cap)": s.evicted,
            "features expired (horizon)": s.expired,
            "labels unmatched": s.unmatched,
            "entries of partitions gone": s.revoked,
            "labels not decodable or without a value": self.bad_labels,
            "learn_one errors": self.learn_errors,
            "learn_one timeouts": self.learn_timeouts,
        }

    def report(self) -> dict[str, Any]:
        """Counters for :class:`streams.worker.WorkerStats` and the closing log line."""
        out: dict[str, Any] = {
            "learned": self.learned,
            "learn_errors": self.learn_errors,
            "learn_timeouts": self.learn_timeouts,
            "bad_labels": self.bad_labels,
            "refilled": self.refilled,
            "awaiting": len(self.store),
            "early_waiting": self.store.early_labels,
            "checkpoints": self.saves,
            "restores": self.restores,
        }
        out.update(vars(self.store.stats))
        return out
