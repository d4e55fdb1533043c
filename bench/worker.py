"""Shadow worker throughput against a raw consume-and-produce passthrough, same topics, same run.

Fills a fresh prefix with N requests of the demo's house market (default 50,000: 6 numeric
features, 2 categorical, 2 context keys), then times, over the same requests topic on the
same broker:

* passthrough: a plain confluent-kafka consumer in its own group that, for every request,
  produces its bytes unchanged once per candidate to ``<prefix>.predictions`` (the
  request's partition), then per batch waits for the acknowledgements and sends the
  commit without waiting for its answer: the least any shadow worker must do (under the
  worker's garbage-collector thresholds, ``streams.gctune``, as the worker runs);
* worker: ``streams.worker.ShadowWorker`` with two candidates, the demo's ridge model
  (vectorized: one numpy product per micro-batch, plus its latency sample scored alone) and
  its tree model called one request at a time (``cost_us=0``: no simulated feature
  lookup), decoding, scoring on the isolation lanes, encoding and producing one Prediction
  per request per candidate, committing after delivery; with its defaults, so its poll
  thread and lanes share one CPU (``streams.cpuhome``; the passthrough has one Python
  thread);
* worker exactly-once: the same with ``exactly_once=True`` (one transaction per batch),
  over the same requests in another consumer group.

The passthrough and the at-least-once worker run in ``--rounds`` alternating rounds (3 by
default), each in its own consumer group over the same requests: on this 2-core machine, the
passthrough alone has swung from 77,000 to 230,000 requests/s between runs of the same
process (the broker shares the cores), so one pair of figures says little. Each round's pair
and ratio go on their own line; then ``passthrough: N requests/s`` and ``worker: N
requests/s`` (medians of the rounds), then ``worker/passthrough: R (higher is better; goal
>= 0.6)``, the median of the rounds' ratios, the exactly-once figure (one round) and its
ratio, and the CPU time of this process per request in each phase (librdkafka's threads
included; medians). ``--profile FILE`` writes a cProfile of the worker's phase. Usage: ``python
bench/worker.py [--requests N] [--batch-size B]``; uses KAFKA_BOOTSTRAP_SERVERS, else the
running embedded broker, else one started for the run and stopped after it.
"""

from __future__ import annotations

import argparse
import cProfile
import sys
import threading
import time
import uuid
from collections.abc import Iterable

import numpy as np
from _common import KEEP_BROKER_HELP, with_broker
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.config import Config
from streams.demo_models import HouseMarket, TreePriceModel, ridge_candidate
from streams.gctune import fewer_collections
from streams.kafka import Topics, ensure_topics
from streams.models import Candidate
from streams.schemas import default_codec
from streams.worker import ShadowWorker

CPU: dict[str, list[float]] = {}
"""CPU seconds of this process per request, by phase, one per round."""
CANDIDATES = 2


def _median(values: Iterable[float]) -> float:
    # numpy's: bench/statistics.py shadows the standard library's module here
    return float(np.median(list(values)))


def fill(cfg: Config, n: int) -> None:
    t = Topics(cfg.prefix)
    encode = default_codec().encoder("Request")
    p = Producer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "linger.ms": 50,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    base = int(time.time() * 1000) - n
    for i, (numeric, categorical, context) in enumerate(HouseMarket(3).sample(n)):
        rid = f"w{i}"
        request = {
            "request_id": rid,
            "event_time": base + i,
            "use_case": "house-price",
            "numeric_features": numeric,
            "categorical_features": categorical,
            "context": context,
        }
        p.produce(t.requests, encode(request), rid.encode())
        if i % 5000 == 0:
            p.poll(0)
    p.flush()
    print(f"filling: {n}/{n} requests", file=sys.stderr)


def passthrough(cfg: Config, n: int, batch_size: int) -> float:
    """Consume, produce each request's bytes once per candidate, flush, commit; per batch."""
    t = Topics(cfg.prefix)
    c = Consumer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "group.id": f"passthrough-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    p = Producer({"bootstrap.servers": cfg.bootstrap_servers, "linger.ms": 5})
    c.subscribe([t.requests])
    seen = 0
    start = cpu = 0.0
    # the worker's collector thresholds (streams/gctune.py), so neither gets an edge there
    with fewer_collections():
        while seen < n:
            msgs = c.consume(num_messages=batch_size, timeout=1.0)
            if msgs and not start:
                start, cpu = time.perf_counter(), time.process_time()
            offsets: dict[int, int] = {}
            for m in msgs:
                if m.error() is not None:
                    continue
                part, offset = m.partition(), m.offset()
                assert part is not None and offset is not None
                for _ in range(CANDIDATES):
                    # positional, as the worker produces (keyword parsing is ~0.4 us a call)
                    p.produce(t.predictions, m.value(), m.key(), part)
                offsets[part] = offset + 1
                seen += 1
            p.poll(0)
            if offsets:
                p.flush()
                c.commit(
                    offsets=[TopicPartition(t.requests, q, o) for q, o in offsets.items()],
                    asynchronous=True,
                )
    elapsed = time.perf_counter() - start
    CPU.setdefault("passthrough", []).append((time.process_time() - cpu) / seen)
    c.close()
    return seen / elapsed


def worker_run(
    cfg: Config,
    n: int,
    batch_size: int,
    *,
    exactly_once: bool = False,
    profile: str | None = None,
    trivial: bool = False,
    round_: int = 0,
) -> float:
    candidates = (
        [Candidate("null-batch@1", _NullBatch()), Candidate("null-one@1", _NullOne())]
        if trivial
        else [
            Candidate("price-ridge@4", ridge_candidate),
            Candidate("price-tree@1", TreePriceModel(cost_us=0.0)),
        ]
    )
    name = "worker-trivial" if trivial else "worker-eos" if exactly_once else "worker"
    worker = ShadowWorker(
        cfg,
        candidates,
        group_id=f"{cfg.prefix}.{name}.{round_}",
        batch_size=batch_size,
        exactly_once=exactly_once,
    )
    stop = threading.Event()
    marks: dict[str, float] = {}
    profiler = cProfile.Profile() if profile else None

    def on_batch(size: int) -> None:
        consumed = worker.stats.consumed
        if "start" not in marks:
            # timed from the end of the first batch: the group join and the dict models'
            # warm-up are start-up, not throughput
            marks["start"], marks["cpu"] = time.perf_counter(), time.process_time()
            marks["first"] = consumed
            if profiler is not None:
                profiler.enable()
        if consumed >= n and "end" not in marks:
            marks["end"] = time.perf_counter()
            cpu = (time.process_time() - marks["cpu"]) / (consumed - marks["first"])
            CPU.setdefault(name, []).append(cpu)
            if profiler is not None:
                profiler.disable()
            stop.set()

    worker.run(stop=stop, on_batch=on_batch)
    if profiler is not None and profile:
        profiler.dump_stats(profile)
    return (worker.stats.consumed - marks["first"]) / (marks["end"] - marks["start"])


class _NullBatch:
    """A vectorized model that does no work: what is left is the worker's own cost."""

    def predict_many(self, xs: list[dict[str, object]]) -> list[float]:
        return [1.0] * len(xs)


class _NullOne:
    """A one-request-at-a-time model that does no work."""

    def predict_one(self, x: dict[str, object]) -> float:
        return 1.0


def warm_transactions(cfg: Config) -> None:
    """One committed transaction before timing: a fresh broker's transaction coordinator
    loads its log on first use (see bench/joiner.py)."""
    p = Producer({"bootstrap.servers": cfg.bootstrap_servers, "transactional.id": cfg.prefix})
    p.init_transactions(120)
    p.begin_transaction()
    p.produce(f"{cfg.prefix}.deadletter", b"warm-up")
    p.commit_transaction(120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--batch-size", type=int, default=500, help="the worker's default")
    ap.add_argument("--rounds", type=int, default=3, help="alternating passthrough/worker rounds")
    ap.add_argument("--profile", metavar="FILE", help="cProfile of the worker phase to FILE")
    ap.add_argument(
        "--trivial",
        action="store_true",
        help="also time the worker with two models that do no work (its own cost alone)",
    )
    ap.add_argument("--keep-broker", action="store_true", help=KEEP_BROKER_HELP)
    args = ap.parse_args(argv)
    return with_broker(
        args.keep_broker,
        lambda bootstrap: measure(
            bootstrap, args.requests, args.batch_size, args.profile, args.trivial, args.rounds
        ),
    )


def measure(
    bootstrap: str,
    requests: int,
    batch_size: int,
    profile: str | None,
    trivial: bool = False,
    rounds: int = 3,
) -> int:
    cfg = Config(bootstrap_servers=bootstrap, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    ensure_topics(cfg)
    warm_transactions(cfg)
    fill(cfg, requests)
    raws: list[float] = []
    workeds: list[float] = []
    for k in range(1, rounds + 1):
        raws.append(passthrough(cfg, requests, batch_size))
        # the profile, when asked for, covers the first round's worker
        workeds.append(
            worker_run(cfg, requests, batch_size, profile=profile if k == 1 else None, round_=k)
        )
        print(
            f"round {k}: passthrough {raws[-1]:,.0f} requests/s, worker {workeds[-1]:,.0f} "
            f"requests/s, worker/passthrough {workeds[-1] / raws[-1]:.2f}"
        )
    raw = _median(raws)
    print(f"passthrough: {raw:,.0f} requests/s")
    print(f"worker: {_median(workeds):,.0f} requests/s")
    ratio = _median(w / r for w, r in zip(workeds, raws, strict=True))
    print(f"worker/passthrough: {ratio:.2f} (higher is better; goal >= 0.6)")
    eos = worker_run(cfg, requests, batch_size, exactly_once=True)
    print(f"worker exactly-once: {eos:,.0f} requests/s")
    print(f"worker exactly-once/passthrough: {eos / raw:.2f}")
    if trivial:
        null = worker_run(cfg, requests, batch_size, trivial=True)
        print(f"worker, models doing no work: {null:,.0f} requests/s")
        print(f"worker, models doing no work/passthrough: {null / raw:.2f}")
    us = {k: _median(v) * 1e6 for k, v in CPU.items()}
    print(
        f"cpu per request: passthrough {us['passthrough']:.1f} us, worker {us['worker']:.1f} "
        f"us, worker exactly-once {us['worker-eos']:.1f} us"
        + (f", worker with models doing no work {us['worker-trivial']:.1f} us" if trivial else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
