"""The joiner's per-partition state, driven one event at a time; no Kafka.

:mod:`streams.joiner` feeds it decoded events in offset order, collects the partials it
emits and the state changes to write to the changelog, and commits both in one transaction.
The parts (:mod:`streams.join`): an event-time clock, the join table, the window
accumulators, the conservation ledger and the labels.

Semantics, per input partition:

* An entry per request_id collects the request, the primary's answer and each candidate's.
  A pair (primary, candidate) is folded into the window of the *primary's* event time as
  soon as both halves are there, exactly once.
* Everything that depends on time is a function of the watermark, checked after *every*
  event: an entry finishes when the watermark passes its deadline (first event time + TTL),
  a window closes when the watermark passes its end. So the partials are the same however
  the events are split into batches, and a restore from the changelog at any batch boundary
  continues exactly.
* An event seen again (same request_id, role and model id) is a duplicate, whenever it
  arrives: finished joins are remembered until the watermark is ``max_age`` past them, and
  older events are refused (:mod:`streams.join.timecheck`).
* What never joined is counted by reason in the window of its deadline: on ``*``, requests
  no model answered (``expired``) or only the primary did (``no_candidate``); on a
  candidate, ``no_candidate`` / ``no_primary`` / ``no_prediction`` when some other
  candidate answered, ``no_request`` where the primary answered a request that never
  came (on ``*`` when no candidate answered it either). An answer that
  comes after its join finished is counted ``expired`` on its model. Every request is in
  the conservation ledger, the exact account (:mod:`streams.join.ledger`).
* Idleness (declared by the caller from processing time) lets the watermark move without
  events; the declarations are state changes like any other, committed with the batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from typing import Any

from streams.deadletter import MAX_ID_CHARS
from streams.join.awaiting import KEY_AWAITING
from streams.join.clock import EventClock
from streams.join.finished import digest
from streams.join.labels import Labels, refuse_truth
from streams.join.ledger import Ledger
from streams.join.table import Answer, Entry, JoinTable
from streams.join.timecheck import check_event_time
from streams.join.windows import Emitted, Key, Windows
from streams.metrics.partial import SHARED, PartialStats
from streams.metrics.slices import slice_names

__all__ = ["Emitted", "PartitionState"]

MAX_CANDIDATES = 64
"""Distinct candidate model ids per partition: each one adds a column to every ledger."""
MAX_MODEL_CHARS = 256
_NUMBER = (float, int)
"""What a latency may be (a tuple: ``float | int`` would build a union on every call)."""
MAX_CONTEXTS = 4096
"""Distinct request contexts whose slice names are remembered (a cache, emptied when full)."""

KEY_ENTRY = b"e"
KEY_DONE = b"f"
KEY_ACC = b"a"
KEY_META = b"m"
KEY_SEGMENT = b"s"

EncodeAcc = Callable[[Key, PartialStats], bytes]
DecodeAcc = Callable[[bytes], PartialStats]


class PartitionState:
    """Join and accumulate for one input partition; see the module docstring."""

    def __init__(
        self,
        partition: int,
        window_ms: int,
        lateness_ms: int,
        ttl_ms: int,
        *,
        max_age_ms: int = 600_000,
        max_skew_ms: int = 60_000,
        max_pending: int = 1_000_000,
        label_horizon_ms: int = 86_400_000,
        label_budget: int = 200_000,
    ) -> None:
        self.partition = partition
        self.window_ms = window_ms
        self.ttl_ms = ttl_ms
        self.max_age_ms = max_age_ms
        self.max_skew_ms = max_skew_ms
        self.clock = EventClock(lateness_ms, ttl_ms)
        self.table = JoinTable(ttl_ms, max_age_ms, max_pending)
        self.windows = Windows(window_ms)
        self.ledger = Ledger()
        self.labels = Labels(self.table, self.windows, label_horizon_ms, label_budget)
        #: candidates in the order first seen
        self.candidates: list[str] = []
        self.primary_id = ""
        #: dead letters seen before any believable event time placed them in a window
        self._unplaced_dead = 0
        self._outbox: list[Emitted] = []
        #: the watermark of the last complete ``_progress``; None after anything it would
        #: act on (a finished join, a label stored), so that the next one runs in full
        self._progressed: int | None = None
        self._meta_dirty = False
        self._ledger_missing = False
        self._contexts: dict[tuple[Any, ...], tuple[str, ...]] = {}

    # -- views kept for callers and tests ----------------------------------------------

    @property
    def pending(self) -> dict[str, Entry]:
        return self.table.live

    @property
    def acc(self) -> dict[Key, PartialStats]:
        return self.windows.acc

    @property
    def closed_until(self) -> int | None:
        return self.windows.closed_until

    @property
    def max_time(self) -> dict[str, int]:
        return self.clock.max_time

    def watermark(self) -> int | None:
        return self.clock.watermark()

    # -- events ------------------------------------------------------------------------

    def _refuse(self, rid: Any, t: Any, now: int | None) -> str | None:
        if not isinstance(rid, str) or not rid:
            return "empty request_id"
        if len(rid) > MAX_ID_CHARS:
            return f"request_id longer than {MAX_ID_CHARS} characters"
        if not isinstance(t, int):
            return f"event_time {t!r} is not an integer of milliseconds"
        if now is not None and not now - self.max_age_ms <= t <= now + self.max_skew_ms:
            return check_event_time(  # the reason; the test above is the same, inline
                t, now=now, max_age_ms=self.max_age_ms, max_skew_ms=self.max_skew_ms
            )
        return None

    def on_dead_letter(self, stream: str) -> None:
        """A message of ``stream`` ('requests' or 'predictions') that went to dead letters."""
        if stream == "requests":
            self.ledger.dead_letter()
        newest = max(self.clock.max_time.values(), default=None)
        if newest is None:
            self._unplaced_dead += 1
        else:
            self.windows.count(SHARED, newest, "dead_letters")
        self._meta_dirty = True

    def on_request(self, rec: dict[str, Any], now: int | None = None) -> str | None:
        """Apply a decoded Request; returns why it was refused (a dead letter), or None.

        ``now``: the Kafka timestamp of the message, to judge its event time by.
        """
        rid, t = rec.get("request_id"), rec.get("event_time")
        reason = self._refuse(rid, t, now)
        if reason is not None:
            self.on_dead_letter("requests")
            return reason
        assert isinstance(rid, str) and isinstance(t, int)
        w = self.windows
        table = self.table
        e = table.live.get(rid)
        if e is None:
            h = digest(rid)
            f = table.done.get(h)
            if f is not None:  # its join is over: a duplicate, or a request after its answers
                if f.req:
                    w.count(SHARED, t, "duplicates")
                else:
                    table.done.put(h, f._replace(req=True))
                    w.count(SHARED, t, "requests")
                    self._profile(rec, t)
                    self.ledger.request_after_finish(f.prim, f.models)
                    self._meta_dirty = True
                self._after("requests", t)
                return None
            e = table.open(rid, t, h)
        if e.req:
            w.count(SHARED, t, "duplicates")
        else:
            e.req = True
            table.dirty.add(rid)
            w.count(SHARED, t, "requests")
            e.ctx = self._profile(rec, t)
            if e.ctx:
                self._slice_answers(e)
            self.ledger.request(e.cands if e.prim is not None else ())
            self._meta_dirty = True
        self._after("requests", t)
        return None

    def _profile(self, rec: dict[str, Any], t: int) -> tuple[str, ...]:
        """Fold a request's features into its window; returns its context slices."""
        b = self.windows.columns((SHARED, self.windows.start(t)))
        num = rec.get("numeric_features")
        if num:
            b.num_rows.append(num)
        cat = rec.get("categorical_features")
        if cat:
            b.cat_rows.append(cat)
        names = self._slice_names(rec.get("context"))
        if names:
            b.slices.request(names)
        return names

    def _slice_names(self, context: Any) -> tuple[str, ...]:
        """:func:`slice_names`, remembered per distinct context (few: it is a segment)."""
        if not context:
            return ()
        try:
            key = tuple(context.items())
            names = self._contexts.get(key)
        except (AttributeError, TypeError):  # not a map of strings: no shortcut
            return slice_names(context)
        if names is None:
            if len(self._contexts) >= MAX_CONTEXTS:
                self._contexts.clear()
            names = self._contexts[key] = slice_names(context)
        return names

    def _slice_answers(self, e: Entry) -> None:
        """A request that came after some answers: put those answers in its slices."""
        ws = self.windows.start(e.t)
        if e.prim is not None:
            self._slice_output(SHARED, ws, e.ctx, e.prim)
        for cand, cans in e.cands.items():
            self._slice_output(cand, ws, e.ctx, cans)
            if e.prim is not None:
                self._slice_pair(cand, ws, e.ctx, e.prim, cans)

    def _slice_output(self, key: str, ws: int, ctx: tuple[str, ...], ans: Answer) -> None:
        if ans[0] is None or ans[3] is not None:
            return
        self.windows.columns((key, ws)).slices.output(ctx, ans[0])

    def _slice_pair(
        self, cand: str, ws: int, ctx: tuple[str, ...], prim: Answer, cans: Answer
    ) -> None:
        if prim[3] is not None or cans[3] is not None:
            return
        b = self.windows.columns((cand, ws))
        if prim[0] is not None and cans[0] is not None:
            b.slices.regression(ctx, prim[0], cans[0])
        elif prim[1] is not None and cans[1] is not None:
            b.slices.classification(ctx, prim[1], cans[1])

    def on_prediction(self, rec: dict[str, Any], now: int | None = None) -> str | None:
        """Apply a decoded Prediction; returns why it was refused (a dead letter), or None."""
        rid, t = rec.get("request_id"), rec.get("event_time")
        reason = self._refuse(rid, t, now)
        model = rec.get("model_id")
        if reason is None and (not isinstance(model, str) or not model):
            reason = "empty model_id"
        elif reason is None and len(model) > MAX_MODEL_CHARS:  # type: ignore[arg-type]
            reason = f"model_id longer than {MAX_MODEL_CHARS} characters"
        elif (
            reason is None
            and rec.get("role") != "PRIMARY"
            and model not in self.ledger.book
            and len(self.candidates) >= MAX_CANDIDATES
        ):
            reason = (
                f"more than {MAX_CANDIDATES} candidate model ids on one partition: "
                f"{model!r} is refused (a producer writing a new model_id per request?)"
            )
        if reason is not None:
            self.on_dead_letter("predictions")
            return reason
        assert isinstance(rid, str) and isinstance(t, int) and isinstance(model, str)
        primary = rec["role"] == "PRIMARY"
        ans: Answer = (rec["value"], rec["label"], rec["latency_ms"], rec["error"])
        if rec["label"] is not None and rec.get("scores"):
            ans = (*ans, dict(rec["scores"]))  # a classifier's scores: its log-loss
        key = SHARED if primary else model
        if primary:
            if model != self.primary_id:
                if self.primary_id:  # a promotion: pairs against the old primary end here
                    self.windows.drop_pairs("labels_other_primary")
                self.primary_id = model
                self._meta_dirty = True
        elif model not in self.ledger.book:
            self.candidates.append(model)
            self.ledger.add_candidate(model)
            self._meta_dirty = True
        table = self.table
        e = table.live.get(rid)
        if e is None:
            h = digest(rid)
            f = table.done.get(h)
            if f is not None:  # its join is over
                seen = f.prim if primary else model in f.models
                if seen:
                    self.windows.count(key, t, "duplicates")
                else:
                    if primary:
                        table.done.put(h, f._replace(prim=True))
                    else:
                        table.done.put(h, f._replace(models=(*f.models, model)))
                    self._answered(key, t, ans, primary)
                    self.windows.count(key, t, "expired")
                self._after("predictions" if primary else "candidates", t)
                return None
            e = table.open(rid, t, h)
        else:
            table.dirty.add(rid)
        if primary:
            if e.prim is not None:
                self.windows.count(key, t, "duplicates")
            else:
                e.prim = ans
                e.pm = model
                e.t = t  # pairs are windowed by the primary's event time
                self._answered(key, t, ans, primary)
                ws = self.windows.start(t)
                for cand, cans in e.cands.items():
                    self._pair(cand, ws, ans, cans)
                if e.ctx:
                    self._slice_answers(e)
                if e.label is not None:
                    self.labels.score(e.label, model, ans, e.cands.items(), self.primary_id)
                if e.req and e.cands:
                    self.ledger.pair(e.cands)
                    self._meta_dirty = True
        elif model in e.cands:
            self.windows.count(key, t, "duplicates")
        else:
            e.cands[model] = ans
            self._answered(key, t, ans, primary)
            if e.ctx:
                ws = self.windows.start(e.t)
                self._slice_output(model, ws, e.ctx, ans)
                if e.prim is not None:
                    self._slice_pair(model, ws, e.ctx, e.prim, ans)
            if e.prim is not None:
                self._pair(model, self.windows.start(e.t), e.prim, ans)
                if e.label is not None:
                    self.labels.score(e.label, e.pm, e.prim, ((model, ans),), self.primary_id)
                if e.req:
                    self.ledger.pair((model,))
                    self._meta_dirty = True
        self._after("predictions" if primary else "candidates", t)
        return None

    def on_label(self, rec: dict[str, Any], now: int | None = None) -> str | None:
        """Apply a decoded Label; returns why it was refused (a dead letter), or None.

        Labels never move the watermark (they may come hours late, or never): they are
        scored against the answers they find, into windows at their own event time (see
        :mod:`streams.join.labels`). A label before any prediction opens the join, as an
        answer before its request does.
        """
        rid, t = rec.get("request_id"), rec.get("event_time")
        value, label = rec.get("value"), rec.get("label")
        reason = self._refuse(rid, t, now) or refuse_truth(value, label)
        if reason is not None:
            self.on_dead_letter("labels")
            return reason
        assert isinstance(rid, str) and isinstance(t, int)
        self._progressed = None  # what it stores is forgotten by the next progress
        if self.labels.on_label(rid, (value, label, t), self.primary_id):
            self._evict_over_cap()
        return None

    def _answered(self, key: str, t: int, ans: Answer, primary: bool) -> None:
        w = self.windows
        k = (key, t - t % w.window_ms)
        b = w.columns(k)  # creates the accumulator too: an empty buffer folds to nothing
        s = w.acc[k]
        value, label, lat, error = ans[:4]  # a classifier's answer carries its scores fifth
        if error is None:  # a failed answer has no output to profile
            if value is not None:
                b.out.append(value)
            elif label is not None:
                b.out_labels.append(label)
        s.count("primary_predictions" if primary else "candidate_predictions")
        if error is not None:
            s.count("primary_errors" if primary else "candidate_errors")
        if lat is not None:
            if isinstance(lat, _NUMBER) and math.isfinite(lat) and lat >= 0:
                b.latency.append(lat)
            else:
                s.count("dropped_latencies")

    def _pair(self, cand: str, ws: int, prim: Answer, cans: Answer) -> None:
        key = (cand, ws)
        w = self.windows
        w.stats(key).count("pairs")
        if prim[3] is not None or cans[3] is not None:
            return  # a failed side has nothing to compare; its error is counted already
        if prim[0] is not None and cans[0] is not None:
            b = w.columns(key)
            b.reg_p.append(prim[0])
            b.reg_c.append(cans[0])
        elif prim[1] is not None and cans[1] is not None:
            b = w.columns(key)
            b.cls_p.append(prim[1])
            b.cls_c.append(cans[1])
        else:
            w.stats(key).count("invalid")

    # -- time --------------------------------------------------------------------------

    def _after(self, stream: str, t: int) -> None:
        """After each event: its time, then whatever the watermark now finishes or closes.

        Per event, so the checks that are nearly always false are made here rather than
        in calls that would make them (a few calls per event are a few % of the joiner).
        """
        if self._unplaced_dead:
            self.place_dead_letters(t)
        if self.clock.seen(stream, t):
            self._meta_dirty = True
        table = self.table
        if len(table.live) > table.max_pending:
            self._evict_over_cap()
        self._progress()

    def _evict_over_cap(self) -> None:
        """Finish the open joins beyond the pending cap, earliest deadline first."""
        if len(self.table.live) > self.table.max_pending:
            for rid, e in self.table.pop_over_cap():
                self._finish(rid, e, evicted=True)

    def _progress(self) -> None:
        """Finish the joins due at the watermark, forget what it has left behind, close the
        windows it has passed.

        Called after every event, but the watermark moves far less often: in a backlog one
        topic's events come in runs of thousands, and the slowest stream holds it still
        (bench/joiner.py: ~5% of the joiner went here). With the watermark where the last
        complete pass left it and nothing finished or stored since (``_progressed`` is
        reset then), the pass would change nothing, so it is skipped.
        """
        wm = self.clock.wm
        if wm is None:
            return
        nd = self.table.next_deadline()
        if nd is not None and nd <= wm:
            for rid, e in self.table.pop_due(wm):
                self._finish(rid, e)
        elif wm == self._progressed:
            return
        self._progressed = wm
        self.table.forget(wm)
        self.labels.forget(wm)
        target = wm - wm % self.window_ms
        closed = self.windows.closed_until
        if closed is None or target > closed:
            self._emit(self.windows.close(target))

    def _emit(self, emitted: list[Emitted]) -> None:
        if not emitted:
            return
        snap = self.ledger.snapshot()
        primary = self.primary_id  # now, not when the batch is published: a later event
        self._outbox += [  # of the same batch may be the first answer of a new primary
            dataclasses.replace(e, ledger=snap if e.candidate == SHARED else None, primary=primary)
            for e in emitted
        ]
        self._meta_dirty = True

    def _finish(self, rid: str, e: Entry, *, evicted: bool = False) -> None:
        self._progressed = None
        w = self.windows
        at = e.deadline
        if evicted:
            w.count(SHARED, at, "evicted")
        answered = e.cands
        prim = e.prim is not None
        if e.req:
            if not answered:  # '*' counts reach every candidate through the evaluator
                w.count(SHARED, at, "no_candidate" if prim else "expired")
            else:
                for cand in self.candidates:
                    if cand in answered:
                        if not prim:
                            w.count(cand, at, "no_primary")
                    else:
                        w.count(cand, at, "no_candidate" if prim else "no_prediction")
            self.ledger.finish(prim, answered)
            self._meta_dirty = True
        elif not answered:
            if prim:  # the primary's answer alone: '*' speaks for every candidate
                w.count(SHARED, at, "no_request")
        else:
            for cand in self.candidates:
                if cand in answered:
                    w.count(cand, at, "no_request" if prim else "no_primary")
                elif prim:
                    w.count(cand, at, "no_request")
        self.labels.finish(e, at)
        self.table.finish(rid, e)

    def mark_idle(self, stream: str) -> None:
        """``stream`` delivered nothing for the idle timeout: stop waiting for it."""
        if self.clock.mark_idle(stream):
            self._meta_dirty = True
            self._progress()

    def idle_until(self, now: int) -> None:
        """The whole partition is idle: processing time ``now`` moves its watermark."""
        if self.clock.idle_until(now):
            self._meta_dirty = True
            if self.clock.wm is not None:
                # a partition that has only seen bad messages: its dead letters need a window
                self.place_dead_letters(self.clock.wm)
            self._progress()

    def place_dead_letters(self, t: int) -> None:
        """Dead letters still waiting for a believable event time go into the window of
        ``t``: the first event's time, an idle partition's watermark, or, at the end of
        the input, the processing time (a partition that only ever saw bad messages)."""
        if self._unplaced_dead:
            self.windows.count(SHARED, t, "dead_letters", self._unplaced_dead)
            self._unplaced_dead = 0
            self._meta_dirty = True

    def finish_open(self) -> None:
        """Finish every open join now: the input has ended, no answer can come any more."""
        for rid, e in self.table.pop_due(2**62):
            self._finish(rid, e)

    def advance(self, close_all: bool = False) -> list[Emitted]:
        """The partials emitted since the last call, in order.

        ``close_all`` first closes every open window whatever the watermark: the end of the
        input (``understudy joiner --idle-exit``), so that its last windows are published.
        """
        if close_all:
            target = self.windows.end_of_data()
            if target is not None:
                self._emit(self.windows.close(target))
        out, self._outbox = self._outbox, []
        return out

    # -- changelog ---------------------------------------------------------------------

    def changes(self, encode_acc: EncodeAcc) -> Iterator[tuple[bytes, bytes | None]]:
        """State changes since the last call, as changelog (key, value or tombstone)."""
        w = self.windows
        w.fold()
        seq = self.table.seq
        yield from self.table.changes(KEY_ENTRY, KEY_DONE)
        yield from self.labels.changes()
        if self.table.seq != seq:
            self._meta_dirty = True
        for key in w.removed - w.dirty:
            yield _acc_key(key), None
        for key in w.dirty:
            if key in w.acc:
                yield _acc_key(key), encode_acc(key, w.acc[key])
            else:
                yield _acc_key(key), None
        if self._meta_dirty or self.labels.meta_dirty:
            yield KEY_META, json.dumps(self._meta()).encode()
        w.removed.clear()
        w.dirty.clear()
        self._meta_dirty = self.labels.meta_dirty = False

    def _meta(self) -> dict[str, Any]:
        return {
            **self.clock.dump(),
            **self.windows.dump_meta(),
            "candidates": self.candidates,
            "primary_id": self.primary_id,
            "ledger": self.ledger.dump(),
            "unplaced_dead": self._unplaced_dead,
            "entry_seq": self.table.seq,
            **self.labels.dump_meta(),
        }

    def restore(self, key: bytes | None, value: bytes | None, decode_acc: DecodeAcc) -> None:
        """Apply one changelog record (in log order) while rebuilding after a restart.

        Records of earlier releases read too: open joins were one JSON record each (now
        per-batch segments, :mod:`streams.join.table`), the meta had no ledger, and
        accumulators are Avro Partials of any known schema version.
        """
        if not key:
            return
        kind, rest = key[:1], key[1:]
        if kind == KEY_ENTRY:
            self.table.restore(rest.decode(), None if value is None else json.loads(value))
        elif kind == KEY_SEGMENT:
            self.table.restore_segment(rest, value)
        elif kind == KEY_DONE:
            self.table.done.restore_segment(rest, value)
        elif kind == KEY_AWAITING:
            self.labels.restore_segment(rest, value)
        elif kind == KEY_ACC:
            c, ws = json.loads(rest)
            if value is None:
                self.windows.acc.pop((c, ws), None)
            else:
                self.windows.acc[(c, ws)] = decode_acc(value)
        elif kind == KEY_META and value is not None:
            m = json.loads(value)
            self.clock.load(m)
            self.windows.load_meta(m)
            self.candidates = list(m.get("candidates", []))
            self.primary_id = m.get("primary_id", "")
            self._ledger_missing = "ledger" not in m
            self.ledger = Ledger.load(m.get("ledger"))
            for cand in self.candidates:
                self.ledger.add_candidate(cand)
            self._unplaced_dead = int(m.get("unplaced_dead", 0))
            self.table.seq = max(self.table.seq, int(m.get("entry_seq", 0)))
            self.labels.load_meta(m)

    def finish_restore(self) -> None:
        self.table.finish_restore(self.clock.wm)
        if self._ledger_missing:
            # state of a release without a ledger: its open joins are the pending requests
            for e in self.table.live.values():
                if e.req:
                    self.ledger.request(e.cands if e.prim is not None else ())
            self._ledger_missing = False
            self._meta_dirty = True


def _acc_key(key: Key) -> bytes:
    return KEY_ACC + json.dumps([key[0], key[1]]).encode()
