"""The alert state machine: FIRING and RESOLVED transitions, never one event per window.

Driven by window closes: for each closed window of a candidate the evaluator calls
:meth:`AlertState.observe` with the window's metric values ``{(metric, feature): value}``
(feature ``""`` for metrics that are not per feature). Every rule that watches the candidate
is evaluated on every matching value, each under its own key ``rule|candidate|feature``:

- a window where ``value <comparison> threshold`` **holds** adds one to the key's streak;
  when the streak reaches the rule's ``for``, the key goes to FIRING (one transition);
- a window where it **does not hold** sets the streak to 0; a firing key goes to RESOLVED
  (one transition);
- a window **without evidence** (the value is missing, None or NaN: no pairs, no samples,
  the feature absent) changes nothing: it neither counts toward ``for`` nor resets the
  streak, and a firing alert stays firing. An alert resolves on evidence that the condition
  has stopped, never because a window was empty; ``for`` therefore counts consecutive
  windows *with evidence*.

A window of a candidate not newer than the last one observed for it (a replay after a
restart from an older offset) is ignored, so applying the same window twice never
produces a transition twice.

The whole state is a plain JSON-able dict (:meth:`AlertState.to_json`), kept by the
evaluator in a changelog-backed table and written together with the transitions it
published; :meth:`AlertState.from_json` restores it after a crash, and a restored alert
that was firing stays firing: no second FIRING. Keys of rules no longer in the rules file
are dropped on restore (nobody could resolve them).

Example
-------
>>> from streams.alerts.rules import parse_rules
>>> rules = parse_rules('''
... rules:
...   - {name: slow, metric: latency.candidate_p99_ms, comparison: ">", threshold: 250, for: 2,
...      severity: critical}
... ''')
>>> state = AlertState(rules)
>>> p99 = "latency.candidate_p99_ms", ""
>>> [t.state for t in state.observe(10_000, "m@2", {p99: 300.0})]
[]
>>> [t.state for t in state.observe(20_000, "m@2", {p99: None})]  # no evidence
[]
>>> [(t.state, t.key) for t in state.observe(30_000, "m@2", {p99: 310.0})]
[('FIRING', b'slow|m@2|')]
>>> restored = AlertState.from_json(rules, state.to_json())
>>> [t.state for t in restored.observe(40_000, "m@2", {p99: 320.0})]  # still firing
[]
>>> [(t.state, t.consecutive) for t in restored.observe(50_000, "m@2", {p99: 100.0})]
[('RESOLVED', 3)]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

from streams.alerts.rules import Rule

__all__ = ["FIRING", "RESOLVED", "AlertState", "Transition", "alert_key"]

FIRING: Final = "FIRING"
RESOLVED: Final = "RESOLVED"

#: Version of the JSON form of :class:`AlertState`.
STATE_VERSION: Final = 1

#: ``(metric, feature)``: one value of a window.
ValueKey = tuple[str, str]
#: ``(rule, candidate, feature)``: one alert.
AlertKey = tuple[str, str, str]


def alert_key(rule: str, candidate: str, feature: str) -> bytes:
    """The Kafka message key of an alert: ``rule|candidate|feature`` in UTF-8."""
    return f"{rule}|{candidate}|{feature}".encode()


@dataclass(frozen=True)
class Transition:
    """One alert changing state: the fields of an ``Alert`` record but ``emitted_at``."""

    rule: str
    severity: str
    state: str
    candidate: str
    primary: str
    feature: str
    metric: str
    value: float
    threshold: float
    comparison: str
    window_start: int
    window_end: int
    #: FIRING: windows the rule held in a row (the rule's ``for``); RESOLVED: windows it
    #: had held in a row before this one, firing included
    consecutive: int
    message: str

    @property
    def key(self) -> bytes:
        """The message key on ``<prefix>.alerts``."""
        return alert_key(self.rule, self.candidate, self.feature)

    def to_record(self, emitted_at: int) -> dict[str, Any]:
        """The ``Alert`` Avro record (``schemas/Alert.avsc``)."""
        return {
            "rule": self.rule,
            "severity": self.severity,
            "state": self.state,
            "candidate": self.candidate,
            "primary": self.primary,
            "feature": self.feature,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "comparison": self.comparison,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "emitted_at": emitted_at,
            "consecutive": self.consecutive,
            "message": self.message,
        }


@dataclass
class _Entry:
    streak: int = 0
    firing: bool = False
    #: the value of the last window that held (what a RESOLVED without evidence carries)
    last: float | None = None


class AlertState:
    """Streaks and firing flags per ``rule|candidate|feature``; see the module docstring."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._by_name = {r.name: r for r in self.rules}
        self._entries: dict[AlertKey, _Entry] = {}
        self._last_window: dict[str, int] = {}

    def observe(
        self,
        window_end: int,
        candidate: str,
        values: Mapping[ValueKey, float | None],
        *,
        window_start: int | None = None,
        primary: str = "",
    ) -> list[Transition]:
        """Fold one closed window of one candidate; return the transitions it caused.

        ``window_start`` defaults to ``window_end`` (it only travels in the transitions).
        A window not newer than the candidate's last observed one returns ``[]`` and
        changes nothing.
        """
        start = self._newer(candidate, window_end, window_start)
        if start is None:
            return []
        out: list[Transition] = []
        for rule in self.rules:
            if not rule.watches(candidate):
                continue
            for (metric, feature), value in values.items():
                if metric != rule.metric or not rule.covers(feature):
                    continue
                if value is None or math.isnan(value):
                    continue  # no evidence: nothing changes
                t = self._step(rule, candidate, feature, float(value))
                if t is not None:
                    out.append(
                        self._transition(
                            rule, candidate, primary, feature, value, t, start, window_end
                        )
                    )
        return out

    def _newer(self, candidate: str, window_end: int, window_start: int | None) -> int | None:
        """The window's start if it is newer than the candidate's last one (now the last),
        None for a replay."""
        last = self._last_window.get(candidate)
        if last is not None and window_end <= last:
            return None
        self._last_window[candidate] = window_end
        return window_end if window_start is None else window_start

    def _step(
        self, rule: Rule, candidate: str, feature: str, value: float
    ) -> tuple[str, int] | None:
        key = (rule.name, candidate, feature)
        entry = self._entries.get(key)
        if rule.holds(value):
            if entry is None:
                entry = self._entries[key] = _Entry()
            entry.streak += 1
            entry.last = value
            if not entry.firing and entry.streak >= rule.consecutive:
                entry.firing = True
                return FIRING, entry.streak
            return None
        if entry is None:
            return None
        held, was_firing = entry.streak, entry.firing
        del self._entries[key]  # streak 0, not firing: the same as never seen
        return (RESOLVED, held) if was_firing else None

    def _transition(
        self,
        rule: Rule,
        candidate: str,
        primary: str,
        feature: str,
        value: float,
        change: tuple[str, int],
        window_start: int,
        window_end: int,
    ) -> Transition:
        state, consecutive = change
        return Transition(
            rule=rule.name,
            severity=rule.severity,
            state=state,
            candidate=candidate,
            primary=primary,
            feature=feature,
            metric=rule.metric,
            value=float(value),
            threshold=rule.threshold,
            comparison=rule.comparison,
            window_start=window_start,
            window_end=window_end,
            consecutive=consecutive,
            message=_message(
                rule, state, candidate, primary, feature, value, consecutive, window_end
            ),
        )

    def retire(
        self, candidate: str, window_end: int, *, window_start: int | None = None, primary: str = ""
    ) -> list[Transition]:
        """The candidate is no longer judged (promoted: it is the primary now): each of its
        firing alerts is RESOLVED, once, and its streaks are forgotten.

        Without this an alert FIRING at the promotion stayed firing downstream for good:
        nothing would ever judge the candidate again to resolve it. The transition carries
        the value of the last window that held, and says why in its message. Windows of the
        candidate not newer than ``window_end`` are ignored afterwards, as replays are.
        """
        start = self._newer(candidate, window_end, window_start)
        if start is None:
            return []
        out: list[Transition] = []
        for key in sorted(k for k in self._entries if k[1] == candidate):
            entry = self._entries.pop(key)
            rule = self._by_name[key[0]]
            if not entry.firing:
                continue
            value = rule.threshold if entry.last is None else entry.last
            t = self._transition(
                rule, candidate, primary, key[2], value, (RESOLVED, entry.streak), start, window_end
            )
            out.append(replace(t, message=_retired_message(rule, t)))
        return out

    def firing(self) -> list[AlertKey]:
        """The ``(rule, candidate, feature)`` keys firing now, sorted."""
        return sorted(k for k, e in self._entries.items() if e.firing)

    def to_json(self) -> dict[str, Any]:
        """The whole state as plain JSON types (lists, dicts, str, int, bool)."""
        return {
            "version": STATE_VERSION,
            "alerts": [
                {
                    "rule": rule,
                    "candidate": candidate,
                    "feature": feature,
                    "streak": e.streak,
                    "firing": e.firing,
                    **({} if e.last is None else {"last": e.last}),
                }
                for (rule, candidate, feature), e in sorted(self._entries.items())
            ],
            "last_window": dict(sorted(self._last_window.items())),
        }

    @classmethod
    def from_json(cls, rules: Sequence[Rule], data: Mapping[str, Any] | None) -> AlertState:
        """Restore :meth:`to_json`'s form (None or ``{}``: a fresh state).

        Tolerant like the joiner's JSON state: a missing key takes its default; entries of
        rules not in ``rules`` are dropped.
        """
        state = cls(rules)
        if not data:
            return state
        for item in data.get("alerts", ()):
            if item["rule"] not in state._by_name:
                continue
            key = (item["rule"], item["candidate"], item.get("feature", ""))
            last = item.get("last")
            state._entries[key] = _Entry(
                int(item.get("streak", 0)),
                bool(item.get("firing")),
                None if last is None else float(last),
            )
        state._last_window = {str(c): int(w) for c, w in data.get("last_window", {}).items()}
        return state


def _message(
    rule: Rule,
    state: str,
    candidate: str,
    primary: str,
    feature: str,
    value: float,
    consecutive: int,
    window_end: int,
) -> str:
    what = f"{rule.metric}[{feature}]" if feature else rule.metric
    who = f"{candidate} vs {primary}" if primary else candidate
    when = datetime.fromtimestamp(window_end / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    windows = "window" if consecutive == 1 else "windows"
    if state == FIRING:
        text = (
            f"{rule.severity.upper()} {rule.name}: {what} = {value:.6g} "
            f"{rule.comparison} {rule.threshold:g} for {consecutive} {windows} ({who}, "
            f"window ending {when})"
        )
    else:
        text = (
            f"resolved {rule.name}: {what} = {value:.6g}, no longer {rule.comparison} "
            f"{rule.threshold:g} after {consecutive} {windows} ({who}, window ending {when})"
        )
    return f"{text}: {rule.description}" if rule.description else text


def _retired_message(rule: Rule, t: Transition) -> str:
    what = f"{rule.metric}[{t.feature}]" if t.feature else rule.metric
    when = datetime.fromtimestamp(t.window_end / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    windows = "window" if t.consecutive == 1 else "windows"
    return (
        f"resolved {rule.name}: {t.candidate} is the primary now and no longer judged in the "
        f"shadow (it had held for {t.consecutive} {windows}, last {what} = {t.value:.6g}; "
        f"window ending {when})"
    )
