"""The joiner's per-partition state: pending joins, open window accumulators, progress.

Pure Python and numpy, no Kafka: :mod:`streams.joiner` feeds it decoded events in offset
order, asks it for the partials to publish and for the state changes to write to the
changelog, and commits all of that in one transaction. Keeping it apart from the Kafka loop
keeps the join semantics unit-testable and the loop small.

Semantics, per input partition:

* An entry per request_id collects the request, the primary's prediction and each
  candidate's prediction. A pair (primary, candidate) is folded into the statistics of the
  window of the *primary's* event time as soon as both halves are there, exactly once.
* An event seen again (same request_id, role and model id) is counted as a duplicate and
  ignored, for as long as its entry lives (the join TTL).
* The watermark is the smallest, over the request and prediction streams, of the newest
  event time seen, minus the allowed lateness; windows that
  end at or before it are closed and published. Data for a closed window is published
  later as a late addition (``seq`` > 0), so cumulative numbers never lose anything.
* An entry expires when the watermark passes its deadline (event time + TTL); what never
  joined is counted by reason in the window of the deadline.
"""

from __future__ import annotations

import dataclasses
import heapq
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streams.metrics.partial import SHARED, PartialStats

# prediction outcome kept in an entry: (value, label, latency_ms, error)
Outcome = tuple[float | None, str | None, float | None, str | None]

KEY_ENTRY = b"e"
KEY_ACC = b"a"
KEY_META = b"m"


class Entry:
    __slots__ = ("cands", "deadline", "prim", "req", "t")

    def __init__(self, t: int, deadline: int) -> None:
        self.t = t
        self.deadline = deadline
        self.req = False
        self.prim: Outcome | None = None
        self.cands: dict[str, Outcome] = {}

    def dump(self) -> bytes:
        return json.dumps([self.t, self.deadline, self.req, self.prim, self.cands]).encode()

    @classmethod
    def load(cls, data: bytes) -> Entry:
        t, deadline, req, prim, cands = json.loads(data)
        e = cls(t, deadline)
        e.req = req
        e.prim = tuple(prim) if prim is not None else None
        e.cands = {k: tuple(v) for k, v in cands.items()}
        return e


@dataclass
class _Buffer:
    """Per-batch columns, folded into a PartialStats with numpy at the end of the batch."""

    reg_p: list[float] = field(default_factory=list)
    reg_c: list[float] = field(default_factory=list)
    cls_p: list[str] = field(default_factory=list)
    cls_c: list[str] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Emitted:
    """One partial to publish: identity plus statistics."""

    candidate: str
    window_start: int
    seq: int
    stats: PartialStats
    #: progress this partial vouches for (the evaluator reads it from '*' partials only)
    watermark: int = 0


class PartitionState:
    """Join and accumulate for one input partition; see the module docstring."""

    def __init__(self, partition: int, window_ms: int, lateness_ms: int, ttl_ms: int) -> None:
        self.partition = partition
        self.window_ms = window_ms
        self.lateness_ms = lateness_ms
        self.ttl_ms = ttl_ms
        self.pending: dict[str, Entry] = {}
        self._expiry: list[tuple[int, str]] = []  # heap by deadline: any arrival order
        self.acc: dict[tuple[str, int], PartialStats] = {}
        self.max_time: dict[str, int] = {}
        self.closed_until: int | None = None
        #: late partials get 1, 2, ... in emission order: unique within the partition
        self.late_seq = 0
        self.candidates: set[str] = set()
        self.primary_id = ""
        self._buf: dict[tuple[str, int], _Buffer] = {}
        self._dirty_entries: set[str] = set()
        self._removed_entries: set[str] = set()
        self._dirty_acc: set[tuple[str, int]] = set()
        self._removed_acc: set[tuple[str, int]] = set()
        self._meta_dirty = False

    # -- events ------------------------------------------------------------------------

    def _window(self, t: int) -> int:
        return t - t % self.window_ms

    def _entry(self, rid: str, t: int) -> Entry:
        e = self.pending.get(rid)
        if e is None:
            e = Entry(t, t + self.ttl_ms)
            self.pending[rid] = e
            heapq.heappush(self._expiry, (e.deadline, rid))
        self._dirty_entries.add(rid)
        return e

    def _acc(self, key: tuple[str, int]) -> PartialStats:
        s = self.acc.get(key)
        if s is None:
            s = self.acc[key] = PartialStats()
        self._dirty_acc.add(key)
        return s

    def _buffer(self, key: tuple[str, int]) -> _Buffer:
        b = self._buf.get(key)
        if b is None:
            b = self._buf[key] = _Buffer()
        self._dirty_acc.add(key)
        return b

    def _seen(self, stream: str, t: int) -> None:
        if t > self.max_time.get(stream, -(2**62)):
            self.max_time[stream] = t
            self._meta_dirty = True

    def on_request(self, rec: dict[str, Any]) -> None:
        rid, t = rec["request_id"], rec["event_time"]
        self._seen("requests", t)
        e = self._entry(rid, t)
        key = (SHARED, self._window(t))
        if e.req:
            self._acc(key).count("duplicates")
            return
        e.req = True
        self._acc(key).count("requests")

    def on_prediction(self, rec: dict[str, Any]) -> None:
        rid, t, model = rec["request_id"], rec["event_time"], rec["model_id"]
        self._seen("predictions", t)
        e = self._entry(rid, t)
        out: Outcome = (rec["value"], rec["label"], rec["latency_ms"], rec["error"])
        ws = self._window(t)
        if rec["role"] == "PRIMARY":
            shared = (SHARED, ws)
            if e.prim is not None:
                self._acc(shared).count("duplicates")
                return
            e.prim = out
            e.t = t  # pairs are windowed by the primary's event time
            if model != self.primary_id:
                self.primary_id = model
                self._meta_dirty = True
            acc = self._acc(shared)
            acc.count("primary_predictions")
            if out[3] is not None:
                acc.count("primary_errors")
            if out[2] is not None:
                self._buffer(shared).latency.append(out[2])
            for cand, cout in e.cands.items():
                self._pair(cand, ws, out, cout)
            return
        key = (model, ws)
        if model in e.cands:
            self._acc(key).count("duplicates")
            return
        if model not in self.candidates:
            self.candidates.add(model)
            self._meta_dirty = True
        e.cands[model] = out
        acc = self._acc(key)
        acc.count("candidate_predictions")
        if out[3] is not None:
            acc.count("candidate_errors")
        if out[2] is not None:
            self._buffer(key).latency.append(out[2])
        if e.prim is not None:
            self._pair(model, self._window(e.t), e.prim, out)

    def _pair(self, cand: str, ws: int, prim: Outcome, cout: Outcome) -> None:
        key = (cand, ws)
        self._acc(key).count("pairs")
        if prim[3] is not None or cout[3] is not None:
            return  # a failed side has nothing to compare; its error is counted already
        if prim[0] is not None and cout[0] is not None:
            b = self._buffer(key)
            b.reg_p.append(prim[0])
            b.reg_c.append(cout[0])
        elif prim[1] is not None and cout[1] is not None:
            b = self._buffer(key)
            b.cls_p.append(prim[1])
            b.cls_c.append(cout[1])
        else:
            self._acc(key).count("invalid")

    # -- end of batch ------------------------------------------------------------------

    def _fold_buffers(self) -> None:
        for key, b in self._buf.items():
            s = self._acc(key)
            if b.reg_p:
                s.add_regression(np.array(b.reg_p, dtype=np.float64), np.array(b.reg_c))
            if b.cls_p:
                s.add_classification(b.cls_p, b.cls_c)
            if b.latency:
                lat = np.array(b.latency, dtype=np.float64)
                if key[0] == SHARED:
                    s.add_latency(lat, None)
                else:
                    s.add_latency(None, lat)
        self._buf.clear()

    def watermark(self) -> int | None:
        """None until both requests and predictions have been seen on this partition.

        With a backlog, one topic's data can be fetched long before the other's; a
        watermark driven by one stream alone would close windows whose other halves are
        still unread. A stream that never delivers leaves the idle flush to close windows.
        """
        if len(self.max_time) < 2:
            return None
        return min(self.max_time.values()) - self.lateness_ms

    def _expire(self, wm: int) -> None:
        q = self._expiry
        while q and q[0][0] <= wm:
            deadline, rid = heapq.heappop(q)
            e = self.pending.get(rid)
            if e is None or e.deadline != deadline:
                continue
            del self.pending[rid]
            self._dirty_entries.discard(rid)
            self._removed_entries.add(rid)
            ws = self._window(deadline)
            if e.req and e.prim is None and not e.cands:
                self._acc((SHARED, ws)).count("expired")
            for cand in self.candidates:
                has = cand in e.cands
                if e.prim is not None and not has:
                    self._acc((cand, ws)).count("no_candidate")
                elif has and e.prim is None:
                    self._acc((cand, ws)).count("no_primary")
                elif has and not e.req:
                    self._acc((cand, ws)).count("no_request")

    def advance(self, close_all: bool = False) -> list[Emitted]:
        """Fold the batch, expire entries, close windows; return the partials to publish.

        ``close_all`` closes every open window whatever the watermark: used when the input
        has been idle, so that the last windows of a stream are published.
        """
        self._fold_buffers()
        wm = self.watermark()
        if wm is not None:
            self._expire(wm)
        target = self.closed_until
        if close_all and self.acc:
            target = max(ws for _, ws in self.acc) + self.window_ms
        elif wm is not None:
            target = wm - wm % self.window_ms
        if target is None:
            return []
        if self.closed_until is not None:
            target = max(target, self.closed_until)
        return self._close(target)

    def _close(self, target: int) -> list[Emitted]:
        advanced = self.closed_until is None or target > self.closed_until
        due = [k for k in self.acc if k[1] + self.window_ms <= target]
        if not due and not advanced:
            return []
        due.sort(key=lambda k: (k[0] == SHARED, k[1], k[0]))
        out: list[Emitted] = []
        previous = self.closed_until
        for key in due:
            stats = self.acc.pop(key)
            self._dirty_acc.discard(key)
            self._removed_acc.add(key)
            seq = 0
            if previous is not None and key[1] + self.window_ms <= previous:
                self.late_seq += 1  # this window was published before: a late addition
                seq = self.late_seq
            out.append(Emitted(key[0], key[1], seq, stats))
        if advanced:
            self.closed_until = target
            if not any(e.candidate == SHARED for e in out):
                # progress must be announced even across windows without data
                out.append(Emitted(SHARED, target - self.window_ms, 0, PartialStats()))
        # each '*' partial vouches only for its own window, the last one for all: the
        # evaluator must not close a window before that window's '*' partial is merged
        closed = self.closed_until if self.closed_until is not None else 0
        last = max((i for i, e in enumerate(out) if e.candidate == SHARED), default=-1)
        self._meta_dirty = True
        return [
            dataclasses.replace(
                e, watermark=closed if i == last else min(e.window_start + self.window_ms, closed)
            )
            for i, e in enumerate(out)
        ]

    def align(self, closed_until: int) -> list[Emitted]:
        """Move progress to ``closed_until`` (idle partitions catching up with the others)."""
        self._fold_buffers()
        if self.closed_until is not None and closed_until <= self.closed_until:
            return []
        return self._close(closed_until)

    # -- changelog ---------------------------------------------------------------------

    def changes(self, encode_acc: Any) -> Iterator[tuple[bytes, bytes | None]]:
        """State changes since the last call, as changelog (key, value or tombstone)."""
        for rid in self._removed_entries:
            yield KEY_ENTRY + rid.encode(), None
        for rid in self._dirty_entries:
            yield KEY_ENTRY + rid.encode(), self.pending[rid].dump()
        for key in self._removed_acc - self._dirty_acc:
            yield _acc_key(key), None
        for key in self._dirty_acc:
            if key in self.acc:
                yield _acc_key(key), encode_acc(key, self.acc[key])
        if self._meta_dirty:
            yield KEY_META, json.dumps(self._meta()).encode()
        self._removed_entries.clear()
        self._dirty_entries.clear()
        self._removed_acc.clear()
        self._dirty_acc.clear()
        self._meta_dirty = False

    def _meta(self) -> dict[str, Any]:
        return {
            "max_time": self.max_time,
            "closed_until": self.closed_until,
            "late_seq": self.late_seq,
            "candidates": sorted(self.candidates),
            "primary_id": self.primary_id,
        }

    def restore(self, key: bytes | None, value: bytes | None, decode_acc: Any) -> None:
        """Apply one changelog record (in log order) while rebuilding after a restart."""
        if not key:
            return
        kind, rest = key[:1], key[1:]
        if kind == KEY_ENTRY:
            rid = rest.decode()
            if value is None:
                self.pending.pop(rid, None)
            else:
                self.pending[rid] = Entry.load(value)
        elif kind == KEY_ACC:
            c, ws = json.loads(rest)
            if value is None:
                self.acc.pop((c, ws), None)
            else:
                self.acc[(c, ws)] = decode_acc(value)
        elif kind == KEY_META and value is not None:
            m = json.loads(value)
            self.max_time = m["max_time"]
            self.closed_until = m["closed_until"]
            self.late_seq = m.get("late_seq", 0)
            self.candidates = set(m["candidates"])
            self.primary_id = m["primary_id"]

    def finish_restore(self) -> None:
        self._expiry = sorted((e.deadline, rid) for rid, e in self.pending.items())


def _acc_key(key: tuple[str, int]) -> bytes:
    return KEY_ACC + json.dumps([key[0], key[1]]).encode()
