"""What the broker benches share: the broker for the run, their command line, and the
producer that fills their topics.

``python bench/<name>.py`` puts bench/ first on the import path, so the scripts import
this as ``_common``; the leading underscore keeps it from shadowing a module of the
standard library, as bench/statistics.py shadows ``statistics`` for these scripts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from confluent_kafka import Producer

from streams import broker
from streams.config import Config

KEEP_BROKER_HELP = "leave a broker it started up"


def err(message: str) -> None:
    """Progress goes to stderr: stdout holds the report lines that tests and readers parse."""
    print(message, file=sys.stderr)


def with_broker(keep: bool, measure: Callable[[str], int]) -> int:
    """``measure(bootstrap)`` against KAFKA_BOOTSTRAP_SERVERS, else the running embedded
    broker, else one started for the run and stopped after it unless ``keep``."""
    with broker.bootstrap_for_run(keep=keep, progress=err) as bootstrap:
        return measure(bootstrap)


def requests_main(
    doc: str | None,
    requests: int,
    measure: Callable[[str, int], int],
    argv: Sequence[str] | None = None,
) -> int:
    """The command line of a bench that fills N requests and measures a stage on them:
    ``--requests N`` (default ``requests``) and ``--keep-broker``; the description is the
    first line of ``doc``, the script's docstring."""
    ap = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    ap.add_argument("--requests", type=int, default=requests)
    ap.add_argument("--keep-broker", action="store_true", help=KEEP_BROKER_HELP)
    args = ap.parse_args(argv)
    return with_broker(args.keep_broker, lambda bootstrap: measure(bootstrap, args.requests))


def bulk_producer(cfg: Config) -> Producer:
    """A producer that fills topics fast (large lz4 batches, a deep queue), keyed records
    partitioned with murmur2 as the tap and Java clients do: a label and its request
    land on the same partition."""
    return Producer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "partitioner": "murmur2_random",
            "linger.ms": 50,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 1_000_000,
            "compression.type": "lz4",
        }
    )
