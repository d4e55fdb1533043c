"""Joiner throughput against a raw confluent-kafka consume + decode loop, same topics, same run.

Each round fills a fresh prefix with N requests (default 200,000), each with 20 numeric features, 3
categorical features and 3 context keys (as a production request might carry), and, for
each, one primary and two candidate predictions (4 x N events), then times:

* baseline: a plain consumer reading requests + predictions and decoding every message
  with the same Avro codec (the least any joiner must do);
* joiner: ``streams.joiner.Joiner`` over the same topics, until every event is consumed
  and its final partials are committed (transactions, changelog, feature profiles and
  context slices: all of it, as in production).

Prints events/s for both and ``ratio`` = baseline / joiner (how many times slower the
joiner is than the raw loop; lower is better), each the median of ``--rounds`` rounds
(default 3: on this shared two-core machine single rounds of one release swung from 1.50
to 2.13 in five runs within an hour, as the machine's speed drifted between the two timed
phases), then the CPU time of this process per event in each phase
(librdkafka's threads included) and their ratio, which other load on the machine sways
less than wall time.

Usage: ``python bench/joiner.py [--requests N] [--batch-size B] [--rounds R]``; uses
KAFKA_BOOTSTRAP_SERVERS, else the running embedded broker, else one started for the run and
stopped after it (``--keep-broker`` keeps it).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid

import numpy as np
from _common import KEEP_BROKER_HELP, bulk_producer, err, with_broker
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import Config
from streams.joiner import DEFAULT_BATCH, Joiner
from streams.kafka import Topics, ensure_topics
from streams.schemas import default_codec

CPU: dict[str, float] = {}


def median(xs: list[float]) -> float:
    """(Not statistics.median: bench/statistics.py shadows that module here.)"""
    return float(np.median(xs))


"""CPU seconds of this process per event, by phase."""
STALL_S = 60.0
"""A phase that receives nothing for this long ends the bench with an error."""
NUMERIC = 20
CATEGORICAL = 3
"""Features per request; and 3 context keys (region, tenant, device)."""


Encoded = list[tuple[bool, bytes, bytes]]
"""The filled events, encoded once: (is a request, value, key), in production order."""


def encode(n: int) -> Encoded:
    """N requests and their primary and two candidate answers, encoded once for every
    round (encoding in Python takes longer than producing pre-encoded bytes)."""
    codec = default_codec()
    enc_req, enc_pred = codec.encoder("Request"), codec.encoder("Prediction")
    rng = np.random.default_rng(1)
    prim = rng.normal(300.0, 50.0, n)
    # recent event times: the joiner refuses ones far from their message's timestamp
    # (max_age 10 min: every round must be over by then)
    base = (int(time.time() * 1000) - n - 10_000) // 10_000 * 10_000
    names = [f"f{j}" for j in range(NUMERIC)]
    numeric = rng.normal(0.0, 1.0, (n, NUMERIC)) * np.arange(1, NUMERIC + 1) + 100.0
    levels = {f"c{j}": [f"v{k}" for k in range(3 + 4 * j)] for j in range(CATEGORICAL)}
    cats = {c: rng.integers(0, len(v), n) for c, v in levels.items()}
    ctx = {"region": ["eu", "us", "apac", "latam"], "tenant": [f"t{k}" for k in range(10)]}
    ctx["device"] = ["web", "ios", "android"]
    ctx_ix = {c: rng.integers(0, len(v), n) for c, v in ctx.items()}
    out: Encoded = []
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
        out.append((True, enc_req(request), key))
        for mid, role, v in (
            ("prim@1", "PRIMARY", prim[i]),
            ("c1@1", "CANDIDATE", prim[i] + 1),
            ("c2@1", "CANDIDATE", prim[i] - 2),
        ):
            answer = {
                "request_id": rid,
                "event_time": ts,
                "model_id": mid,
                "role": role,
                "value": float(v),
                "latency_ms": 1.5,
            }
            out.append((False, enc_pred(answer), key))
        if i % 50_000 == 0:
            err(f"encoding: {i}/{n} requests")
    return out


def fill(cfg: Config, events: Encoded) -> int:
    t = Topics(cfg.prefix)
    p = bulk_producer(cfg)
    for i, (is_request, value, key) in enumerate(events):
        p.produce(t.requests if is_request else t.predictions, value, key)
        if i % 20_000 == 0:
            p.poll(0)
    p.flush()
    return len(events)


def raw_loop(cfg: Config, total: int, batch: int) -> float:
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
    last = time.monotonic()
    while seen < total:
        msgs = c.consume(num_messages=batch, timeout=1.0)
        if msgs and start is None:
            start = time.perf_counter()
            cpu = time.process_time()
        if msgs:
            last = time.monotonic()
        elif time.monotonic() - last > STALL_S:
            c.close()
            raise SystemExit(f"raw loop: {seen:,} of {total:,} events, none for {STALL_S} s")
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


def joiner_run(cfg: Config, total: int, batch: int) -> float:
    joiner = Joiner(cfg, batch_size=batch)
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

    def watch() -> None:  # a joiner that stops receiving ends the bench, not hangs it
        last, seen = time.monotonic(), -1
        while not stop.wait(1.0):
            if joiner.stats.consumed != seen:
                last, seen = time.monotonic(), joiner.stats.consumed
            elif time.monotonic() - last > STALL_S:
                marks["stalled"] = seen
                stop.set()

    threading.Thread(target=watch, daemon=True).start()
    joiner.run(stop=stop, on_batch=on_batch)
    if "stalled" in marks:
        raise SystemExit(f"joiner: {marks['stalled']:,} of {total:,} events, none for {STALL_S} s")
    return joiner.stats.consumed / (marks["end"] - marks["start"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH,
        help="messages per consume() of both loops (default: the joiner's)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="raw loop then joiner, each round on fresh topics; the medians are reported",
    )
    ap.add_argument("--keep-broker", action="store_true", help=KEEP_BROKER_HELP)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    return with_broker(
        args.keep_broker,
        lambda bootstrap: measure(bootstrap, args.requests, args.batch_size, args.rounds),
    )


def measure(bootstrap: str, requests: int, batch: int = DEFAULT_BATCH, rounds: int = 3) -> int:
    events = encode(requests)
    raws, joins, cpu_raw, cpu_joiner = [], [], [], []
    for r in range(1, rounds + 1):
        cfg = Config(bootstrap_servers=bootstrap, prefix=f"bench-{uuid.uuid4().hex[:8]}")
        ensure_topics(cfg)
        warm_transactions(cfg)
        total = fill(cfg, events)
        raws.append(raw_loop(cfg, total, batch))
        joins.append(joiner_run(cfg, total, batch))
        cpu_raw.append(CPU["raw"] * 1e6)
        cpu_joiner.append(CPU["joiner"] * 1e6)
        err(
            f"round {r}: raw {raws[-1]:,.0f} events/s, joiner {joins[-1]:,.0f} events/s, "
            f"ratio {raws[-1] / joins[-1]:.2f}"
        )
    ratios = [a / b for a, b in zip(raws, joins, strict=True)]
    print(f"raw consume+decode: {median(raws):,.0f} events/s")
    print(f"joiner: {median(joins):,.0f} events/s")
    print(f"ratio raw/joiner: {median(ratios):.2f}")
    print(
        f"ratio by round: {' '.join(f'{x:.2f}' for x in ratios)} (median above, of {rounds} "
        f"rounds of {total:,} events; lower is better, goal <= 2.0)"
    )
    # CPU time of this process (librdkafka's threads too) per event: less sensitive than
    # wall time to whatever else the machine runs, the broker included
    raw_us, joiner_us = median(cpu_raw), median(cpu_joiner)
    print(f"cpu per event: raw {raw_us:.1f} us, joiner {joiner_us:.1f} us")
    print(f"cpu ratio joiner/raw: {joiner_us / raw_us:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
