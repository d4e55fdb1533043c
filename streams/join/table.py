"""Pending joins by request_id, and the ids whose join has finished.

A live :class:`Entry` collects the request and each model's answer until the watermark
passes its deadline (first event time + join TTL), or until the pending cap evicts it,
oldest deadline first. A finished join is then remembered in a compact form
(:mod:`streams.join.finished`: which of request, primary and candidates it had) until the
watermark is ``max_age`` past its event time: an event older than that is refused as a dead
letter anyway (:mod:`streams.join.timecheck`), so every duplicate is recognised as one,
whenever it arrives, in memory bounded by rate x max_age.

Changelog of the live entries: one *segment* record per batch (per 2,000 entries), the
batch's delta: the entries that changed, as they are now, and the ids that left (finished).
A restore applies the segments in order. So that the compacted topic does not keep every
delta for ever, once the deltas written since the last *base* outweigh it 8 times (and
8 MB), a new base is written: every live entry, in segments of its own, with tombstones
for every earlier segment in the same transaction. Replaying holds at most the base and
the deltas after it. The previous release wrote one JSON record per entry and change (key
``e`` + request_id, tombstoned when the join finished): for bench/joiner.py's 50,000
requests x 4 events its changelog grew by 115,359 offsets then, 466 now (transaction
markers included; one run each on the embedded broker, issue 7). Those records still
restore, and each is tombstoned when its entry next changes or at the next base.

A segment is a pickle (protocol 5) of plain lists, dicts, tuples, strings, numbers and
None, read back by an unpickler that refuses every global (:class:`_PlainUnpickler`), so
a record can build nothing else and run no code. Why not JSON, as segments were first
written (and still restore): on 2,000 entries of bench/joiner.py's shape, ``json.dumps``
took 5.8 ms and 378 KB, ``pickle.dumps`` 1.0 ms and 212 KB, and reading back 4.7 ms
against 1.3 ms (``timeit``, this machine); the JSON encoding was 11% of the joiner's time
in a py-spy sample of bench/joiner.py. Pickle also keeps NaN and infinities (a model's
output may be either) and tuples as they were.
"""

from __future__ import annotations

import heapq
import io
import json
import pickle
import struct
from collections.abc import Iterator
from typing import Any

from streams.join.finished import Finished, FinishedStore, digest

#: live entries per segment record: about 110 bytes each, well under a Kafka message
SEGMENT_ENTRIES = 2_000
#: a new base once the deltas since the last one weigh this many times the base ...
BASE_RATIO = 8
#: ... and at least this many bytes
BASE_MIN_BYTES = 8 << 20
_SEG_KEY = struct.Struct(">QI")  # sequence number, part

#: a model's answer kept while the join is open: (value, label, latency_ms, error)
Answer = tuple[float | None, str | None, float | None, str | None]


class Entry:
    """An open join: the request (seen or not), the primary's and each candidate's answer."""

    __slots__ = ("cands", "ctx", "deadline", "h", "prim", "req", "t")

    def __init__(self, t: int, deadline: int, h: int) -> None:
        self.t = t
        self.h = h  # the request_id's digest, the key of its finished form
        self.deadline = deadline
        self.req = False
        self.prim: Answer | None = None
        self.cands: dict[str, Answer] = {}
        #: the request's context slices (``key=value``), once the request came
        self.ctx: tuple[str, ...] = ()

    def dump(self) -> list[Any]:
        out = [self.t, self.deadline, self.req, self.prim, self.cands]
        return [*out, list(self.ctx)] if self.ctx else out

    @classmethod
    def load(cls, data: list[Any], h: int) -> Entry:
        t, deadline, req, prim, cands = data[:5]
        e = cls(t, deadline, h)
        e.req = req
        e.prim = tuple(prim) if prim is not None else None
        e.cands = {k: tuple(v) for k, v in cands.items()}
        if len(data) > 5:
            e.ctx = tuple(data[5])
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
        #: sequence number of the last segment written or restored
        self.seq = 0
        #: segment keys of the last base and the deltas after it (tombstoned at the next)
        self._segments: list[bytes] = []
        self._base_bytes = 0
        self._delta_bytes = 0
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

    def changes(
        self, entry_prefix: bytes, done_prefix: bytes, segment_prefix: bytes = b"s"
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
            if self._delta_bytes > max(BASE_RATIO * self._base_bytes, BASE_MIN_BYTES):
                yield from self._base(entry_prefix, segment_prefix)
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
                for key, value in self._segment(segment_prefix, False, put, gone):
                    self._delta_bytes += len(value)
                    yield key, value
            dirty.clear()
        yield from self.done.changes(done_prefix)

    def _base(self, entry_prefix: bytes, prefix: bytes) -> Iterator[tuple[bytes, bytes | None]]:
        """Every live entry, then tombstones of what the base replaces."""
        old = self._segments
        self._segments = []
        put = {rid: e.dump() for rid, e in self.live.items()}
        self._base_bytes = self._delta_bytes = 0
        for key, value in self._segment(prefix, True, put, []):
            self._base_bytes += len(value)
            yield key, value
        for key in old:
            yield key, None
        for rid in sorted(self._legacy_live):
            yield entry_prefix + rid.encode(), None
        self._legacy_live.clear()

    def _segment(
        self, prefix: bytes, base: bool, put: dict[str, Any], gone: list[str]
    ) -> Iterator[tuple[bytes, bytes]]:
        """One sequence number, in parts of at most SEGMENT_ENTRIES entries; a base always
        has a part 0, which empties the live entries when it is replayed."""
        self.seq += 1
        puts = list(put.items())
        n = len(puts) + len(gone)
        for part, lo in enumerate(range(0, max(n, 1), SEGMENT_ENTRIES)):
            hi = lo + SEGMENT_ENTRIES
            chunk = {
                "base": base,
                "put": dict(puts[lo:hi]),
                "gone": gone[max(0, lo - len(puts)) : max(0, hi - len(puts))],
            }
            key = prefix + _SEG_KEY.pack(self.seq, part)
            self._segments.append(key)
            yield key, pickle.dumps(chunk, protocol=5)

    def restore_segment(self, prefix: bytes, rest: bytes, value: bytes | None) -> None:
        """A segment record (its key: ``prefix`` + ``rest``), in log order."""
        seq, part = _SEG_KEY.unpack(rest)
        self.seq = max(self.seq, seq)
        if value is None:
            return  # replaced by a later base
        seg = _load_segment(value)
        if seg["base"]:
            if part == 0:
                self.live.clear()
                self._segments = []
                self._base_bytes = 0
            self._base_bytes += len(value)
            self._delta_bytes = 0
        else:
            self._delta_bytes += len(value)
        self._segments.append(prefix + rest)
        for rid, data in seg["put"].items():
            self.live[rid] = Entry.load(data, digest(rid))
        for rid in seg["gone"]:
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


class _PlainUnpickler(pickle.Unpickler):
    """Builds only what the pickle opcodes make by themselves: no class, no function."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a changelog segment may not name {module}.{name}")


def _load_segment(value: bytes) -> Any:
    """A segment as written now (a pickle) or by the first segment release (JSON)."""
    if value[:1] == b"{":
        return json.loads(value)
    return _PlainUnpickler(io.BytesIO(value)).load()
