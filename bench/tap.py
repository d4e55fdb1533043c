"""Caller-side cost of ``Tap.record_request`` against a raw confluent-kafka ``produce()``.

The tap's promise (DESIGN section 3) is that mirroring a request costs the service's thread
about what a raw ``produce()`` of pre-encoded bytes costs, because Avro encoding (~10x
that) happens on the tap's own thread. This measures both in the same run, on the same
broker and producer settings, call by call with ``perf_counter_ns``, and prints mean, p50,
p99 (and p99.9, max: the GIL makes the encoder thread visible in the far tail) in
microseconds, then the ratios.

Run: ``python bench/tap.py`` with ``KAFKA_BOOTSTRAP_SERVERS`` set, or without it on the
embedded broker (``streams.broker``): the running one, or one started for the run and
stopped after it (``--keep-broker`` keeps it). ``--calls`` and ``--features`` change the load.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from streams import broker
from streams.config import Config
from streams.kafka import Topics, client_config, ensure_topics, topic_specs
from streams.schemas import default_codec
from streams.tap import PRODUCER_DEFAULTS, Tap, TapStats

_ns = time.perf_counter_ns


def summarize(samples: array[int], overhead_ns: float) -> dict[str, float]:
    """Mean and percentiles in microseconds, the timer's own cost subtracted."""
    ordered = sorted(samples)
    n = len(ordered)

    def pct(q: float) -> float:
        return ordered[min(n - 1, int(q * n))]

    us = 1000.0
    return {
        "mean": (math.fsum(ordered) / len(ordered) - overhead_ns) / us,
        "p50": (pct(0.50) - overhead_ns) / us,
        "p99": (pct(0.99) - overhead_ns) / us,
        "p99.9": (pct(0.999) - overhead_ns) / us,
        "max": (ordered[-1] - overhead_ns) / us,
    }


def timer_overhead(calls: int) -> float:
    """Median cost of an empty ``perf_counter_ns`` pair, subtracted from every sample."""
    samples = array("q", bytes(8 * calls))
    for i in range(calls):
        t0 = _ns()
        samples[i] = _ns() - t0
    # not the statistics module: bench/statistics.py (this directory) shadows it here
    ordered = sorted(samples)
    return float(ordered[len(ordered) // 2])


def time_calls(
    call: Callable[[str], object],
    ids: Sequence[str],
    every: int = 0,
    between: Callable[[], object] | None = None,
) -> array[int]:
    """Time ``call(id)`` once per id; ``between`` runs untimed every ``every`` calls."""
    samples = array("q", bytes(8 * len(ids)))
    for i, request_id in enumerate(ids):
        t0 = _ns()
        call(request_id)
        samples[i] = _ns() - t0
        if every and between is not None and i % every == every - 1:
            between()
    return samples


def bench_raw(cfg: Config, ids: Sequence[str], payload: bytes) -> array[int]:
    """A service producing pre-encoded bytes itself: ``produce`` timed, ``poll(0)`` not."""
    conf = client_config(cfg, **{**PRODUCER_DEFAULTS, "queue.buffering.max.messages": 2_000_000})
    producer = Producer(conf)
    topic = Topics(cfg.prefix).requests
    produce = producer.produce

    def call(request_id: str) -> None:
        produce(topic, payload, request_id)

    samples = time_calls(call, ids, every=1000, between=lambda: producer.poll(0))
    left = producer.flush(60)
    if left:
        print(f"warning: raw producer left {left} messages unflushed", file=sys.stderr)
    return samples


def bench_tap(
    cfg: Config, ids: Sequence[str], numeric: dict[str, float]
) -> tuple[array[int], TapStats, float]:
    """The same requests through a Tap: only ``record_request`` is timed.

    Also returns the wall time from the first call until ``close()`` has every delivery,
    which is bounded by the encoder thread: the work moved off the caller, not away.
    """
    tap = Tap(cfg, buffer_size=len(ids) + 1)
    record = tap.record_request

    def call(request_id: str) -> None:
        record(request_id, numeric)

    start = time.perf_counter()
    samples = time_calls(call, ids)
    stats = tap.close(timeout=120)
    return samples, stats, time.perf_counter() - start


def row(name: str, s: dict[str, float]) -> str:
    cells = "  ".join(f"{k} {v:8.3f}" for k, v in s.items())
    return f"{name:<28} {cells}  (us)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100_000, help="timed calls per side")
    parser.add_argument("--features", type=int, default=20, help="numeric features per request")
    parser.add_argument("--warmup", type=int, default=5_000, help="untimed calls first")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the topics")
    parser.add_argument("--keep-broker", action="store_true", help="leave a broker it started up")
    args = parser.parse_args(argv)
    progress = lambda message: print(message, file=sys.stderr)  # noqa: E731
    with broker.bootstrap_for_run(keep=args.keep_broker, progress=progress) as bootstrap:
        return measure(bootstrap, args)


def measure(bootstrap: str, args: argparse.Namespace) -> int:
    cfg = Config(bootstrap_servers=bootstrap, prefix=f"bench-tap-{uuid4().hex[:8]}")
    ensure_topics(cfg)
    try:
        numeric = {f"feature_{i:02d}": 0.5 + i * 1.25 for i in range(args.features)}
        payload = default_codec().encode(
            "Request",
            {
                "request_id": "req-000000000",
                "event_time": time.time_ns() // 1_000_000,
                "use_case": "",
                "numeric_features": numeric,
                "categorical_features": {},
                "context": {},
            },
        )
        warm = [f"warm-{i:09d}" for i in range(args.warmup)]
        ids = [f"req-{i:09d}" for i in range(args.calls)]
        overhead = timer_overhead(100_000)

        bench_raw(cfg, warm, payload)
        raw = summarize(bench_raw(cfg, ids, payload), overhead)
        bench_tap(cfg, warm, numeric)
        tap_samples, stats, wall = bench_tap(cfg, ids, numeric)
        tap = summarize(tap_samples, overhead)

        print(
            f"bootstrap {bootstrap}, {args.calls} calls per side, {args.features} numeric "
            f"features, {len(payload)}-byte records, timer overhead {overhead:.0f} ns "
            "(subtracted)"
        )
        print(row("raw produce(pre-encoded)", raw))
        print(row("Tap.record_request", tap))
        print(f"tap stats: {stats}")
        print(
            f"tap end to end: {args.calls / wall:,.0f} records/s from the first call to close() "
            f"(encoding and delivery on the tap's thread, {wall / args.calls * 1e6:.2f} us/record)"
        )
        if stats.sent != args.calls:
            print(f"warning: the tap sent {stats.sent} of {args.calls}", file=sys.stderr)
        print(
            "ratio tap/raw: "
            + "  ".join(f"{k} {tap[k] / raw[k]:.2f}x" for k in ("mean", "p50", "p99"))
        )
    finally:
        if not args.keep_topics:
            admin = AdminClient(client_config(cfg))
            names = [spec.topic for spec in topic_specs(cfg)]
            for future in admin.delete_topics(names, operation_timeout=30).values():
                try:
                    future.result(30)
                except Exception as exc:  # cleanup must not hide the numbers
                    print(f"warning: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
