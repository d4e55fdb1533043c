"""Fewer full garbage collections while the joiner runs.

The joiner keeps every open join in memory (an object and a few tuples per request, ~1
million objects for bench/joiner.py's backlog) and makes a few short-lived objects per
event. CPython's collector counts allocations, not garbage: with its default thresholds
(700, 10, 10) it traversed the whole live state again and again, 13% of the joiner's
CPU time in a run over bench/joiner.py's 800,000 events without Kafka (17.8 against 15.5
us per event with collections off; one run each on this 2-core machine). Nothing the
joiner builds on its hot path forms reference cycles, so garbage is freed by reference
counting as before; the collector still runs, only less often. The previous thresholds
come back when the joiner stops (it may run inside another program, as in the benches).
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
