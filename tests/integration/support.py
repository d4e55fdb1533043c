"""Helpers shared by the integration tests: run a stage as a real process, read topics."""

from __future__ import annotations

import io
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from hypothesis import strategies as st

from streams.config import Config
from streams.kafka import Topics, ensure_topics
from streams.metrics.partial import PartialStats
from streams.schemas import _strip_logical, default_codec, schema_dir

BASE_TIME = 1_700_000_000_000
"""A fixed event time, for tests that only check it is carried through unchanged."""


def recent_base(n: int, step_ms: int = 10) -> int:
    """An event time for ``n`` events ``step_ms`` apart that all end 10 s ago, on a window
    boundary: the joiner refuses event times far from their message's Kafka timestamp."""
    now = int(time.time() * 1000)
    return (now - n * step_ms - 10_000) // 10_000 * 10_000


def pipeline_cfg(bootstrap: str, prefix: str, **overrides: Any) -> Config:
    """Settings for a fault test of the whole pipeline: short windows, a join TTL longer
    than the data's span (no join expires while a backlog is read), and a short session
    (a SIGKILLed member without --instance holds its partitions only this long)."""
    settings: dict[str, Any] = {
        "window_ms": 2000,
        "lateness_ms": 1000,
        "idle_flush_ms": 1500,
        "join_ttl_ms": 30_000,
        "kafka": {"session.timeout.ms": "6000"},
    }
    settings.update(overrides)
    return Config(bootstrap_servers=bootstrap, prefix=prefix, **settings)


def stage(cfg: Config, role: str, *argv: str, log: Path) -> subprocess.Popen[bytes]:
    """Start ``understudy <role>`` as its own process (own session, so it can be SIGKILLed)."""
    env = dict(os.environ)
    env.update(cfg.to_env())
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", role, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the stage and everything in its session: no cleanup runs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill(proc)


def read_all(
    cfg: Config,
    topic: str,
    idle_s: float = 3.0,
    max_s: float = 60.0,
    isolation: str = "read_committed",
) -> list[tuple[bytes | None, bytes | None, int]]:
    """Every committed message of ``topic`` as (key, value, partition), in partition order
    (``isolation="read_uncommitted"``: aborted and open transactions' messages too)."""
    c = Consumer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "group.id": f"read-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": isolation,
        }
    )
    # assign, not subscribe: no group join to wait for, so idle_s really means "nothing new"
    partitions = c.list_topics(topic, timeout=30).topics[topic].partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
    out: list[tuple[bytes | None, bytes | None, int]] = []
    last = time.monotonic()
    start = last
    try:
        while time.monotonic() - last < idle_s and time.monotonic() - start < max_s:
            msgs = c.consume(num_messages=10000, timeout=0.5)
            for m in msgs:
                if m.error():
                    continue
                out.append((m.key(), m.value(), m.partition() or 0))
            if msgs:
                last = time.monotonic()
    finally:
        c.close()
    return out


def snapshots(cfg: Config, idle_s: float = 2.0) -> list[dict[str, Any]]:
    codec = default_codec()
    return [
        codec.decode_as("MetricSnapshot", v)
        for _, v, _ in read_all(cfg, Topics(cfg.prefix).metrics, idle_s=idle_s)
    ]


def wait_for(
    check: Callable[[], Any], timeout: float, what: str, procs: list[Any] | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        for p in procs or []:
            if p.poll() is not None:
                raise AssertionError(f"a stage exited with {p.returncode} while waiting for {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def answer_or_none(check: Callable[[], Any]) -> Callable[[], Any]:
    """``check`` for :func:`wait_for`, reading a Kafka error as "not yet" (a fresh group's
    coordinator answers "Not coordinator" while it loads)."""

    def run() -> Any:
        try:
            return check()
        except KafkaException:
            return None

    return run


def final_cumulative(cfg: Config, pairs: int, candidates: int) -> dict[str, dict[str, Any]] | None:
    """The last CUMULATIVE snapshot per candidate, once each shows ``pairs`` pairs."""
    last: dict[str, dict[str, Any]] = {}
    for s in snapshots(cfg, idle_s=1.0):
        if s["scope"] == "CUMULATIVE":
            last[s["candidate"]] = s
    done = [s for s in last.values() if s["coverage"]["pairs"] >= pairs]
    return last if len(done) >= candidates else None


def judged(cfg: Config, logs: Path, pairs: int, candidates: int) -> dict[str, dict[str, Any]]:
    """Run a joiner and an evaluator over what is on the topics until every candidate's
    cumulative MetricSnapshot counts ``pairs`` pairs; those snapshots, by candidate."""
    evaluator = stage(cfg, "evaluator", log=logs / "evaluator.log")
    joiner = stage(cfg, "joiner", log=logs / "joiner.log")
    try:
        final: dict[str, dict[str, Any]] = wait_for(
            lambda: final_cumulative(cfg, pairs, candidates),
            timeout=240,
            what="cumulative snapshots with every pair",
            procs=[evaluator, joiner],
        )
    finally:
        terminate(joiner)
        terminate(evaluator)
    return final


def send(p: Producer, topic: str, value: bytes | None, key: bytes | None, **kw: Any) -> None:
    """``produce`` that waits for room when the client's queue is full.

    A broker that has just started (or a topic whose leader is still being elected) can
    hold deliveries back long enough for 100,000 queued messages to fill the queue; a test
    that fills topics must wait then, not fail with ``BufferError``.
    """
    while True:
        try:
            p.produce(topic, value, key, **kw)
            return
        except BufferError:
            p.poll(0.2)


def produce_dataset(cfg: Config, n: int, seed: int = 3) -> dict[str, np.ndarray]:
    """Requests, primary and two candidates' predictions with fixed event times (``t``).

    Some candidate answers are missing (c2 skips every 50th request) and some events are
    sent twice, so the coverage counters have something to count.
    """
    ensure_topics(cfg)
    t = Topics(cfg.prefix)
    codec = default_codec()
    rng = np.random.default_rng(seed)
    prim = rng.normal(300.0, 50.0, n)
    c1 = prim + rng.normal(0.0, 5.0, n)
    c2 = prim + rng.normal(2.0, 9.0, n)
    lat = rng.lognormal(1.0, 0.6, (3, n))
    p = Producer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "enable.idempotence": True,
        }
    )
    enc_req = codec.encoder("Request")
    enc_pred = codec.encoder("Prediction")
    base = recent_base(n)
    for i in range(n):
        rid = f"req-{i}"
        ts = base + i * 10
        key = rid.encode()
        req = enc_req({"request_id": rid, "event_time": ts, "numeric_features": {"x": float(i)}})
        send(p, t.requests, req, key)
        answers = (
            ("prim@1", "PRIMARY", prim[i]),
            ("c1@1", "CANDIDATE", c1[i]),
            ("c2@1", "CANDIDATE", c2[i]),
        )
        for j, (mid, role, v) in enumerate(answers):
            if mid == "c2@1" and i % 50 == 0:
                continue
            value = enc_pred(
                {
                    "request_id": rid,
                    "event_time": ts,
                    "model_id": mid,
                    "role": role,
                    "value": float(v),
                    "latency_ms": float(lat[j, i]),
                }
            )
            send(p, t.predictions, value, key)
            if i % 97 == 0:
                send(p, t.predictions, value, key)  # an at-least-once duplicate
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    return {"prim": prim, "c1": c1, "c2": c2, "t": base + 10 * np.arange(n)}


def fold_partials(cfg: Config) -> dict[str, PartialStats]:
    """Merge every partial on the topic per candidate: what a perfect evaluator would see."""
    codec = default_codec()
    out: dict[str, PartialStats] = {}
    for _, v, _ in read_all(cfg, Topics(cfg.prefix).partials):
        rec = codec.decode_as("Partial", v)
        out.setdefault(rec["candidate"], PartialStats()).merge(PartialStats.from_record(rec))
    return out


def committed_total(cfg: Config, group: str, topics: list[str], partitions: int) -> int:
    """Sum of the group's committed offsets, as they stand now.

    read_uncommitted on purpose: librdkafka asks for *stable* offsets when the consumer is
    read_committed (its default), and a stage killed between sending its offsets to a
    transaction and committing it leaves them pending until the next incarnation fences it,
    so a read_committed lookup times out instead of answering. The broker still returns
    only committed offsets here, never the pending ones.
    """
    c = Consumer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "group.id": group,
            "isolation.level": "read_uncommitted",
        }
    )
    tps = [TopicPartition(t, p) for t in topics for p in range(partitions)]
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                return sum(max(tp.offset, 0) for tp in c.committed(tps, timeout=10))
            except KafkaException as exc:
                # a fresh broker creates and loads __consumer_offsets at the first group
                # lookup: NOT_COORDINATOR until it has (seen here, 1 run in 3)
                code = exc.args[0].code() if exc.args else None
                if code not in _COORDINATOR_MOVING or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        c.close()


_COORDINATOR_MOVING = (
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
)


def kill_when(proc: subprocess.Popen[bytes], check: Callable[[], Any], what: str) -> Any:
    """Freeze the stage now and then (SIGSTOP) and ask ``check`` about the topics while it
    cannot change them; SIGKILL it at the first truthy answer, which is returned."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the stage exited ({proc.returncode}) before the kill"
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            found = check()
            if found:
                kill(proc)
                return found
        except KafkaException:
            pass  # a fresh group's coordinator is still loading ("Not coordinator")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError(f"never caught the stage with {what}")


def kill_with_answers_not_committed(
    proc: subprocess.Popen[bytes], cfg: Config, primaries: int, candidates: int, requests: int
) -> tuple[int, int]:
    """SIGKILL an at-least-once worker once predictions of requests beyond its committed
    offsets are on the topic: its successor must score those requests again.
    ``primaries``: the messages on the predictions topic that are not the worker's.
    Returns (requests committed, worker answers on the topic) at the kill."""
    t = Topics(cfg.prefix)

    def check() -> tuple[int, int] | None:
        committed = committed_total(cfg, f"{cfg.prefix}.worker", [t.requests], cfg.partitions)
        answers = end_total(cfg, [t.predictions], cfg.partitions) - primaries
        if 0 < committed < requests and answers > candidates * committed:
            return committed, answers
        return None

    found: tuple[int, int] = kill_when(proc, check, "answers beyond its committed offsets")
    return found


def kill_inside_a_transaction(proc: subprocess.Popen[bytes], cfg: Config, at_least: int) -> int:
    """SIGKILL an exactly-once worker once ``<prefix>.predictions`` holds ``at_least``
    messages and some of an open transaction (beyond the last stable offset, which is what
    a read_committed client is told the end is). Returns the log's end at the kill."""
    topic = Topics(cfg.prefix).predictions

    def check() -> int | None:
        end = end_total(cfg, [topic], cfg.partitions, "read_uncommitted")
        stable = end_total(cfg, [topic], cfg.partitions, "read_committed")
        return end if end >= at_least and end > stable else None

    found: int = kill_when(proc, check, "an open transaction holding predictions")
    return found


def end_total(
    cfg: Config, topics: list[str], partitions: int, isolation: str = "read_committed"
) -> int:
    """Sum of the topics' end offsets: the high watermarks, or for ``read_committed`` (the
    client's default) the last stable offsets, before any open transaction's messages."""
    c = Consumer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "group.id": "watermarks",
            "isolation.level": isolation,
        }
    )
    try:
        return sum(
            c.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1]
            for t in topics
            for p in range(partitions)
        )
    finally:
        c.close()


# -- fuzzing the stages with hostile input (errors are data) -----------------------------

#: Floats every fuzz pool holds, whatever hypothesis draws besides.
SPECIAL_FLOATS = (math.nan, math.inf, -math.inf, 1e308, -1e308, -0.0, 5e-324, -1.0)

#: Strings every fuzz pool holds: emoji (a ZWJ sequence too), right-to-left text and an
#: override, NUL, a byte-order mark, a lone combining mark, and very long ones.
HOSTILE_TEXT = (
    "😀🙃👩‍👩‍👧‍👦",
    "שלום עולם",
    "مرحبا بالعالم",
    "\u202eevil\u202c",
    "a\x00b",
    "\x00",
    "\ufeff",
    "\u0301",
    "x" * 5000,
    "🦄" * 2500,
)

#: Event times no joiner may believe: microseconds, zero, next year, too old, the extremes.
YEAR_MS = 366 * 86_400_000

FUZZ_PRIMARY = "prim@1"
FUZZ_CANDIDATE = "cand@1"


@dataclass(frozen=True)
class FuzzPool:
    """What hypothesis draws for one batch: strings, floats and blobs to build events from."""

    texts: tuple[str, ...]
    floats: tuple[float, ...]
    blobs: tuple[bytes, ...]


@dataclass(frozen=True)
class FuzzMessage:
    """One message of a fuzz batch and what the stage under test must make of it."""

    kind: str
    #: "requests" or "predictions": the Topics attribute it goes to
    stream: str
    partition: int
    key: bytes | None
    value: bytes | None
    #: the stage must turn it into exactly one dead letter
    dead: bool
    #: the event as encoded (None for bytes that are no event)
    record: dict[str, Any] | None = None
    #: the request group it belongs to (a request and its answers), -1 for none
    group: int = -1


def fuzz_pools() -> Any:
    """Hypothesis strategy of :class:`FuzzPool`: drawn values plus the hostile constants."""
    return st.builds(
        FuzzPool,
        texts=st.lists(st.text(min_size=1, max_size=30), min_size=6, max_size=6).map(
            lambda xs: (*xs, *HOSTILE_TEXT)
        ),
        floats=st.lists(st.floats(), min_size=6, max_size=6).map(lambda xs: (*xs, *SPECIAL_FLOATS)),
        blobs=st.lists(st.binary(max_size=64), min_size=4, max_size=4),
    )


def fuzz_plans(kinds: tuple[str, ...], n: int) -> Any:
    """Hypothesis strategy of ``n`` (kind, seed) pairs: the mix of one batch.

    Each message's kind comes from its seed and its index, so even hypothesis's simplest
    example (every seed 0, always tried first) is a full mix, not 300 messages of one kind.
    """
    return st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n).map(
        lambda seeds: [
            (random.Random(f"{i}/{seed}").choice(kinds), seed) for i, seed in enumerate(seeds)
        ]
    )


class FuzzBuilder:
    """Turns a drawn plan into messages, good and bad, for ``stage`` ("worker"/"joiner").

    Kinds (the worker reads requests only, so its kinds stay on that topic):

    - ``request``: a good request (unicode id and feature names, NaN, inf, 1e308 features);
      for the joiner with a primary and/or candidate answer or none, whose values and
      latencies come from the same pool (NaN, inf, negative: counted, not dead letters);
    - ``wide``: a good request with 10,000 feature names;
    - ``bad_time``: event time in microseconds, 0, next year, too old, the long extremes:
      a dead letter in the joiner, scored as usual by the worker;
    - ``random_bytes``, ``truncated``, ``unknown_fingerprint``, ``wrong_type`` (a
      Prediction or Label on the requests topic, a Request on the predictions topic),
      ``tombstone``, ``empty_request_id``, ``null_key``, ``empty_key``, ``empty_model_id``,
      ``invalid_utf8`` (Avro strings that are not UTF-8, as a foreign producer could write):
      always dead letters.
    """

    GOOD = ("request", "request", "request", "request", "request", "wide")
    BAD = (
        "bad_time",
        "random_bytes",
        "truncated",
        "unknown_fingerprint",
        "wrong_type",
        "tombstone",
        "empty_request_id",
        "null_key",
        "empty_key",
        "invalid_utf8",
    )
    WORKER_KINDS = GOOD + BAD
    JOINER_KINDS = GOOD + BAD + ("empty_model_id",)

    def __init__(self, stage: str, partitions: int, pool: FuzzPool, t0: int) -> None:
        self.stage = stage
        self.partitions = partitions
        self.pool = pool
        self.t0 = t0
        self.codec = default_codec()
        self.short = tuple(t[:12] for t in pool.texts)
        self.out: list[FuzzMessage] = []

    # -- pieces ------------------------------------------------------------------------

    def _float(self, rng: random.Random) -> float:
        if rng.random() < 0.5:
            return rng.uniform(-1e3, 1e3)
        return rng.choice(self.pool.floats)

    def _rid(self, rng: random.Random, i: int) -> str:
        return f"{i}:{rng.choice(self.pool.texts)}"  # the index keeps ids unique

    def _time(self, rng: random.Random) -> int:
        return self.t0 + rng.randrange(0, 5000)

    def _bad_time(self, rng: random.Random) -> int:
        return rng.choice(
            (
                self.t0 * 1000,
                0,
                self.t0 + YEAR_MS,
                self.t0 - 15 * 60_000,
                self.t0 + 15 * 60_000,
                -1,
                2**63 - 1,
                -(2**63),
            )
        )

    def _request(self, rng: random.Random, rid: str, t: int, wide: bool = False) -> dict[str, Any]:
        texts = self.pool.texts
        numeric = {rng.choice(texts): self._float(rng) for _ in range(rng.randint(0, 4))}
        if rng.random() < 0.5:  # what the demo's models read, so some of them succeed
            for name in ("sqft", "bedrooms", "bathrooms", "age_years", "distance_km"):
                numeric[name] = self._float(rng)
            numeric["lot_size"] = rng.uniform(0, 900)
        if wide:
            for j in range(10_000):
                numeric[f"f{j}{rng.choice(self.short)}"] = self._float(rng)
        categorical = {rng.choice(texts): rng.choice(texts) for _ in range(rng.randint(0, 3))}
        context = {rng.choice(self.short): rng.choice(self.short) for _ in range(rng.randint(0, 2))}
        return {
            "request_id": rid,
            "event_time": t,
            "use_case": rng.choice(self.short),
            "numeric_features": numeric,
            "categorical_features": categorical,
            "context": context,
        }

    def _prediction(
        self, rng: random.Random, rid: str, t: int, primary: bool, model: str | None = None
    ) -> dict[str, Any]:
        failed = rng.random() < 0.1
        latency = rng.choice((None, rng.uniform(0, 50), rng.uniform(0, 50), *self.pool.floats))
        return {
            "request_id": rid,
            "event_time": t,
            "model_id": model if model is not None else FUZZ_PRIMARY if primary else FUZZ_CANDIDATE,
            "role": "PRIMARY" if primary else "CANDIDATE",
            "value": None if failed else self._float(rng),
            "latency_ms": latency,
            "error": rng.choice(self.pool.texts)[:200] if failed else None,
            "use_case": rng.choice(self.short),
        }

    def _emit(
        self,
        kind: str,
        stream: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        dead: bool,
        record: dict[str, Any] | None = None,
        group: int = -1,
    ) -> None:
        self.out.append(FuzzMessage(kind, stream, partition, key, value, dead, record, group))

    def _some_event(self, rng: random.Random, rid: str, t: int) -> tuple[str, str, dict[str, Any]]:
        """A valid (stream, event name, record) the stage reads: a request or, for the
        joiner, sometimes an answer."""
        if self.stage == "joiner" and rng.random() < 0.4:
            return "predictions", "Prediction", self._prediction(rng, rid, t, rng.random() < 0.5)
        return "requests", "Request", self._request(rng, rid, t)

    # -- the plan ------------------------------------------------------------------------

    def build(self, plan: list[tuple[str, int]]) -> list[FuzzMessage]:
        for i, (kind, seed) in enumerate(plan):
            rng = random.Random(f"{kind}/{i}/{seed}")
            getattr(self, f"_kind_{kind}")(rng, i, kind, rng.randrange(self.partitions))
        return self.out

    def _kind_request(self, rng: random.Random, i: int, kind: str, p: int) -> None:
        rid, t = self._rid(rng, i), self._time(rng)
        rec = self._request(rng, rid, t, wide=kind == "wide")
        key = rid.encode()
        self._emit(kind, "requests", p, key, self.codec.encode("Request", rec), False, rec, i)
        if self.stage != "joiner":
            return
        for primary in (True, False):
            if rng.random() < 0.8:
                ans = self._prediction(rng, rid, t + rng.randrange(0, 50), primary)
                value = self.codec.encode("Prediction", ans)
                self._emit(kind, "predictions", p, key, value, False, ans, i)

    _kind_wide = _kind_request

    def _kind_bad_time(self, rng: random.Random, i: int, kind: str, p: int) -> None:
        rid = self._rid(rng, i)
        stream, name, rec = self._some_event(rng, rid, self._bad_time(rng))
        dead = self.stage == "joiner"
        value = self.codec.encode(name, rec)
        self._emit(kind, stream, p, rid.encode(), value, dead, rec, -1 if dead else i)

    def _kind_random_bytes(self, rng: random.Random, i: int, kind: str, p: int) -> None:
        value = rng.choice((*self.pool.blobs, rng.randbytes(rng.randrange(0, 200))))
        self._emit(kind, self._stream(rng), p, self._rid(rng, i).encode(), value, True)

    def _kind_truncated(self, rng: random.Random, i: int, kind: str, p: int) -> None:
        rid = self._rid(rng, i)
        stream, name, rec = self._some_event(rng, rid, self._time(rng))
        whole = self.codec.encode(name, rec)
        self._emit(kind, stream, p, rid.encode(), whole[: rng.randrange(0, len(whole))], True)

    def _kind_unknown_fingerprint(self, rng: random.Random, i: int, kind: str, p: int) -> None:
        rid = self._rid(rng, i)
        stream, name, rec = self._some_event(rng, rid, self._time(rng))
        known = {
            s.fingerprint for versions in self.codec.versions.values() for s in versions.values()
        }
        known |= {s.fingerprint for s in self.codec.schemas.values()}
        fp = rng.randbytes(8)
        while fp in known:
            fp = rng.randbytes(8)
        body = self.codec.encode(name, rec)[10:]
        self._emit(kind, stream, p, rid.encode(), b"\xc3\x01" + fp + body, True)

    def _kind_wrong_type(self, rng: random.Random, i: int, kind: str, p: int) -> None:
        rid, t = self._rid(rng, i), self._time(rng)
        if self.stage == "joiner" and rng.random() < 0.3:
            value = self.codec.encode("Request", self._request(rng, rid, t))
            self._emit(kind, "predictions", p, rid.encode(), value, True)
        elif rng.random() < 0.7:
            value = self.codec.encode("Prediction", self._prediction(rng, rid, t, True))
            self._emit(kind, "requests", p, rid.encode(), value, True)
        else:
            label = {"request_id": rid, "event_time": t}
            self._emit(kind, "requests", p, rid.encode(), self.codec.encode("Label", label), True)

    def _kind_tombstone(self, rng: random.Random, i: int, kind: str, p: int) -> None:
        self._emit(kind, self._stream(rng), p, self._rid(rng, i).encode(), None, True)

    def _kind_empty_request_id(self, rng: random.Random, i: int, kind: str, p: int) -> None:
        stream, name, rec = self._some_event(rng, "", self._time(rng))
        key = rng.choice((b"x", self._rid(rng, i).encode()))
        self._emit(kind, stream, p, key, self.codec.encode(name, rec), True, rec)

    def _kind_null_key(self, rng: random.Random, i: int, kind: str, p: int) -> None:
        stream, name, rec = self._some_event(rng, self._rid(rng, i), self._time(rng))
        key = b"" if kind == "empty_key" else None
        self._emit(kind, stream, p, key, self.codec.encode(name, rec), True, rec)

    _kind_empty_key = _kind_null_key

    def _kind_invalid_utf8(self, rng: random.Random, i: int, kind: str, p: int) -> None:
        rid = f"{i}:@@@@"
        stream, name, rec = self._some_event(rng, rid, self._time(rng))
        value = self.codec.encode(name, rec)
        bad = value.replace(
            b"@@@@", rng.choice((b"\xff\xfe\xfd\xfc", b"\xed\xa0\x80!", b"a\xc3(b"))
        )
        self._emit(kind, stream, p, rid.encode(), bad, True)

    def _kind_empty_model_id(self, rng: random.Random, i: int, kind: str, p: int) -> None:
        rid, t = self._rid(rng, i), self._time(rng)
        rec = self._prediction(rng, rid, t, rng.random() < 0.5, model="")
        value = self.codec.encode("Prediction", rec)
        self._emit(kind, "predictions", p, rid.encode(), value, True, rec)

    def _stream(self, rng: random.Random) -> str:
        if self.stage == "joiner" and rng.random() < 0.4:
            return "predictions"
        return "requests"


def produce_fuzz(cfg: Config, messages: list[FuzzMessage]) -> list[tuple[str, int, int]]:
    """Produce ``messages`` in order, each to its chosen partition; their (topic, partition,
    offset), in the same order, once the broker acknowledged every one."""
    topics = Topics(cfg.prefix)
    p = Producer({"bootstrap.servers": cfg.bootstrap_servers, "enable.idempotence": True})
    coords: list[tuple[str, int, int] | None] = [None] * len(messages)
    errors: list[str] = []

    def report(i: int) -> Callable[[Any, Any], None]:
        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"message {i}: {err}")
            else:
                coords[i] = (msg.topic(), msg.partition(), msg.offset())

        return on_delivery

    for i, m in enumerate(messages):
        topic = getattr(topics, m.stream)
        send(p, topic, m.value, m.key, partition=m.partition, on_delivery=report(i))
        p.poll(0)
    assert p.flush(60) == 0
    assert not errors, errors[:5]
    assert all(c is not None for c in coords)
    return [c for c in coords if c is not None]


def dead_letters(cfg: Config, idle_s: float = 3.0) -> list[dict[str, Any]]:
    """Every committed DeadLetter of ``<prefix>.deadletter``, decoded."""
    codec = default_codec()
    return [
        codec.decode_as("DeadLetter", v)
        for _, v, _ in read_all(cfg, Topics(cfg.prefix).deadletter, idle_s=idle_s)
    ]


def latest_ledgers(cfg: Config) -> dict[int, dict[str, dict[str, int]]]:
    """The conservation ledger of each joiner partition, from its last '*' partial."""
    codec = default_codec()
    out: dict[int, dict[str, dict[str, int]]] = {}
    for _, v, _ in read_all(cfg, Topics(cfg.prefix).partials):
        rec = codec.decode_as("Partial", v)
        if rec["candidate"] == "*" and rec.get("ledger"):
            out[rec["joiner_partition"]] = rec["ledger"]
    return out


# -- fault tests (test_chaos.py) ------------------------------------------------------------


def produce_served(
    cfg: Config,
    n: int,
    *,
    seed: int = 5,
    step_ms: int = 2,
    end_ago_ms: int = 45_000,
    base: int | None = None,
    candidates: bool = False,
) -> dict[str, int]:
    """What a served house-price API mirrors: ``n`` requests with the demo market's features
    and the primary's answers, written with a plain idempotent producer; returns the counts.

    Fixed, deterministic content: the primary (``price-linear@3``) skips every 70th request
    (from the 4th) and every 97th answer is sent twice. ``candidates``: also the answers of
    two candidates, ``c1@1`` and ``c2@1`` (c2 skips every 50th; every 97th sent twice), for
    tests that run no worker. Event times are ``step_ms`` apart and end at least
    ``end_ago_ms`` before now (or start at ``base``, to give two prefixes the very same
    events): old enough that a joiner's first idle tick finishes every join of a shorter
    TTL, recent enough to be believed (``max_age_ms``).
    """
    from streams.demo_models import PRIMARY_ID, HouseMarket, primary

    ensure_topics(cfg)
    t = Topics(cfg.prefix)
    codec = default_codec()
    enc_req, enc_pred = codec.encoder("Request"), codec.encoder("Prediction")
    rng = np.random.default_rng(seed)
    latency = rng.lognormal(1.0, 0.6, (3, n))
    noise = rng.normal(0.0, 6.0, (2, n))
    if base is None:
        base = served_base(n, step_ms, end_ago_ms)
    p = Producer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "enable.idempotence": True,
        }
    )
    counts = dict.fromkeys(("requests", "primary", "c1@1", "c2@1", "sent_twice"), 0)
    for i, (numeric, categorical, context) in enumerate(HouseMarket(seed).sample(n)):
        rid = f"srv-{i}"
        key, ts = rid.encode(), base + i * step_ms
        request = {
            "request_id": rid,
            "event_time": ts,
            "use_case": "house-price",
            "numeric_features": numeric,
            "categorical_features": categorical,
            "context": context,
        }
        send(p, t.requests, enc_req(request), key)
        counts["requests"] += 1
        value = primary.predict_one({**numeric, **categorical})
        answers = [] if i % 70 == 3 else [(PRIMARY_ID, "PRIMARY", value, 0)]
        if candidates:
            answers.append(("c1@1", "CANDIDATE", value + noise[0, i], 1))
            if i % 50:
                answers.append(("c2@1", "CANDIDATE", value * 1.02 + noise[1, i], 2))
        for model, role, v, j in answers:
            encoded = enc_pred(
                {
                    "request_id": rid,
                    "event_time": ts,
                    "model_id": model,
                    "role": role,
                    "value": float(v),
                    "latency_ms": float(latency[j, i]),
                    "use_case": "house-price",
                }
            )
            send(p, t.predictions, encoded, key)
            counts["primary" if role == "PRIMARY" else model] += 1
            if i % 97 == 0:
                send(p, t.predictions, encoded, key)  # an at-least-once duplicate
                counts["sent_twice"] += 1
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    return counts


def produce_answered(cfg: Config, n: int) -> None:
    """``n`` requests of the demo's market (``d-0``, ``d-1``, ...), each with exactly one
    primary answer, event times 1 ms apart ending 45 s ago: a span shorter than the join
    TTL of :func:`pipeline_cfg`, so no join expires while a joiner reads the candidates'
    answers, which a worker wrote after every primary's."""
    from streams.demo_models import PRIMARY_ID, HouseMarket, primary

    ensure_topics(cfg)
    t = Topics(cfg.prefix)
    codec = default_codec()
    enc_req, enc_pred = codec.encoder("Request"), codec.encoder("Prediction")
    latency = np.random.default_rng(4).lognormal(1.0, 0.6, n)
    base = served_base(n, step_ms=1)
    p = Producer({"bootstrap.servers": cfg.bootstrap_servers, "linger.ms": 20})
    for i, (numeric, categorical, context) in enumerate(HouseMarket(9).sample(n)):
        rid, ts = f"d-{i}", base + i
        common = {"request_id": rid, "event_time": ts, "use_case": "house-price"}
        request = {
            **common,
            "numeric_features": numeric,
            "categorical_features": categorical,
            "context": context,
        }
        answer = {
            **common,
            "model_id": PRIMARY_ID,
            "role": "PRIMARY",
            "value": float(primary.predict_one({**numeric, **categorical})),
            "latency_ms": float(latency[i]),
        }
        send(p, t.requests, enc_req(request), rid.encode())
        send(p, t.predictions, enc_pred(answer), rid.encode())
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def served_base(n: int, step_ms: int = 2, end_ago_ms: int = 45_000) -> int:
    """The first event time of :func:`produce_served`: on a 10 s boundary, ``n`` events
    ``step_ms`` apart ending at least ``end_ago_ms`` ago."""
    now = int(time.time() * 1000)
    return (now - end_ago_ms - n * step_ms) // 10_000 * 10_000


def ledgers(cfg: Config) -> dict[str, dict[str, int]]:
    """The conservation law as the joiner published it: per candidate, each term summed
    over the joiner partitions' latest ledgers (a partition whose ledger lacks a candidate
    counts its ``*`` baseline, as the evaluator does). Empty before any ``*`` partial."""
    codec = default_codec()
    latest: dict[int, dict[str, dict[str, int]]] = {}
    for _, v, _ in read_all(cfg, Topics(cfg.prefix).partials, idle_s=1.0):
        rec = codec.decode_as("Partial", v)
        if rec["candidate"] == "*" and rec["ledger"]:
            latest[rec["joiner_partition"]] = rec["ledger"]
    names = {c for book in latest.values() for c in book}
    out: dict[str, dict[str, int]] = {}
    for cand in sorted(names):
        total: dict[str, int] = {}
        for book in latest.values():
            for term, count in book.get(cand, book["*"]).items():
                total[term] = total.get(term, 0) + count
        out[cand] = total
    return out


def law_holds(terms: dict[str, int]) -> bool:
    """``requests`` equals the sum of every other term (see streams/join/ledger.py)."""
    return terms["requests"] == sum(v for k, v in terms.items() if k != "requests")


def without(record: dict[str, Any], *paths: str) -> dict[str, Any]:
    """A copy of a nested record without the dotted ``paths`` (``"coverage.duplicates"``)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in record.items()}
    for path in paths:
        head, _, tail = path.partition(".")
        if tail:
            out[head].pop(tail, None)
        else:
            out.pop(head, None)
    return out


def messages_per_key(
    cfg: Config, topic: str, isolation: str = "read_committed"
) -> dict[tuple[str, str], int]:
    """How many times each (request_id, model_id) is on the predictions topic, or each
    (request_id, "") on the requests topic, for a reader of that ``isolation``."""
    codec = default_codec()
    out: dict[tuple[str, str], int] = {}
    for _, v, _ in read_all(cfg, topic, idle_s=1.0, isolation=isolation):
        name, rec = codec.decode(v)
        key = (rec["request_id"], rec.get("model_id", "") if name == "Prediction" else "")
        out[key] = out.get(key, 0) + 1
    return out


#: What a producer with librdkafka's default ``message.max.bytes`` (1,000,000, which counts
#: 36 bytes of record overhead too) lets through: key plus value. The broker's own default
#: limit, 1,048,588 bytes a batch, is a little higher.
KAFKA_MAX_MESSAGE = 1_000_000 - 36


def biggest_messages(codec_name: str = "Request") -> dict[str, tuple[bytes, bytes]]:
    """(key, value) pairs as large as a default producer sends, 10 bytes to spare:
    ``garbage`` (random bytes under a one-byte key) and ``long_request_id`` (a valid
    request whose request_id, and so its key, is half the limit)."""
    codec = default_codec()
    room = KAFKA_MAX_MESSAGE - 10
    garbage = random.Random(7).randbytes(room - 1)
    t = recent_base(0)
    size = room // 2
    while True:  # the varint length prefix makes the size a step function: search down
        rid = "r" * size
        value = codec.encode(codec_name, {"request_id": rid, "event_time": t})
        if len(rid) + len(value) <= room:
            break
        size -= 1
    return {"garbage": (b"g", garbage), "long_request_id": (rid.encode(), value)}


def apache_decoder(name: str) -> Callable[[bytes], dict[str, Any]]:
    """Decode ``name`` messages as an outside subscriber would: Apache avro and the .avsc.

    Checks the single-object header (``C3 01`` and the schema's CRC-64-AVRO fingerprint,
    computed by Apache avro on the schema without logical types, as the specification's
    canonical form has none) and reads the body with Apache avro's own DatumReader.
    """
    raw = json.loads((schema_dir() / f"{name}.avsc").read_text())
    plain = avro.schema.parse(json.dumps(_strip_logical(raw)))
    fingerprint = plain.fingerprint("CRC-64-AVRO")

    def decode(message: bytes) -> dict[str, Any]:
        assert message[:2] == b"\xc3\x01", "not Avro single-object encoding"
        assert message[2:10] == fingerprint, f"written with another {name} schema"
        reader = avro.io.DatumReader(plain, plain)
        return reader.read(avro.io.BinaryDecoder(io.BytesIO(message[10:])))  # type: ignore[no-any-return]

    return decode


# -- an outside Java subscriber ---------------------------------------------------------------

JavaRecord = tuple[int, int, bytes | None, bytes | None]
"""(partition, offset, key, value) as the official Java consumer read it."""


def java_records(bootstrap: str, topics: list[str], workdir: Path) -> dict[str, list[JavaRecord]]:
    """Every committed record of ``topics``, read by Apache Kafka's own Java consumer.

    Compiles ``java/TopicDump.java`` against the kafka-clients jar the embedded broker uses
    (resolved by Maven if missing) and runs it with ``isolation.level=read_committed``: what
    a Java team subscribing to our topics would see, with no Python client in the path.
    """
    from streams.broker.jars import resolve_jars

    jars = resolve_jars()
    classes = workdir / "java-classes"
    classes.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).resolve().parent / "java" / "TopicDump.java"
    clients = next(jars.glob("kafka-clients-*.jar"))
    subprocess.run(
        ["javac", "-cp", str(clients), "-d", str(classes), str(source)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    done = subprocess.run(
        ["java", "-cp", f"{classes}{os.pathsep}{jars}/*", "TopicDump", bootstrap, *topics],
        capture_output=True,
        timeout=300,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    out: dict[str, list[JavaRecord]] = {t: [] for t in topics}
    for line in done.stdout.decode().splitlines():
        if not line.startswith("REC\t"):
            continue  # the client's own log lines, if any
        _, topic, partition, offset, key, value = line.split("\t")
        out[topic].append(
            (
                int(partition),
                int(offset),
                None if key == "-" else bytes.fromhex(key),
                None if value == "-" else bytes.fromhex(value),
            )
        )
    for records in out.values():
        records.sort(key=lambda r: (r[0], r[1]))
    return out
