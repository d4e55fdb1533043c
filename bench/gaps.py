"""How long the evaluator stalls at a gap in the partials' offsets, against the old way.

Every joiner batch is a transaction, and its commit marker takes an offset: the evaluator
sees a gap before nearly every batch and reads the range back (``GapReader``), in case
faust dropped a record there during a rebalance. It does so on its event loop, so each
gap read delays every window after it.

This commits ``--batches`` transactions of one partial-sized record, ``--every`` seconds
apart, as a joiner does, and reads each new gap as soon as its transaction commits, in the
same run with:

* ``GapReader`` (stays assigned, reads forward, polls record by record);
* the old way, the baseline: assign the range's start and ``read_range`` (a batch consume
  with a 0.2 s timeout) for every gap.

It prints the median and p99 stall of each in ms, each as ``name: N gaps/s`` (1 / mean
stall), then baseline stall / reader stall (higher is better for the reader).

Run: ``python bench/gaps.py`` with ``KAFKA_BOOTSTRAP_SERVERS`` set, or on the embedded
broker (the running one, or one started for the run; ``--keep-broker`` keeps it).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

from confluent_kafka import Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from streams import broker
from streams.config import Config
from streams.evaluator import GapReader
from streams.kafka import committed_reader, read_range

Read = Callable[[int, int], int]


def stalls(bootstrap: str, read: Callable[[str], Read], batches: int, every: float) -> list[float]:
    """Seconds each gap read took, right after its transaction committed."""
    topic = f"bench-gaps-{uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": topic})
    producer.init_transactions(30)
    offsets: list[int] = []

    def delivered(err: object, msg: Message) -> None:
        offsets.append(msg.offset() or 0)

    reader = read(topic)
    out: list[float] = []
    for i in range(batches):
        producer.begin_transaction()
        producer.produce(topic, b"p" * 20_000, key=b"*", partition=0, on_delivery=delivered)
        producer.commit_transaction(30)
        if i:
            t0 = time.perf_counter()
            reader(offsets[-2] + 1, offsets[-1])
            out.append(time.perf_counter() - t0)
        time.sleep(every)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--every", type=float, default=0.2, help="seconds between transactions")
    ap.add_argument("--keep-broker", action="store_true")
    args = ap.parse_args(argv)
    with broker.bootstrap_for_run(keep=args.keep_broker, progress=print) as bootstrap:
        cfg = Config(bootstrap_servers=bootstrap, prefix=f"bench-gaps-{uuid4().hex[:8]}")

        def forward(topic: str) -> Read:
            g = GapReader(cfg, topic, 30.0)
            return lambda lo, hi: len(g.read(0, lo, hi))

        def assign_each(topic: str) -> Read:
            c = committed_reader(cfg, f"{cfg.prefix}.old")
            return lambda lo, hi: sum(1 for _ in read_range(c, topic, 0, lo, hi, 30.0))

        results = {}
        for name, read in (("gap reader", forward), ("assign per gap (before)", assign_each)):
            s = sorted(stalls(bootstrap, read, args.batches, args.every))
            mean = sum(s) / len(s)
            results[name] = mean
            print(
                f"{name}: stall p50 {1000 * s[len(s) // 2]:.1f} ms, "
                f"p99 {1000 * s[min(len(s) - 1, int(len(s) * 0.99))]:.1f} ms"
            )
            print(f"{name}: {1 / mean:,.0f} gaps/s")
        ratio = results["assign per gap (before)"] / results["gap reader"]
        print(f"stall before / gap reader: {ratio:.1f}x (higher: the reader stalls less)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
