"""Merging partials into window and cumulative snapshots: the evaluator's logic, no faust.

The joiner partitions each publish partials per (candidate, window); a window is complete
once every joiner partition's progress (carried by its ``*`` partials) has passed the
window's end. Until then its partials are merged; then one WINDOW snapshot and one
CUMULATIVE snapshot are published per candidate, oldest window first. A partial for a
window already published is late: it goes into the cumulative numbers and is counted.

All state lives in four ``MutableMapping[bytes, bytes]`` tables that the caller owns (the
evaluator passes its changelog-backed faust tables; the unit tests pass dicts), so a
process that restores those tables resumes exactly where the old one stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from streams.metrics.partial import SHARED, PartialStats
from streams.schemas import Codec, default_codec

log = logging.getLogger(__name__)

Table = MutableMapping[bytes, bytes]
Message = tuple[bytes, bytes]


def snapshot_record(
    candidate: str,
    primary: str,
    scope: str,
    stats: PartialStats,
    meta: dict[str, Any],
    emitted_at: int,
) -> dict[str, Any]:
    """A MetricSnapshot record from merged statistics and their bookkeeping."""
    rec: dict[str, Any] = {
        "candidate": candidate,
        "primary": primary,
        "scope": scope,
        "window_start": meta["window_start"],
        "window_end": meta["window_end"],
        "windows": meta.get("windows", 1),
        "partials": meta.get("partials", 0),
        "late_partials": meta.get("late_partials", 0),
        "emitted_at": emitted_at,
        "coverage": dict(stats.coverage),
    }
    rec.update(stats.summary())
    return rec


def _now_ms() -> int:
    return int(time.time() * 1000)


class WindowMerger:
    """Folds Avro partials into the tables; returns the (key, MetricSnapshot) to publish.

    Tables: ``windows`` (b"cand|ws" -> merged Partial of a pending window), ``cumulative``
    (b"cand" -> Partial of everything published; b"*" -> every shared statistic folded),
    ``meta`` (JSON bookkeeping of both) and ``progress`` (b"p<partition>" -> watermark,
    b"n" -> partition count, and whatever markers the caller keeps there).
    """

    def __init__(
        self,
        windows: Table,
        cumulative: Table,
        meta: Table,
        progress: Table,
        *,
        codec: Codec | None = None,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.windows = windows
        self.cumulative = cumulative
        self.meta = meta
        self.progress = progress
        self.codec = codec or default_codec()
        self.clock = clock

    # -- table access ----------------------------------------------------------------------

    def get_json(self, table: Table, key: bytes, default: Any) -> Any:
        raw = table.get(key)
        return default if raw is None else json.loads(raw)

    def put_json(self, table: Table, key: bytes, value: Any) -> None:
        table[key] = json.dumps(value).encode()

    def _stats(self, table: Table, key: bytes) -> PartialStats | None:
        raw = table.get(key)
        if raw is None:
            return None
        return PartialStats.from_record(self.codec.decode_as("Partial", raw))

    def _put_stats(self, table: Table, key: bytes, stats: PartialStats) -> None:
        table[key] = self.codec.encode("Partial", stats.to_partial())

    def global_progress(self) -> int | None:
        """The least progress over all joiner partitions, or None until each has reported."""
        n = self.get_json(self.progress, b"n", None)
        if n is None:
            return None
        marks = [self.get_json(self.progress, b"p%d" % p, None) for p in range(n)]
        if any(m is None for m in marks):
            return None
        return min(marks)

    # -- folding ---------------------------------------------------------------------------

    def handle(self, value: bytes) -> list[Message]:
        """Fold one partial; return the (key, MetricSnapshot) messages to publish."""
        try:
            rec = self.codec.decode_as("Partial", value)
            stats = PartialStats.from_record(rec)
        except Exception as exc:  # a bad partial must not stop the evaluator
            log.error("dropping undecodable partial: %s", exc)
            return []
        cand: str = rec["candidate"]
        ws, we = rec["window_start"], rec["window_end"]
        before = self.global_progress()
        out: list[Message] = []
        if before is not None and we <= before:
            out += self._late(cand, rec, stats)
        else:
            key = f"{cand}|{ws}".encode()
            merged = self._stats(self.windows, key) or PartialStats()
            merged.merge(stats)
            self._put_stats(self.windows, key, merged)
            wmeta = self.get_json(
                self.meta, key, {"window_start": ws, "window_end": we, "partials": 0}
            )
            wmeta["partials"] += 1
            if rec["primary"]:
                wmeta["primary"] = rec["primary"]
            self.put_json(self.meta, key, wmeta)
        if cand == SHARED:
            self.put_json(self.progress, b"n", rec["partition_count"])
            pkey = b"p%d" % rec["joiner_partition"]
            old = self.get_json(self.progress, pkey, None)
            if old is None or rec["watermark"] > old:
                self.put_json(self.progress, pkey, rec["watermark"])
            after = self.global_progress()
            if after is not None and (before is None or after > before):
                out += self._close(after)
        return out

    def _close(self, progress: int) -> list[Message]:
        """Publish every pending window that ends at or before ``progress``, oldest first."""
        due: dict[int, list[str]] = {}
        for raw_key in list(self.windows.keys()):
            cand, ws_s = raw_key.decode().rsplit("|", 1)
            meta = self.get_json(self.meta, raw_key, None)
            if meta is not None and meta["window_end"] <= progress:
                due.setdefault(int(ws_s), []).append(cand)
        out: list[Message] = []
        for ws in sorted(due):
            shared_key = f"{SHARED}|{ws}".encode()
            shared = self._stats(self.windows, shared_key) or PartialStats()
            shared_meta = self.get_json(
                self.meta, shared_key, {"window_start": ws, "window_end": ws, "partials": 0}
            )
            present = sorted(c for c in due[ws] if c != SHARED)
            absent = sorted(set(self._known()) - set(present))
            for cand in present:
                key = f"{cand}|{ws}".encode()
                stats = self._stats(self.windows, key) or PartialStats()
                wmeta = self.get_json(self.meta, key, {})
                stats.merge(shared)
                wmeta["partials"] += shared_meta["partials"]
                primary = shared_meta.get("primary") or wmeta.get("primary", "")
                out.append(self._snapshot(cand, primary, "WINDOW", stats, wmeta))
                out += self._add_cumulative(cand, primary, stats, wmeta, late=0)
                del self.windows[key]
                del self.meta[key]
            # requests of a window a candidate sent nothing for (a cold start, a worker
            # down) are still requests it was shown: its cumulative coverage counts them
            out += self._fold_shared(absent, shared, shared_meta, late=0)
            self.windows.pop(shared_key, None)
            self.meta.pop(shared_key, None)
        return out

    def _known(self) -> list[str]:
        """Candidates with a cumulative so far, in a stable order."""
        shared_key = SHARED.encode()
        return sorted(raw.decode() for raw in self.cumulative if raw != shared_key)

    def _fold_shared(
        self, cands: list[str], stats: PartialStats, meta: dict[str, Any], *, late: int
    ) -> list[Message]:
        """Shared statistics into ``cands``' cumulatives, and into the one kept under ``*``.

        The ``*`` cumulative holds every shared statistic folded so far, so a candidate
        seen for the first time later starts from all the requests before it: every
        candidate's cumulative covers the same requests, whenever it arrived.
        """
        shared_key = SHARED.encode()
        kept = self._stats(self.cumulative, shared_key) or PartialStats()
        out: list[Message] = []
        if not stats.is_empty():  # a progress-only partial changes no number
            primary = meta.get("primary", "")
            for cand in cands:
                out += self._add_cumulative(cand, primary, stats, meta, late=late, new_window=False)
        kept.merge(stats)
        self._put_stats(self.cumulative, shared_key, kept)
        return out

    def _late(self, cand: str, rec: dict[str, Any], stats: PartialStats) -> list[Message]:
        meta = {
            "window_start": rec["window_start"],
            "window_end": rec["window_end"],
            "partials": 1,
            "primary": rec["primary"],
        }
        if cand != SHARED:
            return self._add_cumulative(cand, rec["primary"], stats, meta, late=1, new_window=False)
        return self._fold_shared(self._known(), stats, meta, late=1)

    def _add_cumulative(
        self,
        cand: str,
        primary: str,
        stats: PartialStats,
        wmeta: dict[str, Any],
        *,
        late: int,
        new_window: bool = True,
    ) -> list[Message]:
        key = cand.encode()
        total = self._stats(self.cumulative, key)
        if total is None:
            # a candidate seen for the first time starts from every request before it
            total = self._stats(self.cumulative, SHARED.encode()) or PartialStats()
        total.merge(stats)
        self._put_stats(self.cumulative, key, total)
        cmeta = self.get_json(
            self.meta,
            key,
            {
                "window_start": wmeta["window_start"],
                "window_end": wmeta["window_end"],
                "windows": 0,
                "partials": 0,
                "late_partials": 0,
            },
        )
        cmeta["window_start"] = min(cmeta["window_start"], wmeta["window_start"])
        cmeta["window_end"] = max(cmeta["window_end"], wmeta["window_end"])
        cmeta["windows"] += 1 if new_window else 0
        cmeta["partials"] += wmeta["partials"]
        cmeta["late_partials"] += late
        if primary:
            cmeta["primary"] = primary
        self.put_json(self.meta, key, cmeta)
        return [self._snapshot(cand, cmeta.get("primary", ""), "CUMULATIVE", total, cmeta)]

    def _snapshot(
        self, cand: str, primary: str, scope: str, stats: PartialStats, meta: dict[str, Any]
    ) -> Message:
        rec = snapshot_record(cand, primary, scope, stats, meta, self.clock())
        return cand.encode(), self.codec.encode("MetricSnapshot", rec)
