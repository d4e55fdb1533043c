"""The producer-side SDK: a production service mirrors its requests and predictions with it.

A :class:`Tap` sits on the service's request path, so it promises three things:

* **It never blocks and never raises.** ``record_request`` / ``record_prediction`` check a
  sampling decision, append one tuple to a bounded in-memory buffer and return. Anything
  that goes wrong (a full buffer, arguments that cannot be encoded, Kafka being away) is
  counted in :meth:`Tap.stats` and, at most every few seconds, logged, but never raised
  into the service. A mirror that can take the service down is worse than no mirror.
* **Its cost on the caller's thread is near a raw ``produce()``.** Avro encoding costs
  ~10x a raw produce, so a background daemon thread does it: it takes batches from the
  buffer, encodes them, hands them to librdkafka (``produce`` then one ``poll(0)`` per
  batch) and counts deliveries. ``bench/tap.py`` measures the caller's cost against a raw
  produce, mean and p99.
* **Sampling is deterministic by request id,** so a request is mirrored with all of its
  predictions or not at all, in every process of the service, and any other
  implementation can reproduce the decision: a request is sampled when
  ``crc32(request_id as UTF-8) < floor(sample_rate * 2**32)`` (CRC-32 as in zlib and
  ``java.util.zip.CRC32``).

Accounting: after :meth:`Tap.close`, every ``record_*`` call is counted exactly once in
one of ``sampled_out``, ``sent``, ``failed``, ``dropped`` or ``encode_errors`` (see
:class:`TapStats`). The tap publishes these counters as a ``TapStats`` event on
``<prefix>.tap-stats`` (keyed by :attr:`Tap.instance`) every ``stats_interval_s`` seconds
(``tap_stats_interval_s``, default 10) and once more at close, so the conservation law
starts at the service: what it saw = what reached Kafka + what was sampled out or lost.

Promotions: the tap follows ``<prefix>.control`` in a second daemon thread
(:class:`streams.control.PrimaryFollower`). :attr:`Tap.primary` says which model the
service should answer with now, and ``on_promote`` (optional) is called with each new
:class:`~streams.control.Promotion`, on that thread; a promotion published by
``understudy promote`` or the evaluator's auto-promotion reached a running tap 0.5 s after
the command in ``tests/integration/test_promotion.py``, and a tap started later reads it
from the topic's history. Memory is bounded twice: by ``buffer_size`` records waiting for the
encoder, and by librdkafka's own queue (``queue.buffering.max.messages``), whose messages
expire after ``message.timeout.ms`` (30 s unless configured) when Kafka is away.

Messages are keyed by ``request_id`` with the ``murmur2_random`` partitioner, the Java
client's, so that requests and predictions of one id land in the same partition number of
the co-partitioned topics whichever client produced them.

Ownership: the mappings passed to ``record_*`` are read later, on the tap's thread. Do not
mutate them after the call (pass a copy if you will), or the mirrored record may show the
change. Fork: librdkafka's threads and the tap's do not survive ``fork()``, so a tap made
before a pre-forking server forks its workers starts again in each child, at the fork
(``os.register_at_fork``): its own producer, encoder thread and control follower, counters
at 0 under a new :attr:`Tap.instance`. The parent's buffered records stay the parent's to
send. Making the tap in each worker after the fork works as well, and costs nothing at the
fork.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import socket
import threading
import time
import uuid
import weakref
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from streams.clientlog import CLIENT_LOG
from streams.config import Config
from streams.control import PrimaryFollower, Promotion
from streams.errors import ConfigError
from streams.kafka import Topics, client_config, scrub, validate_client_options
from streams.schemas import default_codec

__all__ = ["PRODUCER_DEFAULTS", "Promotion", "Tap", "TapStats", "producer_config"]

log = logging.getLogger(__name__)

#: Producer settings of the tap; any of them is overridden by ``config.kafka``.
PRODUCER_DEFAULTS: Final[Mapping[str, str]] = {
    # The Java client's partitioner, so keys land where a Java (or Kafka Streams) producer
    # of the same topics would put them: the joiner relies on co-partitioning.
    "partitioner": "murmur2_random",
    "linger.ms": "5",
    "enable.idempotence": "true",
    "compression.type": "lz4",
    # Bounds how long (and so how much) librdkafka holds messages while Kafka is away.
    "message.timeout.ms": "30000",
    "client.id": "understudy-tap",
}

#: Kinds of buffered items (first element of the tuple).
_REQUEST: Final = 0
_PREDICTION: Final = 1

#: Records the encoder thread takes from the buffer at a time: one ``poll(0)`` each.
_BATCH: Final = 512
#: How long the encoder thread sleeps in ``poll`` when the buffer is empty (seconds).
_IDLE_POLL: Final = 0.005
#: How long one batch may wait for room in librdkafka's full queue before dropping.
_RETRY_BUDGET: Final = 0.1
#: Minimum seconds between two warnings about failures, drops or librdkafka errors.
_REPORT_EVERY: Final = 10.0
#: ``close`` timeout used when the interpreter exits with the tap still open.
_ATEXIT_TIMEOUT: Final = 5.0
#: Thresholds are compared with a 32-bit CRC: this one samples every id.
_EVERY_ID: Final = 1 << 32

_now_ns = time.time_ns
_monotonic = time.monotonic


@dataclass(frozen=True, slots=True)
class TapStats:
    """Counters of a tap since it was created.

    After :meth:`Tap.close` every ``record_*`` call is in exactly one of ``sampled_out``,
    ``sent``, ``failed``, ``dropped`` or ``encode_errors``; before it, the difference is
    still in flight.
    """

    #: Records taken into the buffer (the calls that returned True).
    accepted: int = 0
    #: Calls skipped by sampling.
    sampled_out: int = 0
    #: Records lost to local limits: buffer full (or tap closed) at the call, librdkafka's
    #: queue still full after a brief retry, or still buffered when ``close`` timed out.
    dropped: int = 0
    #: Records the broker acknowledged.
    sent: int = 0
    #: Records whose delivery failed: timed out while Kafka was away, rejected by the
    #: broker, or purged from librdkafka's queue because ``close`` timed out. A record that
    #: timed out after it was sent may still have been written (librdkafka cannot know:
    #: the broker's answer never came), so what reached Kafka is at least ``sent`` and at
    #: most ``sent + failed``; the joiner's figures count what is on the topic.
    failed: int = 0
    #: Calls whose arguments could not be encoded against the Avro schema (or raised).
    encode_errors: int = 0


_Item = tuple[Any, ...]


def producer_config(config: Config) -> dict[str, Any]:
    """The tap producer's librdkafka settings: the user's ``config.kafka`` over the defaults.

    The user's options win, so SASL, TLS and tuning pass through unchanged, and any of
    :data:`PRODUCER_DEFAULTS` can be changed where a deployment needs to. librdkafka's log
    lines and errors go to the rate-limited :data:`streams.clientlog.CLIENT_LOG`.
    """
    conf = client_config(config)
    for option, value in PRODUCER_DEFAULTS.items():
        conf.setdefault(option, value)
    return conf


class Tap:
    """Mirrors a service's requests and primary predictions to Kafka without slowing it.

    Create one per process, at start-up, and share it between threads: ``record_*`` are
    thread-safe. Construction raises (``ConfigError``, ``BrokerError``) on a bad or missing
    configuration, because that is a deployment mistake to see at once; after that nothing
    raises. ``close()`` (or leaving a ``with`` block, or interpreter exit) flushes.

    >>> tap = Tap(Config(bootstrap_servers="127.0.0.1:1", kafka={"message.timeout.ms": "100"}))
    >>> tap.record_request("r-1", {"amount": 12.5}, {"country": "FR"}, context={"tenant": "a"})
    True
    >>> tap.record_prediction("r-1", "fraud@3", value=0.12, latency_ms=4.2)
    True
    >>> stats = tap.close(timeout=2.0)
    >>> (stats.accepted, stats.sent + stats.failed + stats.dropped)
    (2, 2)
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        sample_rate: float = 1.0,
        buffer_size: int = 100_000,
        use_case: str = "",
        primary: str | None = None,
        on_promote: Callable[[Promotion], None] | None = None,
        follow_control: bool = True,
        stats_interval_s: float | None = None,
    ) -> None:
        if not isinstance(sample_rate, int | float) or not 0.0 <= sample_rate <= 1.0:
            raise ConfigError(f"sample_rate must be within [0, 1], got {sample_rate!r}")
        if buffer_size < 1:
            raise ConfigError(f"buffer_size must be >= 1, got {buffer_size}")
        if not isinstance(use_case, str):
            raise ConfigError(f"use_case must be a string, got {use_case!r}")
        self.config = config if config is not None else Config.load()
        self.sample_rate = float(sample_rate)
        self.buffer_size = buffer_size
        self.use_case = use_case
        self._threshold = _EVERY_ID if sample_rate >= 1.0 else math.floor(sample_rate * _EVERY_ID)

        topics = Topics(self.config.prefix)
        self._topics = (topics.requests, topics.predictions)
        self._stats_topic = topics.tap_stats
        interval = (
            self.config.tap_stats_interval_s if stats_interval_s is None else stats_interval_s
        )
        if interval < 0:
            raise ConfigError(f"stats_interval_s must be >= 0, got {interval}")
        self._stats_every = interval if interval > 0 else math.inf
        self._encode_stats: Callable[[dict[str, Any]], bytes] = default_codec().encoder("TapStats")
        codec = default_codec()
        self._encode_request: Callable[[dict[str, Any]], bytes] = codec.encoder("Request")
        self._encode_prediction: Callable[[dict[str, Any]], bytes] = codec.encoder("Prediction")

        # A bad option is refused here, naming it (never a secret's value). librdkafka's log
        # lines and client errors go to the shared rate-limited CLIENT_LOG (see
        # producer_config), so an outage costs the service a line per 30 s, not 3 a second.
        validate_client_options(self.config)
        self._initial_primary = primary
        self._on_promote = on_promote
        self._follow_control = follow_control
        self._start(primary)
        _LIVE.add(self)
        atexit.register(self._close_at_exit)
        log.debug(
            "tap started: topics %s, sample_rate %s, buffer %d, config %s",
            self._topics,
            self.sample_rate,
            buffer_size,
            self.config.redacted(),
        )

    def _start(self, primary: str | None) -> None:
        """Counters, buffer, producer, encoder thread and control follower: at construction,
        and again in a child process after ``fork()`` (:func:`_restart_after_fork`)."""
        #: this tap's id in its TapStats reports: host:pid:random, new at every start
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._started_ms = _now_ns() // 1_000_000
        self._next_stats = _monotonic() + self._stats_every
        self._stats_delivered = False
        # Written by callers (any thread): guarded by _lock. Only off the fast path.
        self._lock = threading.Lock()
        self._sampled_out = 0
        self._dropped_at_call = 0
        self._errors_at_call = 0
        # Written by the encoder thread only (it alone polls the producer, so delivery
        # callbacks run there too); read by anyone.
        self._sent = 0
        self._failed = 0
        self._dropped_later = 0
        self._errors_later = 0
        self._last_error = ""
        # Moving items out of the buffer and counting them is atomic under _take_lock, so
        # stats() and flush() never see an item in neither place.
        self._buffer: deque[_Item] = deque()
        self._take_lock = threading.Lock()
        self._taken = 0
        self._in_hand = 0

        self._open = True
        self._close_lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = math.inf
        self._done = threading.Event()
        self._reported = (0, 0, 0)
        self._next_report = _monotonic() + _REPORT_EVERY

        conf = producer_config(self.config)
        conf["on_delivery"] = self._on_delivery
        conf["error_cb"] = self._on_error
        try:
            self._producer: Producer | None = Producer(conf)
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(
                f"invalid producer configuration for the tap: {scrub(str(exc), self.config)}"
            ) from None

        self._thread = threading.Thread(target=self._run, name="understudy-tap", daemon=True)
        self._thread.start()
        self._follower: PrimaryFollower | None = None
        if self._follow_control:
            try:
                self._follower = PrimaryFollower(
                    self.config, primary=primary, on_promote=self._on_promote
                )
            except Exception as exc:  # the mirror still works; only promotions are not seen
                log.warning(
                    "tap: cannot follow %s: %s",
                    Topics(self.config.prefix).control,
                    scrub(str(exc), self.config),
                )

    # ------------------------------------------------------------------------------------
    # The caller's side: cheap, lock-free on the accepted path, never raises.

    def record_request(
        self,
        request_id: str,
        numeric: Mapping[str, float] | None = None,
        categorical: Mapping[str, str] | None = None,
        *,
        context: Mapping[str, str] | None = None,
        event_time_ms: int | None = None,
    ) -> bool:
        """Mirror one request; True if it was taken for sending.

        ``event_time_ms`` defaults to now, read at the call (not when the record is sent),
        so windows are cut on when the service saw the request. False means sampled out,
        dropped (buffer full, tap closed) or a ``request_id`` that is not a string; other
        arguments that cannot be encoded are found on the tap's thread and counted as
        ``encode_errors``, see :meth:`stats`.
        """
        try:
            if not isinstance(request_id, str):
                self._count_error()
                return False
            if event_time_ms is None:
                event_time_ms = _now_ns() // 1_000_000
            if self._threshold < _EVERY_ID and zlib.crc32(request_id.encode()) >= self._threshold:
                self._count_sampled_out()
                return False
            if self._open and len(self._buffer) < self.buffer_size:
                self._buffer.append(
                    (_REQUEST, request_id, event_time_ms, numeric, categorical, context)
                )
                return True
            self._count_dropped()
            return False
        except Exception:
            self._count_error()
            return False

    def record_prediction(
        self,
        request_id: str,
        model_id: str,
        *,
        value: float | None = None,
        label: str | None = None,
        scores: Mapping[str, float] | None = None,
        latency_ms: float | None = None,
        error: str | None = None,
        event_time_ms: int | None = None,
    ) -> bool:
        """Mirror the service's own (PRIMARY) prediction for a request; True if taken.

        Pass the request's event time when you have it, so that a slow answer still lands
        in its request's window; it defaults to now, read at the call. ``model_id`` is
        ``name@version``; ``value`` for regressors, ``label`` and ``scores`` for
        classifiers, ``error`` (with no output) when the model failed. False as for
        :meth:`record_request`.
        """
        try:
            if not isinstance(request_id, str):
                self._count_error()
                return False
            if event_time_ms is None:
                event_time_ms = _now_ns() // 1_000_000
            if self._threshold < _EVERY_ID and zlib.crc32(request_id.encode()) >= self._threshold:
                self._count_sampled_out()
                return False
            if self._open and len(self._buffer) < self.buffer_size:
                self._buffer.append(
                    (
                        _PREDICTION,
                        request_id,
                        event_time_ms,
                        model_id,
                        value,
                        label,
                        scores,
                        latency_ms,
                        error,
                    )
                )
                return True
            self._count_dropped()
            return False
        except Exception:
            self._count_error()
            return False

    def sampled(self, request_id: str) -> bool:
        """Whether ``request_id`` is mirrored at this tap's rate (same answer everywhere).

        Useful to skip work that only feeds the mirror. An id that is not a string (or not
        encodable as UTF-8) is never sampled: it could not be mirrored anyway.
        """
        if self._threshold >= _EVERY_ID:
            return True
        try:
            return zlib.crc32(request_id.encode()) < self._threshold
        except Exception:
            return False

    def _count_sampled_out(self) -> None:
        with self._lock:
            self._sampled_out += 1

    def _count_dropped(self) -> None:
        with self._lock:
            self._dropped_at_call += 1

    def _count_error(self) -> None:
        with self._lock:
            self._errors_at_call += 1

    # ------------------------------------------------------------------------------------
    # Promotions: which model the service should answer with.

    @property
    def primary(self) -> str | None:
        """The model id that is primary now: the latest promotion on ``<prefix>.control``,
        or the ``primary`` given at construction until there is one (None if neither).

        Cheap (an attribute read), never blocks, never raises: call it per request and
        route to that model. A tap reads the whole control topic when it starts, so one
        started after a promotion knows it within a moment (``caught_up``).
        """
        follower = self._follower
        if follower is None:
            return self._initial_primary
        return follower.primary

    @property
    def last_promotion(self) -> Promotion | None:
        """The latest promotion read: who ordered it, why, and the old primary's fate
        (``old_primary``: RETIRE it, or keep it running as a SHADOW candidate)."""
        follower = self._follower
        return None if follower is None else follower.last_promotion

    def caught_up(self, timeout: float = 0.0) -> bool:
        """Whether the control topic's history has been read (waits up to ``timeout``)."""
        follower = self._follower
        return follower is not None and follower.caught_up.wait(timeout)

    # ------------------------------------------------------------------------------------
    # Observing and stopping.

    def stats(self) -> TapStats:
        """A consistent-enough snapshot of the counters (exact once closed)."""
        with self._take_lock:
            accepted = self._taken + len(self._buffer)
        with self._lock:
            sampled_out = self._sampled_out
            dropped_at_call = self._dropped_at_call
            errors_at_call = self._errors_at_call
        return TapStats(
            accepted=accepted,
            sampled_out=sampled_out,
            dropped=dropped_at_call + self._dropped_later,
            sent=self._sent,
            failed=self._failed,
            encode_errors=errors_at_call + self._errors_later,
        )

    def _pending(self) -> int:
        """Records accepted but not yet delivered or failed (buffered, encoding, in flight)."""
        with self._take_lock:
            waiting = len(self._buffer) + self._in_hand
        producer = self._producer
        return waiting + (len(producer) if producer is not None else 0)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` seconds for everything accepted so far to be delivered.

        Returns how many records are still pending (0 when all are settled). The waiting
        happens here; the encoder thread keeps doing the work, so delivery callbacks never
        run on the caller's thread.
        """
        deadline = _monotonic() + max(0.0, timeout)
        while True:
            remaining = self._pending()
            if remaining == 0 or self._done.is_set() or _monotonic() >= deadline:
                return remaining
            time.sleep(0.002)

    def close(self, timeout: float = 10.0) -> TapStats:
        """Stop accepting, send what is buffered, wait for deliveries; idempotent.

        Returns within about ``timeout`` seconds even when Kafka is away: what is still
        buffered then counts as ``dropped`` and what librdkafka still holds is purged and
        counts as ``failed``, so the final :class:`TapStats` accounts for every call.
        """
        with self._close_lock:
            if self._open:
                self._open = False
                self._deadline = _monotonic() + max(0.0, timeout)
                self._stop.set()
                atexit.unregister(self._close_at_exit)
        if self._follower is not None:
            self._follower.close(timeout=min(0.2, max(0.0, timeout)))
        if self._thread is not threading.current_thread():
            self._thread.join(max(0.0, self._deadline - _monotonic()) + 0.05)
        if self._thread.is_alive():
            log.warning("tap: the encoder thread did not stop within %.1f s", timeout)
        return self.stats()

    def _close_at_exit(self) -> None:
        stats = self.close(timeout=_ATEXIT_TIMEOUT)
        log.debug("tap closed at interpreter exit: %s", stats)

    def __enter__(self) -> Tap:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------------------------
    # The encoder thread: owns the producer, encodes, produces, polls.

    def _run(self) -> None:
        producer = self._producer
        assert producer is not None
        try:
            while not self._stop.is_set():
                try:
                    batch = self._take(_BATCH)
                    if batch:
                        self._send(producer, batch, _monotonic() + _RETRY_BUDGET)
                        producer.poll(0)
                    else:
                        producer.poll(_IDLE_POLL)
                    self._report()
                    if _monotonic() >= self._next_stats:
                        self._next_stats = _monotonic() + self._stats_every
                        self._publish_stats(producer, final=False)
                except Exception:  # a bug here must not stop the mirror for good
                    log.exception("tap: unexpected error in the encoder thread")
                    time.sleep(_IDLE_POLL)
            self._shutdown(producer)
        except Exception:
            log.exception("tap: unexpected error while closing")
        finally:
            self._producer = None  # releases librdkafka's threads and sockets
            self._done.set()

    def _take(self, limit: int) -> list[_Item]:
        buffer = self._buffer
        with self._take_lock:
            n = min(len(buffer), limit)  # only this thread removes items: all n are there
            batch = [buffer.popleft() for _ in range(n)]
            self._taken += n
            self._in_hand = n
        return batch

    def _send(self, producer: Producer, batch: list[_Item], retry_until: float) -> None:
        try:
            self._send_items(producer, batch, retry_until)
        finally:
            self._in_hand = 0

    def _send_items(self, producer: Producer, batch: list[_Item], retry_until: float) -> None:
        produce = producer.produce
        topics = self._topics
        for item in batch:
            try:
                value = self._encode(item)
            except Exception as exc:
                self._errors_later += 1
                self._last_error = f"cannot encode a {('Request', 'Prediction')[item[0]]}: {exc}"
                continue
            topic = topics[item[0]]
            key = item[1]
            try:
                produce(topic, value, key)
            except BufferError:
                if not self._produce_retry(producer, topic, value, key, retry_until):
                    self._dropped_later += 1
            except Exception as exc:  # fatal producer error, bad key type, ...
                self._failed += 1
                self._last_error = f"produce failed: {exc}"

    def _produce_retry(
        self, producer: Producer, topic: str, value: bytes, key: str, until: float
    ) -> bool:
        """librdkafka's queue is full: poll (serving deliveries) and retry until ``until``."""
        until = min(until, self._deadline)
        while _monotonic() < until:
            producer.poll(_IDLE_POLL)
            try:
                producer.produce(topic, value, key)
                return True
            except BufferError:
                continue
        self._last_error = "librdkafka queue full (Kafka slow or away)"
        return False

    def _encode(self, item: _Item) -> bytes:
        if item[0] == _REQUEST:
            _, request_id, event_time, numeric, categorical, context = item
            return self._encode_request(
                {
                    "request_id": request_id,
                    "event_time": event_time,
                    "use_case": self.use_case,
                    "numeric_features": numeric or {},
                    "categorical_features": categorical or {},
                    "context": context or {},
                }
            )
        _, request_id, event_time, model_id, value, label, scores, latency_ms, error = item
        return self._encode_prediction(
            {
                "request_id": request_id,
                "event_time": event_time,
                "model_id": model_id,
                "role": "PRIMARY",
                "value": value,
                "label": label,
                "scores": scores or {},
                "latency_ms": latency_ms,
                "error": error,
                "use_case": self.use_case,
            }
        )

    def stats_record(self, *, final: bool = False) -> dict[str, Any]:
        """The tap's counters as a ``TapStats`` record: the service's side of the law
        ``seen = sent + sampled_out + dropped + failed + encode_errors + in_flight``.

        ``in_flight`` is what is accepted and not settled yet; exact when called on the
        encoder thread (the only writer of the settled counts), as the reports are.
        """
        with self._lock:
            at_call = self._dropped_at_call + self._errors_at_call
        st = self.stats()
        seen = st.accepted + st.sampled_out + at_call
        settled = st.sent + st.sampled_out + st.dropped + st.failed + st.encode_errors
        return {
            "tap": self.instance,
            "use_case": self.use_case,
            "started_at": self._started_ms,
            "time": _now_ns() // 1_000_000,
            "final": final,
            "seen": seen,
            "accepted": st.accepted,
            "sampled_out": st.sampled_out,
            "dropped": st.dropped,
            "sent": st.sent,
            "failed": st.failed,
            "encode_errors": st.encode_errors,
            "in_flight": seen - settled,
        }

    def _publish_stats(self, producer: Producer, *, final: bool) -> None:
        """Produce one TapStats report (its delivery is not one of the service's records:
        it has its own callback and counts in none of the counters)."""
        try:
            value = self._encode_stats(self.stats_record(final=final))
            producer.produce(
                self._stats_topic,
                value,
                self.instance,
                on_delivery=self._on_stats_delivery,
            )
        except Exception as exc:  # a full queue or a fatal client: the next report retries
            self._last_error = f"cannot publish the tap's counters: {exc}"

    def _on_stats_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self._stats_delivered = True
        else:
            self._last_error = f"the tap's counters were not delivered: {err.str()}"

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self._sent += 1
        else:
            self._failed += 1
            self._last_error = f"delivery failed: {err.str()}"

    def _on_error(self, err: KafkaError) -> None:
        """librdkafka client-level errors (brokers down, auth): kept as the last error for
        the tap's own loss reports, and logged (rate-limited) by the shared CLIENT_LOG."""
        if err.fatal():
            self._last_error = f"fatal Kafka client error: {err.str()}"
        CLIENT_LOG.error_cb(err)

    def _report(self) -> None:
        """Warn, at most every few seconds, that records are being lost, and why."""
        now = _monotonic()
        if now < self._next_report:
            return
        self._next_report = now + _REPORT_EVERY
        stats = self.stats()
        current = (stats.failed, stats.dropped, stats.encode_errors)
        if current != self._reported:
            failed, dropped, errors = (c - r for c, r in zip(current, self._reported, strict=True))
            self._reported = current
            log.warning(
                "tap: %d records failed delivery, %d dropped, %d not encodable in the last "
                "%.0f s (last error: %s)",
                failed,
                dropped,
                errors,
                _REPORT_EVERY,
                self._last_error or "none",
            )

    def _shutdown(self, producer: Producer) -> None:
        """Drain the buffer and flush within the close deadline; account for the rest."""
        # Keep a little of the caller's timeout for purging and counting.
        reserve = min(0.5, max(0.0, self._deadline - _monotonic()) * 0.2)
        deadline = self._deadline - reserve
        while True:
            batch = self._take(_BATCH)
            if not batch:
                break
            if _monotonic() < deadline:
                self._send(producer, batch, _monotonic() + _RETRY_BUDGET)
                producer.poll(0)
            else:
                self._dropped_later += len(batch)
                self._in_hand = 0
        left = producer.flush(max(0.0, deadline - _monotonic()))
        if left:
            # Out of time: purge, so that every remaining message gets a (failed) delivery
            # report now instead of vanishing with the producer.
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.flush(max(0.0, min(reserve, self._deadline - _monotonic())))
        self._report_final()
        # every call is settled now: the last report is exact (in_flight 0). It is waited
        # for (within the deadline) only if the broker has acknowledged something: with
        # Kafka away, close() must not spend its whole timeout on a report that cannot go
        self._publish_stats(producer, final=True)
        if self._sent or self._stats_delivered:
            producer.flush(max(0.0, self._deadline - _monotonic()))

    def _report_final(self) -> None:
        stats = self.stats()
        lost = stats.failed + stats.dropped + stats.encode_errors
        if lost:
            log.warning(
                "tap closed: %d sent, %d failed, %d dropped, %d not encodable (last error: %s)",
                stats.sent,
                stats.failed,
                stats.dropped,
                stats.encode_errors,
                self._last_error or "none",
            )
        else:
            log.debug("tap closed: %s", stats)


#: Taps of this process, for :func:`_restart_after_fork`.
_LIVE: weakref.WeakSet[Tap] = weakref.WeakSet()
#: The parent's clients as a forked child inherited them: never used or destroyed there
#: (librdkafka's threads did not survive the fork, and destroying them would wait for
#: those threads), only kept from the garbage collector.
_INHERITED: list[Any] = []


def _restart_after_fork() -> None:
    """In a child after ``fork()`` (a pre-forking server's worker): each open tap starts
    again with its own producer, encoder thread and control follower, its counters at 0
    under a new :attr:`Tap.instance`. Before this, every record of the child stayed in a
    buffer nothing read, and counted nowhere: ``record_*`` returned True and nothing
    reached Kafka. What the parent had buffered is the parent's to send."""
    for tap in list(_LIVE):
        _INHERITED.append((tap._producer, tap._follower))
        if not tap._open:
            tap._producer = None
            tap._follower = None
            continue
        try:
            tap._start(tap.primary)
        except Exception:  # never raise into the fork; the tap counts what it drops
            log.exception("tap: cannot start again after fork(); its records are dropped")
            tap._open = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_restart_after_fork)
