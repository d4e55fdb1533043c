"""What an online learner keeps between predicting a request and learning from its label.

Progressive validation: a learning candidate answers a request first, and learns from it
only when its label comes, which may be seconds or hours later. Meanwhile the request's
features must be kept, and memory must stay bounded whatever the label source does (never
labels, labels a day late, labels for requests this worker never saw). So the store keeps:

- **pending features**: request_id -> (partition, event time, features), added once the
  request was *scored* (so its published prediction never saw its label);
- **early labels**: labels whose request has not been scored yet (a label source ahead of
  a worker catching up on a backlog), held until the features come;
- **learned ids**: recent request_ids already learned from, so that a second label (an
  at-least-once label source) is recognised and not learned twice.

Each of the three is capped at ``cap`` entries and ``horizon_ms`` of event time. Past the
cap the oldest entry (by arrival) goes; past the horizon (counted back from the latest
event time seen, of a request or a label) expired entries go too. Nothing leaves silently:
every exit is a counter of :class:`StoreStats`.

Eviction walks from the oldest arrival, so "past the horizon" is checked in arrival order:
an entry that arrived late with an old event time goes when it reaches the front, not
before. That keeps every operation O(1) amortized.

Nothing here knows Kafka or a model: :meth:`FeatureStore.add` and :meth:`FeatureStore.label`
return the ``(features, target)`` pairs that are ready to be learned.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_CAP", "FeatureStore", "StoreStats"]

#: Requests' features kept per learner by default. A demo request (8 features) costs about
#: 520 bytes in the store, its feature dict included (measured with tracemalloc: 100,000
#: of them, 52 MB), so the default is about 50 MB of features per learner, plus the
#: learned ids and early labels (each capped alike, and smaller).
DEFAULT_CAP = 100_000

Features = dict[str, Any]
#: ``(features, target, the label's event time)``: ready to learn once the scoring has
#: passed that time (see :mod:`streams.learning.learner`).
Pair = tuple[Features, Any, int]


@dataclass
class StoreStats:
    """Where every request's features and every label went. Cumulative, checkpointed."""

    #: Scored requests whose features were kept to await their label.
    features: int = 0
    #: Requests added again while kept or already learned (re-scored after a restart).
    feature_duplicates: int = 0
    #: Features dropped, label never seen, to stay under the cap.
    evicted: int = 0
    #: Features dropped, label never seen, past the horizon.
    expired: int = 0
    #: Features and early labels dropped with a partition this worker no longer holds.
    revoked: int = 0
    #: Labels read (first and duplicate ones).
    labels: int = 0
    #: Labels paired with their request's features: handed to ``learn_one``.
    matched: int = 0
    #: Labels that came before their request was scored (held until it is).
    early: int = 0
    #: Early labels dropped (cap, horizon) before their request was scored: requests this
    #: worker never scored (before its start, another worker's), or that come too late.
    unmatched: int = 0
    #: A second label of a request (held early, or already learned): ignored.
    label_duplicates: int = 0


class FeatureStore:
    """Features awaiting labels, early labels and learned ids, bounded (see the module).

    >>> store = FeatureStore(cap=2, horizon_ms=1_000)
    >>> store.add(0, "r1", 100, {"x": 1.0})
    >>> store.label(0, "r1", 150, 3.0)
    ({'x': 1.0}, 3.0, 150)
    >>> store.label(0, "r1", 160, 3.0) is None  # a duplicate label
    True
    >>> store.label(0, "r2", 170, 5.0) is None  # early: r2 is not scored yet
    True
    >>> store.add(0, "r2", 120, {"x": 2.0})
    ({'x': 2.0}, 5.0, 170)
    >>> (store.stats.matched, store.stats.early, store.stats.label_duplicates)
    (2, 1, 1)
    """

    def __init__(self, cap: int = DEFAULT_CAP, horizon_ms: int = 86_400_000) -> None:
        if cap < 1:
            raise ValueError(f"the store's cap must be >= 1, got {cap}")
        if horizon_ms < 0:
            raise ValueError(f"the horizon must be >= 0 ms, got {horizon_ms}")
        self.cap = cap
        self.horizon_ms = horizon_ms
        self.stats = StoreStats()
        #: Latest event time seen (requests and labels): the horizon counts back from it.
        self.clock_ms = 0
        self._pending: OrderedDict[str, tuple[int, int, Features]] = OrderedDict()
        self._early: OrderedDict[str, tuple[int, int, Any]] = OrderedDict()
        self._learned: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        """Features awaiting a label."""
        return len(self._pending)

    @property
    def early_labels(self) -> int:
        """Labels awaiting their request."""
        return len(self._early)

    def add(self, partition: int, request_id: str, event_ms: int, x: Features) -> Pair | None:
        """A scored request's features; the pair to learn if its label came early."""
        stats = self.stats
        if request_id in self._pending or request_id in self._learned:
            stats.feature_duplicates += 1
            return None
        self._tick(event_ms)
        early = self._early.pop(request_id, None)
        stats.features += 1
        if early is not None:
            return self._learn(request_id, x, early[2], early[1])
        self._pending[request_id] = (partition, event_ms, x)
        while len(self._pending) > self.cap:  # while: a restart may lower the cap
            self._pending.popitem(last=False)
            stats.evicted += 1
        return None

    def label(self, partition: int, request_id: str, event_ms: int, y: Any) -> Pair | None:
        """A label; the pair to learn if its request's features are here."""
        stats = self.stats
        stats.labels += 1
        if request_id in self._learned or request_id in self._early:
            stats.label_duplicates += 1
            return None
        self._tick(event_ms)
        kept = self._pending.pop(request_id, None)
        if kept is not None:
            return self._learn(request_id, kept[2], y, event_ms)
        stats.early += 1
        self._early[request_id] = (partition, event_ms, y)
        while len(self._early) > self.cap:
            self._early.popitem(last=False)
            stats.unmatched += 1
        return None

    def drop_partition(self, partition: int) -> int:
        """Forget a partition given to another worker (its labels go there); returns how
        many features and early labels went."""
        gone = [k for k, v in self._pending.items() if v[0] == partition]
        for k in gone:
            del self._pending[k]
        early = [k for k, v in self._early.items() if v[0] == partition]
        for k in early:
            del self._early[k]
        self.stats.revoked += len(gone) + len(early)
        return len(gone) + len(early)

    def _learn(self, request_id: str, x: Features, y: Any, label_ms: int) -> Pair:
        self.stats.matched += 1
        learned = self._learned
        learned[request_id] = None
        while len(learned) > self.cap:
            learned.popitem(last=False)
        return x, y, label_ms

    def _tick(self, event_ms: int) -> None:
        """Advance the clock; drop what it leaves past the horizon, oldest arrivals first."""
        if event_ms <= self.clock_ms:
            return
        self.clock_ms = event_ms
        limit = event_ms - self.horizon_ms
        pending, early = self._pending, self._early
        while pending and next(iter(pending.values()))[1] < limit:
            pending.popitem(last=False)
            self.stats.expired += 1
        while early and next(iter(early.values()))[1] < limit:
            early.popitem(last=False)
            self.stats.unmatched += 1
        # learned ids need no horizon of their own (only the cap): a duplicate label that
        # comes after its id left them is held as early, and expires counted unmatched
