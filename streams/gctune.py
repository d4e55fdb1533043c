"""Fewer garbage collections while the joiner or a shadow worker runs.

CPython's collector counts allocations, not garbage: with its default thresholds (700, 10,
10) it runs a generation-0 collection every 700 net allocations of containers, and every
100th one is a full collection that traverses every live object again.

- The joiner keeps every open join in memory (an object and a few tuples per request, ~1
  million objects for bench/joiner.py's backlog). The collector took 13% of its CPU time in
  a run over bench/joiner.py's 800,000 events without Kafka (17.8 against 15.5 us per
  event with collections off; one run each on this 2-core machine).
- A shadow worker holds little, but a micro-batch of 500 requests makes ~5,000 containers
  that live until the batch is produced (records, feature dicts, outcomes). Timed with
  ``gc.callbacks`` over 100,000 requests of bench/worker.py, the collections cost 1.2 us a
  request (0.34 generation 0, 0.14 generation 1, 0.75 the six full ones), about a tenth
  of the worker's CPU time; with these thresholds, none ran.

Nothing either builds on its hot path forms reference cycles, so garbage is freed by
reference counting as before; the collector still runs, only less often. The previous
thresholds come back when the stage stops (it may run inside another program, as in the
benches and tests).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["THRESHOLDS", "fewer_collections"]

THRESHOLDS = (10_000, 10, 100)
"""Generation 0 after 10,000 net allocations instead of 700, and a full collection after
100 collections of generation 1 instead of 10 (about every 10 million allocations)."""


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the block with :data:`THRESHOLDS`, then restore the thresholds it found."""
    before = gc.get_threshold()
    gc.set_threshold(*THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
