"""Merging partials into window and cumulative snapshots: the evaluator's logic, no faust.

The joiner partitions each publish partials per (candidate, window); a window closes once
every joiner partition's progress (carried by its ``*`` partials) has passed the window's
end, or once the largest progress reported by any partition is ``grace_ms`` past it and a
partial of a later window comes (so a silent or slow partition holds nothing back for long).
Until then its partials are merged; then one WINDOW snapshot and one CUMULATIVE snapshot
are published per candidate, oldest window first. A partial for a window already closed is
late: it goes into the cumulative numbers and is counted. Closing depends on the partials'
contents only, never on a clock, so a replay of the same partials publishes the same
snapshots.

Every CUMULATIVE snapshot also carries the conservation law of its candidate: the latest
ledger of each joiner partition (carried by its ``*`` partials), summed over partitions.

A partial that cannot be decoded or is inconsistent is not an exception: :meth:`handle`
returns it as an error (``Handled.error``), which the evaluator dead-letters.

All state lives in four ``MutableMapping[bytes, bytes]`` tables that the caller owns (the
evaluator passes its changelog-backed faust tables; the unit tests pass dicts), so a
process that restores those tables resumes exactly where the old one stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from streams import deadletter
from streams.alerts.state import Transition
from streams.judge import Judge, Judged, slice_rows
from streams.metrics.partial import SHARED, PartialStats
from streams.schemas import Codec, default_codec
from streams.verdicts.ledger import VerdictLedger

log = logging.getLogger(__name__)

Table = MutableMapping[bytes, bytes]
Message = tuple[bytes, bytes]

#: The terms of a ledger, apart from ``requests`` which they add up to.
LEDGER_TERMS = ("pairs", "no_candidate", "no_primary", "no_prediction", "pending", "dead_letters")


@dataclass(frozen=True)
class Handled:
    """What one partial gave: snapshots to publish, or why it was refused (bytewax's errs)."""

    snapshots: list[Message] = field(default_factory=list)
    #: None for a partial that was folded; else the reason, for a dead letter
    error: str | None = None
    #: (key, Alert) transitions, for ``<prefix>.alerts``
    alerts: list[Message] = field(default_factory=list)
    #: (key, Verdict): one per candidate per closed window, for ``<prefix>.verdicts``
    verdicts: list[Message] = field(default_factory=list)
    #: (key, Control): auto-promotions, for ``<prefix>.control``
    controls: list[Message] = field(default_factory=list)


def dead_letter_record(
    reason: str,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    now: int,
) -> dict[str, Any]:
    """A DeadLetter record of the evaluator for one message of ``topic``."""
    return deadletter.dead_letter_record(
        "evaluator",
        reason,
        topic=topic,
        partition=partition,
        offset=offset,
        key=key,
        value=value,
        now=now,
    )


def snapshot_record(
    candidate: str,
    primary: str,
    scope: str,
    stats: PartialStats,
    meta: dict[str, Any],
    emitted_at: int,
    conservation: dict[str, Any] | None = None,
    judged: Judged | None = None,
    top_k: int = 5,
) -> dict[str, Any]:
    """A MetricSnapshot record from merged statistics and their bookkeeping.

    ``judged``: drift, slices and alerts of a WINDOW (without it, the slices come from the
    statistics alone, as in a CUMULATIVE).
    """
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
        "conservation": conservation,
    }
    rec.update(stats.summary())
    if judged is not None:
        rec["reference"] = judged.reference
        rec["drift"] = judged.drift
        rec["slices"] = judged.slices
        rec["alerts"] = judged.alerts
    else:
        rec["slices"] = slice_rows(stats, top_k)
    rec["slice_overflow"] = dict(sorted(stats.slices.overflow.items()))
    return rec


def _check(rec: dict[str, Any]) -> None:
    """Refuse a partial whose identity fields cannot be right (they key the evaluator's state)."""
    n, p = rec["partition_count"], rec["joiner_partition"]
    if n <= 0 or not 0 <= p < n:
        raise ValueError(f"joiner_partition {p} is not within partition_count {n}")
    if rec["window_end"] <= rec["window_start"]:
        raise ValueError(f"window_end {rec['window_end']} <= window_start {rec['window_start']}")
    if "|" in rec["candidate"] or not rec["candidate"]:
        raise ValueError(f"candidate {rec['candidate']!r} is empty or contains '|'")
    for cand, terms in (rec.get("ledger") or {}).items():
        if any(v < 0 for v in terms.values()):
            raise ValueError(f"ledger of {cand!r} has a negative count: {terms}")


def _now_ms() -> int:
    return int(time.time() * 1000)


class WindowMerger:
    """Folds Avro partials into the tables; returns the (key, MetricSnapshot) to publish.

    Tables: ``windows`` (b"cand|ws" -> merged Partial of a pending window), ``cumulative``
    (b"cand" -> Partial of everything published; b"*" -> every shared statistic folded),
    ``meta`` (JSON bookkeeping of both) and ``progress`` (JSON: b"p<partition>" -> watermark,
    b"n" -> partition count, b"l<partition>" -> the partition's latest ledger, b"h" -> the
    closing horizon: every window ending at or before it is closed; and whatever markers
    the caller keeps there).

    ``grace_ms``: a window also closes once any partition's progress is ``grace_ms`` past
    its end; None means two windows (the length of the partial being folded).
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
        grace_ms: int | None = None,
        judge: Judge | None = None,
        verdicts: VerdictLedger | None = None,
    ) -> None:
        if grace_ms is not None and grace_ms < 0:
            raise ValueError(f"grace_ms must be >= 0, not {grace_ms}")
        self.windows = windows
        self.cumulative = cumulative
        self.meta = meta
        self.progress = progress
        self.codec = codec or default_codec()
        self.clock = clock
        self.grace_ms = grace_ms
        #: drift, slices and alerts at each window close (None: disagreement only)
        self.judge = judge
        #: promotion verdicts at each window close (None: none)
        self.verdicts = verdicts
        self._alerts: list[Message] = []
        self._out: dict[str, list[Message]] = {"Verdict": [], "Control": []}

    # -- table access ----------------------------------------------------------------------

    def get_json(self, table: Table, key: bytes, default: Any) -> Any:
        raw = table.get(key)
        return default if raw is None else json.loads(raw)

    def put_json(self, table: Table, key: bytes, value: Any) -> None:
        table[key] = json.dumps(value, sort_keys=True).encode()

    def _stats(self, table: Table, key: bytes) -> PartialStats | None:
        raw = table.get(key)
        if raw is None:
            return None
        return PartialStats.from_record(self.codec.decode_as("Partial", raw))

    def _put_stats(self, table: Table, key: bytes, stats: PartialStats) -> None:
        table[key] = self.codec.encode("Partial", stats.to_partial())

    def _marks(self) -> list[int | None]:
        n = self.get_json(self.progress, b"n", 0)
        return [self.get_json(self.progress, b"p%d" % p, None) for p in range(n)]

    def global_progress(self) -> int | None:
        """The least progress over all joiner partitions, or None until each has reported."""
        marks = self._marks()
        if not marks or any(m is None for m in marks):
            return None
        return min(m for m in marks if m is not None)

    def horizon(self) -> int | None:
        """Every window ending at or before this is closed (None: none yet)."""
        stored = self.get_json(self.progress, b"h", None)
        # tables written before the grace existed have no b"h": their horizon was this
        return stored if stored is not None else self.global_progress()

    def _target(self, grace_ms: int, window_start: int) -> int | None:
        """Where the horizon may move: all partitions past, or the furthest one a grace past
        but not past the start of the window of the partial being folded.

        Why the bound: a partition's progress can jump (once idle, it follows processing
        time), and the joiner publishes every partition's partials of a quiet spell in one
        transaction. Without the bound the first partition's partial closed its own window
        and the earlier ones by grace, before the other partitions' partials for them were
        read: those came late, and the windows were judged on a sixth of their requests
        (a demo whose drift alarm never fired). With it, a window closes by grace only
        once a partial of a later window comes, so a silent partition still holds back
        only while the others have nothing newer to publish.
        """
        marks = [m for m in self._marks() if m is not None]
        candidates = [self.global_progress()]
        if marks:
            candidates.append(min(max(marks) - grace_ms, window_start))
        known = [c for c in candidates if c is not None]
        return max(known) if known else None

    # -- conservation ----------------------------------------------------------------------

    def conservation(self, cand: str) -> dict[str, Any] | None:
        """The law for ``cand`` summed over the latest ledger of every joiner partition.

        A partition where ``cand`` never answered contributes its baseline (``*``); None
        while no partition has sent a ledger.
        """
        n = self.get_json(self.progress, b"n", 0)
        requests, terms, found = 0, dict.fromkeys(LEDGER_TERMS, 0), False
        for p in range(n):
            ledger = self.get_json(self.progress, b"l%d" % p, None)
            if not ledger:
                continue
            entry = ledger.get(cand, ledger.get(SHARED))
            if entry is None:
                continue
            found = True
            for term, count in entry.items():
                if term == "requests":
                    requests += count
                else:
                    terms[term] = terms.get(term, 0) + count
        if not found:
            return None
        return {"requests": requests, "terms": terms, "holds": requests == sum(terms.values())}

    def _keep_ledger(self, rec: dict[str, Any]) -> bool:
        """Keep the partition's latest ledger; True when it changed."""
        ledger = rec.get("ledger") or {}
        if not ledger:  # a writer without ledgers (schema v1) supersedes nothing
            return False
        key = b"l%d" % rec["joiner_partition"]
        if self.get_json(self.progress, key, None) == ledger:
            return False
        self.put_json(self.progress, key, ledger)
        return True

    def _refresh_conservation(self) -> list[Message]:
        """A CUMULATIVE for each candidate whose law changed since its last snapshot."""
        out: list[Message] = []
        for cand in self._known():
            cmeta = self.get_json(self.meta, cand.encode(), None)
            if cmeta is None or cmeta.get("conservation") == self.conservation(cand):
                continue
            total = self._stats(self.cumulative, cand.encode()) or PartialStats()
            out.append(self._cumulative_snapshot(cand, total, cmeta))
        return out

    # -- folding ---------------------------------------------------------------------------

    def handle(self, value: bytes | None) -> Handled:
        """Fold one partial; return the (key, MetricSnapshot) messages to publish.

        A partial that cannot be decoded or is inconsistent changes nothing and comes back
        as ``Handled(error=reason)``.
        """
        try:
            rec = self.codec.decode_as("Partial", value)
            stats = PartialStats.from_record(rec)
            _check(rec)
        except Exception as exc:  # any bad partial: data for a dead letter, never a crash
            return Handled(error=f"cannot use this partial: {exc}")
        cand: str = rec["candidate"]
        ws, we = rec["window_start"], rec["window_end"]
        before = self.horizon()
        out: list[Message] = []
        if self.verdicts is not None and cand != SHARED:  # its own primary: see fold
            self.verdicts.fold(cand, rec["primary"], ws, stats)
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
            ledger_changed = self._keep_ledger(rec)
            grace = self.grace_ms if self.grace_ms is not None else 2 * (we - ws)
            after = self._target(grace, ws)
            if after is not None and (before is None or after > before):
                self.put_json(self.progress, b"h", after)
                out += self._close(after)
            if ledger_changed:
                out += self._refresh_conservation()
        alerts, self._alerts = self._alerts, []
        verdicts, controls = self._out["Verdict"], self._out["Control"]
        self._out = {"Verdict": [], "Control": []}
        return Handled(out, alerts=alerts, verdicts=verdicts, controls=controls)

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
            we = max(
                self.get_json(self.meta, f"{c}|{ws}".encode(), {}).get("window_end", ws)
                for c in due[ws]
            )
            judge = self.judge
            if judge is not None:
                self._publish(judge.shared_window(ws, we, shared))
            for cand in present:
                key = f"{cand}|{ws}".encode()
                stats = self._stats(self.windows, key) or PartialStats()
                wmeta = self.get_json(self.meta, key, {})
                stats.merge(shared)
                wmeta["partials"] += shared_meta["partials"]
                primary = shared_meta.get("primary") or wmeta.get("primary", "")
                judged = None
                if judge is not None:
                    judged = judge.window(cand, primary, ws, we, stats)
                    self._publish(judged.transitions)
                out.append(self._snapshot(cand, primary, "WINDOW", stats, wmeta, judged=judged))
                if self.verdicts is not None:
                    for kind, msg in self.verdicts.verdict(cand, primary, ws, we, self.clock()):
                        self._out[kind].append(msg)
                out += self._add_cumulative(cand, primary, stats, wmeta, late=0)
                del self.windows[key]
                del self.meta[key]
            if judge is not None:
                judge.end_window(we)
            # requests of a window a candidate sent nothing for (a cold start, a worker
            # down) are still requests it was shown: its cumulative coverage counts them
            out += self._fold_shared(absent, shared, shared_meta, late=0)
            self.windows.pop(shared_key, None)
            self.meta.pop(shared_key, None)
        return out

    def _publish(self, transitions: list[Transition]) -> None:
        now = self.clock()
        for t in transitions:
            self._alerts.append((t.key, self.codec.encode("Alert", t.to_record(now))))

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
        compared_with = cmeta.get("primary", "")
        switched = bool(primary and compared_with and primary != compared_with)
        if switched:
            # A promotion starts a new comparison: the losses against the labels are the
            # new primary's and the candidate's on the same pairs, as the verdict's are;
            # summed across the switch they named the new primary but were mostly the
            # old one's. A late partial of the old comparison adds none of its losses.
            if late:
                stats.labelled = None
            else:
                total.labelled = None
        total.merge(stats)
        self._put_stats(self.cumulative, key, total)
        cmeta["window_start"] = min(cmeta["window_start"], wmeta["window_start"])
        cmeta["window_end"] = max(cmeta["window_end"], wmeta["window_end"])
        cmeta["windows"] += 1 if new_window else 0
        cmeta["partials"] += wmeta["partials"]
        cmeta["late_partials"] += late
        if primary and not (late and switched):
            cmeta["primary"] = primary
        return [self._cumulative_snapshot(cand, total, cmeta)]

    def _cumulative_snapshot(
        self, cand: str, total: PartialStats, cmeta: dict[str, Any]
    ) -> Message:
        """The CUMULATIVE snapshot of ``cand``, with its law, which its meta then remembers."""
        cmeta["conservation"] = self.conservation(cand)
        self.put_json(self.meta, cand.encode(), cmeta)
        return self._snapshot(
            cand,
            cmeta.get("primary", ""),
            "CUMULATIVE",
            total,
            cmeta,
            conservation=cmeta["conservation"],
        )

    def _snapshot(
        self,
        cand: str,
        primary: str,
        scope: str,
        stats: PartialStats,
        meta: dict[str, Any],
        *,
        conservation: dict[str, Any] | None = None,
        judged: Judged | None = None,
    ) -> Message:
        top_k = self.judge.top_k if self.judge is not None else 5
        rec = snapshot_record(
            cand, primary, scope, stats, meta, self.clock(), conservation, judged, top_k
        )
        if judged is None and self.judge is not None:
            rec["reference"] = self.judge.reference_info()
            rec["alerts"] = self.judge.firing(cand)
        return cand.encode(), self.codec.encode("MetricSnapshot", rec)
