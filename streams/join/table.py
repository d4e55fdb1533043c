"""Pending joins by request_id, and the ids whose join has finished.

A live :class:`Entry` collects the request and each model's answer until the watermark
passes its deadline (first event time + join TTL), or until the pending cap evicts it,
oldest deadline first. A finished join is then remembered in a compact form (which of
request, primary and candidates it had) until the watermark is ``max_age`` past its event
time: an event older than that is refused as a dead letter anyway
(:mod:`streams.join.timecheck`), so every duplicate is recognised as one, whenever it
arrives, in memory bounded by rate x max_age.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Iterator
from typing import Any

#: a model's answer kept while the join is open: (value, label, latency_ms, error)
Answer = tuple[float | None, str | None, float | None, str | None]


class Entry:
    """An open join: the request (seen or not), the primary's and each candidate's answer."""

    __slots__ = ("cands", "deadline", "prim", "req", "t")

    def __init__(self, t: int, deadline: int) -> None:
        self.t = t
        self.deadline = deadline
        self.req = False
        self.prim: Answer | None = None
        self.cands: dict[str, Answer] = {}

    def dump(self) -> list[Any]:
        return [self.t, self.deadline, self.req, self.prim, self.cands]

    @classmethod
    def load(cls, data: list[Any]) -> Entry:
        t, deadline, req, prim, cands = data[:5]
        e = cls(t, deadline)
        e.req = req
        e.prim = tuple(prim) if prim is not None else None
        e.cands = {k: tuple(v) for k, v in cands.items()}
        return e


class Finished:
    """What a closed join had, kept to recognise duplicates and late arrivals."""

    __slots__ = ("forget_at", "models", "prim", "req")

    def __init__(self, forget_at: int, req: bool, prim: bool, models: tuple[str, ...]) -> None:
        self.forget_at = forget_at
        self.req = req
        self.prim = prim
        #: a tuple of interned ids, not a set: one is kept per request for max_age, and an
        #: empty set alone costs 216 bytes
        self.models = models

    def dump(self) -> dict[str, Any]:
        return {"f": self.forget_at, "r": self.req, "p": self.prim, "c": sorted(self.models)}

    @classmethod
    def load(cls, data: dict[str, Any]) -> Finished:
        return cls(
            int(data["f"]),
            bool(data["r"]),
            bool(data["p"]),
            tuple(sys.intern(c) for c in data["c"]),
        )


class JoinTable:
    """Live entries (a heap by deadline) and finished ones (a queue by forget time)."""

    def __init__(self, ttl_ms: int, remember_ms: int, max_pending: int) -> None:
        self.ttl_ms = ttl_ms
        self.remember_ms = remember_ms
        self.max_pending = max_pending
        self.live: dict[str, Entry] = {}
        self.done: dict[str, Finished] = {}
        self._deadlines: list[tuple[int, str]] = []
        self._forget: list[tuple[int, str]] = []  # heap: late arrivals finish out of order
        #: request ids whose record changed since the last changelog write
        self.dirty: set[str] = set()

    def open(self, rid: str, t: int) -> Entry:
        e = self.live.get(rid)
        if e is None:
            e = self.live[rid] = Entry(t, t + self.ttl_ms)
            heapq.heappush(self._deadlines, (e.deadline, rid))
        self.dirty.add(rid)
        return e

    def next_deadline(self) -> int | None:
        return self._deadlines[0][0] if self._deadlines else None

    def pop_due(self, wm: int) -> Iterator[tuple[str, Entry]]:
        """Live entries whose deadline is at or before ``wm``, earliest first, removed."""
        q = self._deadlines
        while q and q[0][0] <= wm:
            deadline, rid = heapq.heappop(q)
            e = self.live.get(rid)
            if e is not None and e.deadline == deadline:
                del self.live[rid]
                yield rid, e

    def pop_over_cap(self) -> Iterator[tuple[str, Entry]]:
        """Entries beyond ``max_pending``, earliest deadline first, removed."""
        while len(self.live) > self.max_pending and self._deadlines:
            deadline, rid = heapq.heappop(self._deadlines)
            e = self.live.get(rid)
            if e is not None and e.deadline == deadline:
                del self.live[rid]
                yield rid, e

    def finish(self, rid: str, e: Entry) -> None:
        first_seen = e.deadline - self.ttl_ms
        models = tuple(sys.intern(c) for c in e.cands)
        f = Finished(first_seen + self.remember_ms, e.req, e.prim is not None, models)
        self.done[rid] = f
        heapq.heappush(self._forget, (f.forget_at, rid))
        self.dirty.add(rid)

    def forget(self, wm: int) -> None:
        """Drop finished ids the watermark has left ``remember_ms`` behind."""
        q = self._forget
        while q and q[0][0] <= wm:
            forget_at, rid = heapq.heappop(q)
            f = self.done.get(rid)
            if f is not None and f.forget_at == forget_at:
                del self.done[rid]
                self.dirty.add(rid)

    def touch(self, rid: str) -> None:
        self.dirty.add(rid)

    # -- changelog ---------------------------------------------------------------------

    def record(self, rid: str) -> Any | None:
        """The changelog value of ``rid`` (None: gone)."""
        e = self.live.get(rid)
        if e is not None:
            return e.dump()
        f = self.done.get(rid)
        return None if f is None else f.dump()

    def restore(self, rid: str, data: Any | None) -> None:
        self.live.pop(rid, None)
        self.done.pop(rid, None)
        if data is None:
            return
        if isinstance(data, list):  # an open join (also the only form of release 0.1)
            self.live[rid] = Entry.load(data)
        else:
            self.done[rid] = Finished.load(data)

    def finish_restore(self) -> None:
        self._deadlines = sorted((e.deadline, rid) for rid, e in self.live.items())
        self._forget = sorted((f.forget_at, rid) for rid, f in self.done.items())
        self.dirty.clear()
