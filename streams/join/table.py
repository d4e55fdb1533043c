"""Pending joins by request_id, and the ids whose join has finished.

A live :class:`Entry` collects the request and each model's answer until the watermark
passes its deadline (first event time + join TTL), or until the pending cap evicts it,
oldest deadline first. A finished join is then remembered in a compact form
(:mod:`streams.join.finished`: which of request, primary and candidates it had) until the
watermark is ``max_age`` past its event time: an event older than that is refused as a dead
letter anyway (:mod:`streams.join.timecheck`), so every duplicate is recognised as one,
whenever it arrives, in memory bounded by rate x max_age.

Changelog of the live entries: one segment record per batch, the batch's delta (the
entries that changed, as they are now, and the ids that left), and now and then a base
(:mod:`streams.join.segments`). The previous release wrote one JSON record per entry and
change (key ``e`` + request_id, tombstoned when the join finished): for bench/joiner.py's
50,000 requests x 4 events its changelog grew by 115,359 offsets then, 466 with segments
(transaction markers included; one run each on the embedded broker, issue 7). Those
records still restore, and each is tombstoned when its entry next changes or at the next
base.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Any

from streams.join.finished import Finished, FinishedStore, digest
from streams.join.segments import SegmentLog

#: a model's answer kept while the join is open: (value, label, latency_ms, error), and a
#: classifier's class scores as a fifth element when it published any (for the log-loss)
Answer = tuple[Any, ...]
#: a request's ground truth: (true value, true class, the label's event time)
Truth = tuple[float | None, str | None, int]


class Entry:
    """An open join: the request (seen or not), the primary's and each candidate's answer."""

    __slots__ = ("cands", "ctx", "deadline", "h", "label", "pm", "prim", "req", "t")

    def __init__(self, t: int, deadline: int, h: int) -> None:
        self.t = t
        self.h = h  # the request_id's digest, the key of its finished form
        self.deadline = deadline
        self.req = False
        self.prim: Answer | None = None
        self.cands: dict[str, Answer] = {}
        #: the request's context slices (``key=value``), once the request came
        self.ctx: tuple[str, ...] = ()
        #: its ground truth, once the label came while the join was open
        self.label: Truth | None = None
        #: the model that answered as primary (a promotion changes it between requests)
        self.pm: str | None = None

    def dump(self) -> list[Any]:
        # ctx as it is: one tuple shared by every request of the same context, which a
        # segment's pickle then writes once (the list it once was: written every time)
        if self.pm is not None:
            return [
                self.t,
                self.deadline,
                self.req,
                self.prim,
                self.cands,
                self.ctx,
                self.label,
                self.pm,
            ]
        if self.label is not None:
            return [self.t, self.deadline, self.req, self.prim, self.cands, self.ctx, self.label]
        if self.ctx:
            return [self.t, self.deadline, self.req, self.prim, self.cands, self.ctx]
        return [self.t, self.deadline, self.req, self.prim, self.cands]

    @classmethod
    def load(cls, data: list[Any], h: int) -> Entry:
        t, deadline, req, prim, cands = data[:5]
        e = cls(t, deadline, h)
        e.req = req
        e.prim = tuple(prim) if prim is not None else None
        e.cands = {k: tuple(v) for k, v in cands.items()}
        if len(data) > 5:
            e.ctx = tuple(data[5])
        if len(data) > 6 and data[6] is not None:
            e.label = tuple(data[6])
        if len(data) > 7:
            e.pm = data[7]
        return e


class JoinTable:
    """Live entries (a heap by deadline) and finished ones (:class:`FinishedStore`)."""

    def __init__(self, ttl_ms: int, remember_ms: int, max_pending: int) -> None:
        self.ttl_ms = ttl_ms
        self.remember_ms = remember_ms
        self.max_pending = max_pending
        self.live: dict[str, Entry] = {}
        self.done = FinishedStore()
        self._deadlines: list[tuple[int, str]] = []
        #: request ids whose live record changed since the last changelog write
        self.dirty: set[str] = set()
        self.log = SegmentLog(b"s")
        #: live entries restored from the previous release's per-entry records
        self._legacy_live: set[str] = set()

    def open(self, rid: str, t: int, h: int) -> Entry:
        """A new live entry for ``rid`` (the caller found it neither live nor finished)."""
        e = self.live[rid] = Entry(t, t + self.ttl_ms, h)
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
        forget_s = -(-(first_seen + self.remember_ms) // 1000)  # rounded up to a second
        self.done.put(e.h, Finished(forget_s, e.req, e.prim is not None, tuple(e.cands)))
        self.dirty.add(rid)  # its live record goes: a tombstone

    def forget(self, wm: int) -> None:
        """Finished ids the watermark has left ``remember_ms`` behind read as absent."""
        self.done.forget(wm)

    # -- changelog ---------------------------------------------------------------------

    @property
    def seq(self) -> int:
        """Sequence number of the last segment written or restored."""
        return self.log.seq

    @seq.setter
    def seq(self, value: int) -> None:
        self.log.seq = value

    def changes(
        self, entry_prefix: bytes, done_prefix: bytes
    ) -> Iterator[tuple[bytes, bytes | None]]:
        """Changelog records of what changed since the last call: the batch's segment
        of live entries (or a new base), tombstones, then the finished joins' segments."""
        dirty = self.dirty
        if dirty:
            legacy = self._legacy_live
            if legacy:
                for rid in dirty & legacy:
                    yield entry_prefix + rid.encode(), None
                legacy -= dirty
            if self.log.wants_base():
                yield from self.log.base({rid: e.dump() for rid, e in self.live.items()})
                for rid in sorted(legacy):
                    yield entry_prefix + rid.encode(), None
                legacy.clear()
            else:
                live = self.live
                put: dict[str, Any] = {}
                gone: list[str] = []
                for rid in dirty:
                    e = live.get(rid)
                    if e is None:
                        gone.append(rid)
                    else:
                        put[rid] = e.dump()
                yield from self.log.delta(put, gone)
            dirty.clear()
        yield from self.done.changes(done_prefix)

    def restore_segment(self, rest: bytes, value: bytes | None) -> None:
        """A segment record (its key: the segment prefix + ``rest``), in log order."""
        seg = self.log.restore(rest, value)
        if seg is None:
            return
        if seg.starts_base:
            self.live.clear()
        for rid, data in seg.put.items():
            self.live[rid] = Entry.load(data, digest(rid))
        for rid in seg.gone:
            self.live.pop(rid, None)

    def restore(self, rid: str, data: Any | None) -> None:
        """A live record (a list), or a finished one of the previous release (a dict)."""
        self.live.pop(rid, None)
        self._legacy_live.discard(rid)
        if data is None:
            if rid in self.done.legacy:  # an older release forgot it
                self.done.discard(digest(rid))
                self.done.legacy.discard(rid)
            return
        if isinstance(data, list):  # an open join (also the only form of release 0.1)
            self.live[rid] = Entry.load(data, digest(rid))
            self._legacy_live.add(rid)
        else:  # release 0.2 kept finished joins per request_id: move it, and drop the old
            self.done.put(
                digest(rid),
                Finished(
                    -(-int(data["f"]) // 1000),
                    bool(data["r"]),
                    bool(data["p"]),
                    tuple(data["c"]),
                ),
            )
            self.done.legacy.add(rid)

    def finish_restore(self, wm: int | None) -> None:
        self._deadlines = sorted((e.deadline, rid) for rid, e in self.live.items())
        self.dirty.clear()
        self.done.finish_restore(wm)
