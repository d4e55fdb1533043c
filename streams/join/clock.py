"""Event-time progress of one partition: a watermark per input stream, and idleness.

The watermark is the oldest, over the streams that are *active*, of the newest event time
seen, minus the allowed lateness. A stream that has delivered nothing for the idle
timeout is marked idle and stops holding the watermark back (Flink's ``withIdleness``);
its next event makes it active again. When every stream of the partition is idle, the
caller may move the watermark with the processing-time clock (:meth:`idle_until`), so that
windows close and pending joins are classified although no event comes to push time.

Nothing here reads a clock: idleness is declared by the caller, and the declarations are
committed with the rest of the state, so a replay repeats them.
"""

from __future__ import annotations

from typing import Any

STREAMS = ("requests", "predictions", "candidates")
"""``predictions`` are the primary's answers (the service's own), ``candidates`` the shadow
workers' answers, which come later: a watermark driven by the primary alone would close
windows before the candidates answered, and their pairs would all be late."""
REQUIRED = ("requests", "predictions")
"""Streams that must have been seen (or declared idle) before there is a watermark. The
candidates' stream holds it back once seen, until declared idle, and by at most
``max_lag_ms`` (the join TTL: an answer later than that cannot join anyway)."""
NEVER = -(2**62)


class EventClock:
    __slots__ = ("floor", "idle", "lateness_ms", "max_lag_ms", "max_time", "wm")

    def __init__(self, lateness_ms: int, max_lag_ms: int) -> None:
        self.lateness_ms = lateness_ms
        self.max_lag_ms = max_lag_ms
        self.max_time: dict[str, int] = {}
        self.idle: set[str] = set()
        #: watermark reached through idleness (processing time), never moved back
        self.floor: int | None = None
        #: the current watermark, recomputed only when an input to it changes
        self.wm: int | None = None

    def seen(self, stream: str, t: int) -> bool:
        """Record an event time; True when the stream's newest time moved.

        Called for every event: the usual case (no stream idle) skips :meth:`_update`
        and the idleness bookkeeping (~0.2 us an event, ~2% of the joiner on
        bench/joiner.py); the rule itself is :meth:`_busy_watermark` either way.
        """
        mt = self.max_time
        if not self.idle:
            if t <= mt.get(stream, NEVER):
                return False
            mt[stream] = t
            wm = self._busy_watermark()
            if wm is not None and (self.wm is None or wm > self.wm):
                self.wm = wm
            return True
        moved = False
        if stream in self.idle:
            self.idle.discard(stream)
            moved = True
        max_time = self.max_time
        if t > max_time.get(stream, NEVER):
            max_time[stream] = t
            moved = True
        if moved:
            self._update()
        return moved

    def watermark(self) -> int | None:
        return self.wm

    def _watermark(self) -> int | None:
        """None until every stream has been seen (or declared idle) once.

        With a backlog, one topic's data can be fetched long before the other's; a
        watermark driven by one stream alone would close windows whose other halves are
        still unread.
        """
        if not self.idle:
            return self._busy_watermark()
        active = [self.max_time[s] for s in REQUIRED if s in self.max_time and s not in self.idle]
        waiting = any(s not in self.max_time and s not in self.idle for s in REQUIRED)
        wm = None
        if active and not waiting:
            wm = min(active) - self.lateness_ms
            cand = self.max_time.get("candidates")
            if cand is not None and "candidates" not in self.idle:
                wm = min(wm, max(cand - self.lateness_ms, wm - self.max_lag_ms))
        if self.floor is not None and (wm is None or self.floor > wm):
            wm = self.floor
        return wm

    def _busy_watermark(self) -> int | None:
        """:meth:`_watermark` when no stream is idle: the slowest of requests and primary
        answers, minus lateness; candidates hold it back by at most ``max_lag_ms``; never
        below the floor."""
        mt = self.max_time
        req, pred = mt.get("requests"), mt.get("predictions")
        if req is None or pred is None:
            return self.floor
        wm = (req if req < pred else pred) - self.lateness_ms
        cand = mt.get("candidates")
        if cand is not None:  # min(wm, max(cand - lateness, wm - max_lag)), without calls
            held = cand - self.lateness_ms
            if held < wm:
                lowest = wm - self.max_lag_ms
                wm = held if held > lowest else lowest
        floor = self.floor
        return floor if floor is not None and floor > wm else wm

    def _update(self) -> None:
        """Watermarks never move back (a stream waking up from idleness behind the rest)."""
        new = self._watermark()
        if new is not None and (self.wm is None or new > self.wm):
            self.wm = new

    def mark_idle(self, stream: str) -> bool:
        """The stream delivered nothing for the idle timeout; True if that is news."""
        if stream in self.idle:
            return False
        self.idle.add(stream)
        self._update()
        return True

    def idle_until(self, now: int) -> bool:
        """Every stream is idle: let processing time ``now`` carry the watermark."""
        target = now - self.lateness_ms
        if self.floor is not None and target <= self.floor:
            return False
        self.floor = target
        self._update()
        return True

    def dump(self) -> dict[str, Any]:
        return {
            "max_time": self.max_time,
            "idle": sorted(self.idle),
            "floor": self.floor,
            "wm": self.wm,
        }

    def load(self, meta: dict[str, Any]) -> None:
        self.max_time = {k: int(v) for k, v in meta.get("max_time", {}).items()}
        self.idle = set(meta.get("idle", ()))
        self.floor = meta.get("floor")
        self.wm = meta.get("wm")
        self._update()
