"""Joiner throughput against a raw confluent-kafka consume + decode loop, same topics, same run.

Fills a fresh prefix with N requests (default 200,000), each with 20 numeric features, 3
categorical features and 3 context keys (as a production request might carry), and, for
each, one primary and two candidate predictions (4 x N events), then times:

* baseline: a plain consumer reading requests + predictions and decoding every message
  with the same Avro codec (the least any joiner must do);
* joiner: ``streams.joiner.Joiner`` over the same topics, until every event is consumed
  and its final partials are committed (transactions, changelog, feature profiles and
  context slices: all of it, as in production).

Prints events/s for both and ``ratio`` = baseline / joiner (how many times slower the
joiner is than the raw loop), then the CPU time of this process per event in each phase
(librdkafka's threads included) and their ratio, which other load on the machine sways
less than wall time. Usage: ``python bench/joiner.py [--requests N]``; uses
KAFKA_BOOTSTRAP_SERVERS, else the running embedded broker, else one started for the run and
stopped after it (``--keep-broker`` keeps it).
"""

from __future__ import annotations

import sys
import threading
import time
import uuid

import numpy as np
from _common import bulk_producer, requests_main
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import Config
from streams.joiner import Joiner
from streams.kafka import Topics, ensure_topics
from streams.schemas import default_codec

CPU: dict[str, float] = {}
"""CPU seconds of this process per event, by phase."""
NUMERIC = 20
CATEGORICAL = 3
"""Features per request; and 3 context keys (region, tenant, device)."""


def fill(cfg: Config, n: int) -> int:
    t = Topics(cfg.prefix)
    codec = default_codec()
    enc_req, enc_pred = codec.encoder("Request"), codec.encoder("Prediction")
    rng = np.random.default_rng(1)
    tty = sys.stderr.isatty()
    prim = rng.normal(300.0, 50.0, n)
    p = bulk_producer(cfg)
    # recent event times: the joiner refuses ones far from their message's timestamp
    base = (int(time.time() * 1000) - n - 10_000) // 10_000 * 10_000
    names = [f"f{j}" for j in range(NUMERIC)]
    numeric = rng.normal(0.0, 1.0, (n, NUMERIC)) * np.arange(1, NUMERIC + 1) + 100.0
    levels = {f"c{j}": [f"v{k}" for k in range(3 + 4 * j)] for j in range(CATEGORICAL)}
    cats = {c: rng.integers(0, len(v), n) for c, v in levels.items()}
    ctx = {"region": ["eu", "us", "apac", "latam"], "tenant": [f"t{k}" for k in range(10)]}
    ctx["device"] = ["web", "ios", "android"]
    ctx_ix = {c: rng.integers(0, len(v), n) for c, v in ctx.items()}
    for i in range(n):
        rid = f"b{i}"
        key = rid.encode()
        ts = base + i
        request = {
            "request_id": rid,
            "event_time": ts,
            "numeric_features": dict(zip(names, numeric[i].tolist(), strict=True)),
            "categorical_features": {c: v[cats[c][i]] for c, v in levels.items()},
            "context": {c: v[ctx_ix[c][i]] for c, v in ctx.items()},
        }
        p.produce(t.requests, enc_req(request), key)
        for mid, role, v in (
            ("prim@1", "PRIMARY", prim[i]),
            ("c1@1", "CANDIDATE", prim[i] + 1),
            ("c2@1", "CANDIDATE", prim[i] - 2),
        ):
            p.produce(
                t.predictions,
                enc_pred(
                    {
                        "request_id": rid,
                        "event_time": ts,
                        "model_id": mid,
                        "role": role,
                        "value": float(v),
                        "latency_ms": 1.5,
                    }
                ),
                key,
            )
        if i % 5000 == 0:
            p.poll(0)
            if tty:  # one line rewritten in place; piped output gets a line per 50,000
                print(f"\rfilling: {i}/{n} requests", end="", file=sys.stderr, flush=True)
            elif i % 50_000 == 0:
                print(f"filling: {i}/{n} requests", file=sys.stderr, flush=True)
    p.flush()
    print(("\r" if tty else "") + f"filling: {n}/{n} requests", file=sys.stderr)
    return 4 * n


def raw_loop(cfg: Config, total: int) -> float:
    t = Topics(cfg.prefix)
    decode = default_codec().decode
    c = Consumer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "group.id": f"raw-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([t.requests, t.predictions])
    seen = 0
    start = None
    cpu = 0.0
    while seen < total:
        msgs = c.consume(num_messages=5000, timeout=1.0)
        if msgs and start is None:
            start = time.perf_counter()
            cpu = time.process_time()
        for m in msgs:
            if m.error() is None:
                decode(m.value())
                seen += 1
    elapsed = time.perf_counter() - (start or time.perf_counter())
    CPU["raw"] = (time.process_time() - cpu) / seen
    c.close()
    return seen / elapsed


def warm_transactions(cfg: Config) -> None:
    """Commit one transaction before timing anything.

    On a broker started moments ago the first transactions wait while the transaction
    coordinator creates and loads its log ("Coordinator load in progress"); one such run
    measured the joiner 20% slower than the next two. That is the broker starting up, not
    the joiner's throughput.
    """
    topic = f"{cfg.prefix}.warm-up"  # its own topic: no stage ever reads it
    admin = AdminClient({"bootstrap.servers": cfg.bootstrap_servers})  # alive until done
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(60)
    p = Producer({"bootstrap.servers": cfg.bootstrap_servers, "transactional.id": cfg.prefix})
    p.init_transactions(120)
    p.begin_transaction()
    p.produce(topic, b"warm-up")
    p.commit_transaction(120)


def joiner_run(cfg: Config, total: int) -> float:
    joiner = Joiner(cfg)
    stop = threading.Event()
    marks: dict[str, float] = {}

    def on_batch(stats: object) -> None:
        consumed = joiner.stats.consumed
        if consumed and "start" not in marks:
            marks["start"] = time.perf_counter()
            marks["cpu"] = time.process_time()
            marks["first"] = consumed
        if consumed >= total and "end" not in marks:
            marks["end"] = time.perf_counter()
            CPU["joiner"] = (time.process_time() - marks["cpu"]) / (consumed - marks["first"])
            stop.set()

    joiner.run(stop=stop, on_batch=on_batch)
    return joiner.stats.consumed / (marks["end"] - marks["start"])


def main(argv: list[str] | None = None) -> int:
    return requests_main(__doc__, 200_000, measure, argv)


def measure(bootstrap: str, requests: int) -> int:
    cfg = Config(bootstrap_servers=bootstrap, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    ensure_topics(cfg)
    warm_transactions(cfg)
    total = fill(cfg, requests)
    raw = raw_loop(cfg, total)
    print(f"raw consume+decode: {raw:,.0f} events/s")
    joined = joiner_run(cfg, total)
    print(f"joiner:             {joined:,.0f} events/s  ({total:,} events)")
    print(f"ratio raw/joiner: {raw / joined:.2f}")
    # CPU time of this process (librdkafka's threads too) per event: less sensitive than
    # wall time to whatever else the machine runs, the broker included
    raw_us, joiner_us = CPU["raw"] * 1e6, CPU["joiner"] * 1e6
    print(f"cpu per event: raw {raw_us:.1f} us, joiner {joiner_us:.1f} us")
    print(f"cpu ratio joiner/raw: {joiner_us / raw_us:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
