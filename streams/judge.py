"""What a closed window says beyond disagreement: drift, change, slices and alerts.

:class:`streams.merging.WindowMerger` calls :class:`Judge` once per closed window with the
window's shared statistics (the requests' features, the primary's outputs), then once per
candidate with that candidate's merged statistics. No faust here: all state is JSON or
Avro bytes in one table the caller owns (a changelog-backed faust table in the
evaluator), so a restarted evaluator continues every reference, alarm run, ADWIN history
and alert exactly where it stood, and publishes no alert twice.

The reference is either a baseline profile built from a file the team has
(``understudy baseline build``), or the first ``reference_requests`` requests: their
windows build it and are not judged. Each candidate's outputs get their own reference,
its first ``reference_requests`` answers, and so does each context slice's outputs.

Feature drift is the same for every candidate, so its alerts are keyed with candidate
``*``; output drift, disagreement, latency and errors are keyed by candidate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.alerts.drift_rule import ChangeDetectors, DriftAlarm, DriftRule, FeatureDrift
from streams.alerts.rules import Rule
from streams.alerts.state import AlertState, Transition
from streams.metrics.drift import CategoricalDrift, NumericDrift, categorical_drift, numeric_drift
from streams.metrics.partial import SHARED, PartialStats
from streams.schemas import Codec, default_codec

__all__ = ["Judge", "Judged"]

Table = MutableMapping[bytes, bytes]
Stat = NumericDrift | CategoricalDrift
ValueKey = tuple[str, str]


@dataclass(frozen=True)
class Judged:
    """One candidate's window: what goes into its snapshot, and the alert transitions."""

    reference: dict[str, Any]
    drift: list[dict[str, Any]] = field(default_factory=list)
    slices: list[dict[str, Any]] = field(default_factory=list)
    slice_overflow: dict[str, int] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


class Judge:
    """Drift against the reference, ADWIN over time, top slices and alert rules."""

    def __init__(
        self,
        state: Table,
        *,
        rules: Sequence[Rule] = (),
        reference_requests: int = 2000,
        baseline: PartialStats | None = None,
        baseline_source: str = "",
        top_k: int = 5,
        drift_rule: DriftRule | None = None,
        codec: Codec | None = None,
    ) -> None:
        if reference_requests < 1:
            raise ValueError(f"reference_requests must be >= 1, got {reference_requests}")
        self.state = state
        self.rules = tuple(rules)
        self.reference_requests = reference_requests
        self.baseline = baseline
        self.baseline_source = baseline_source
        self.top_k = top_k
        self.rule = drift_rule or DriftRule()
        self.codec = codec or default_codec()

    # -- state ---------------------------------------------------------------------------

    def _json(self, key: bytes, default: Any) -> Any:
        raw = self.state.get(key)
        return default if raw is None else json.loads(raw)

    def _put_json(self, key: bytes, value: Any) -> None:
        self.state[key] = json.dumps(value, sort_keys=True).encode()

    def _stats(self, key: bytes) -> PartialStats | None:
        raw = self.state.get(key)
        return (
            None if raw is None else PartialStats.from_record(self.codec.decode_as("Partial", raw))
        )

    def _put_stats(self, key: bytes, stats: PartialStats) -> None:
        self.state[key] = self.codec.encode("Partial", stats.to_partial())

    # -- the reference -------------------------------------------------------------------

    def reference_info(self) -> dict[str, Any]:
        if self.baseline is not None:
            n = self.baseline.profile.requests
            return {"source": f"baseline {self.baseline_source}", "requests": n, "ready": True}
        meta = self._json(b"ref-meta", {"requests": 0, "ready": False})
        return {
            "source": f"first {self.reference_requests} requests",
            "requests": int(meta["requests"]),
            "ready": bool(meta["ready"]),
        }

    def _shared_reference(self) -> PartialStats | None:
        if self.baseline is not None:
            return self.baseline
        return self._stats(b"ref|" + SHARED.encode()) if self.reference_info()["ready"] else None

    def shared_window(self, ws: int, we: int, shared: PartialStats) -> list[Transition]:
        """The window's shared statistics: build the reference, or judge feature drift.

        Returns the alert transitions of the features (candidate ``*``).
        """
        if self.baseline is None and not self.reference_info()["ready"]:
            self._grow_reference(shared)
            return []
        ref = self._shared_reference()
        assert ref is not None
        drifts = self._feature_drift(ref, shared)
        self._put_json(b"features|" + str(we).encode(), drifts)
        values = _drift_values(drifts)
        return self._observe(SHARED, "", ws, we, values)

    def end_window(self, we: int) -> None:
        """Every candidate of the window ``we`` was judged: its shared rows can go."""
        self.state.pop(b"features|" + str(we).encode(), None)

    def _grow_reference(self, shared: PartialStats) -> None:
        key = b"ref|" + SHARED.encode()
        ref = self._stats(key) or PartialStats()
        part = PartialStats()
        part.profile = shared.profile
        part.slices = shared.slices
        ref.merge(part)
        self._put_stats(key, ref)
        n = ref.profile.requests
        self._put_json(b"ref-meta", {"requests": n, "ready": n >= self.reference_requests})

    def _feature_drift(self, ref: PartialStats, cur: PartialStats) -> list[dict[str, Any]]:
        stats: dict[str, tuple[str, Stat]] = {}
        for name, sketch in sorted(cur.profile.numeric.items()):
            r = ref.profile.numeric.get(name)
            if r is not None:
                stats[name] = ("numeric", numeric_drift(r, sketch))
        for name, counts in sorted(cur.profile.categorical.items()):
            rc = ref.profile.categorical.get(name)
            if rc is not None:
                stats[name] = ("categorical", categorical_drift(rc, counts))
        for kind, side in (("output", "primary"), ("labels", "primary")):
            s = _output_stat(ref, cur, kind, primary=True)
            if s is not None:
                stats[f"{side}:{kind}"] = (kind, s)
        return self._judge_stats(b"alarm|" + SHARED.encode(), stats)

    def _judge_stats(
        self, key: bytes, stats: Mapping[str, tuple[str, Stat]]
    ) -> list[dict[str, Any]]:
        alarm = DriftAlarm.from_json(self._json(key + b"|alarm", None), self.rule)
        changes = ChangeDetectors.from_json(self._json(key + b"|adwin", None))
        judged = alarm.update({n: s for n, (_, s) in stats.items()})
        changed = set(changes.update({n: self.rule.scaled(s) for n, (_, s) in stats.items()}))
        self._put_json(key + b"|alarm", alarm.to_json())
        self._put_json(key + b"|adwin", changes.to_json())
        return [
            _drift_row(name, kind, s, judged[name], name in changed)
            for name, (kind, s) in stats.items()
        ]

    # -- one candidate -------------------------------------------------------------------

    def window(self, cand: str, primary: str, ws: int, we: int, stats: PartialStats) -> Judged:
        """A candidate's closed window (its partials merged with the shared ones)."""
        info = self.reference_info()
        out_ref_key = b"ref|" + cand.encode()
        out_ref = self._stats(out_ref_key)
        out_meta = self._json(out_ref_key + b"|meta", {"ready": False})
        drift: list[dict[str, Any]] = []
        values: dict[ValueKey, float | None] = _plain_metrics(stats)
        if not out_meta["ready"]:
            grown = out_ref or PartialStats()
            part = PartialStats()
            part.profile.candidate_output = stats.profile.candidate_output
            part.profile.candidate_labels = stats.profile.candidate_labels
            part.slices = stats.slices
            grown.merge(part)
            self._put_stats(out_ref_key, grown)
            out = grown.profile.candidate_output or grown.profile.candidate_labels
            ready = out is not None and out.count >= self.reference_requests
            self._put_json(out_ref_key + b"|meta", {"ready": ready})
        else:
            assert out_ref is not None
            outs: dict[str, tuple[str, Stat]] = {}
            for kind in ("output", "labels"):
                s = _output_stat(out_ref, stats, kind, primary=False)
                if s is not None:
                    outs[f"candidate:{kind}"] = (kind, s)
            drift += self._judge_stats(b"alarm|" + cand.encode(), outs)
        if info["ready"]:
            drift = self._json(b"features|" + str(we).encode(), []) + drift
        # the primary's output drift is shared: observed once, under candidate '*'
        values.update(_drift_values([d for d in drift if d["feature"] == "candidate"]))
        transitions = self._observe(cand, primary, ws, we, values)
        slices = self._slices(stats, out_ref if out_meta["ready"] else None)
        return Judged(
            reference=info,
            drift=drift,
            slices=slices,
            slice_overflow=dict(sorted(stats.slices.overflow.items())),
            alerts=self.firing(cand),
            transitions=transitions,
        )

    def _slices(self, stats: PartialStats, ref: PartialStats | None) -> list[dict[str, Any]]:
        rows = []
        shared_ref = self._shared_reference()  # decoded once per window, not per slice
        for name, s in stats.slices.by_name.items():
            row = {"slice": name, **s.summary()}
            for col, side in (("output_psi", False), ("primary_output_psi", True)):
                row[col] = None
                cur = s.output(side)
                base_slices = ref if not side else shared_ref
                r = None if base_slices is None else base_slices.slices.by_name.get(name)
                base = None if r is None else r.output(side)
                if cur is not None and base is not None and cur.count and base.count:
                    d = numeric_drift(base, cur)
                    row[col] = _finite(d.psi)
                    if not side:
                        row["output_ks"] = _finite(d.ks)
            row.setdefault("output_ks", None)
            rows.append(row)
        return top_slices(rows, self.top_k)

    # -- alerts --------------------------------------------------------------------------

    def _alert_state(self) -> AlertState:
        return AlertState.from_json(self.rules, self._json(b"alerts", None))

    def _observe(
        self, cand: str, primary: str, ws: int, we: int, values: dict[ValueKey, float | None]
    ) -> list[Transition]:
        if not self.rules:
            return []
        state = self._alert_state()
        if cand == primary:
            # promoted: the candidate is the primary now, and a row of it against itself
            # (the joiner counts the requests it no longer answers as a candidate
            # ``no_candidate``) says nothing about it; judging it fired ``candidate-silent``
            # after every promotion. What was firing for it is resolved, once.
            out = state.retire(cand, we, window_start=ws, primary=primary)
        else:
            out = state.observe(we, cand, values, window_start=ws, primary=primary)
        self._put_json(b"alerts", state.to_json())
        return out

    def firing(self, cand: str) -> list[str]:
        """Keys of the alerts firing for ``cand`` and for the shared features."""
        if not self.rules:
            return []
        return sorted("|".join(k) for k in self._alert_state().firing() if k[1] in (cand, SHARED))


def _drift_values(rows: list[dict[str, Any]]) -> dict[ValueKey, float | None]:
    """Drift rows as rule metric values: ``drift.feature.*`` for features, ``drift.output.*``
    for outputs (feature ``primary`` or ``candidate``)."""
    values: dict[ValueKey, float | None] = {}
    for d in rows:
        name = d["feature"]
        if d["kind"] in ("numeric", "categorical"):
            group, alarm = "drift.feature", "drift.alarm"
        else:
            group, alarm = "drift.output", "drift.output.alarm"
        if d["kind"] in ("categorical", "labels"):
            values[(f"{group}.js", name)] = d["js"]
        else:
            values[(f"{group}.psi", name)] = d["psi"]
            values[(f"{group}.ks", name)] = d["ks"]
        values[(alarm, name)] = _flag(d["alarm"])
        values[(f"{group}.change", name)] = 1.0 if d["change"] else 0.0
    return values


def _flag(alarm: bool | None) -> float | None:
    return None if alarm is None else (1.0 if alarm else 0.0)


def _output_stat(ref: PartialStats, cur: PartialStats, kind: str, *, primary: bool) -> Stat | None:
    if kind == "output":
        r, c = ref.profile.output(primary), cur.profile.output(primary)
        return None if r is None or c is None else numeric_drift(r, c)
    rl, cl = ref.profile.labels(primary), cur.profile.labels(primary)
    return None if rl is None or cl is None else categorical_drift(rl, cl)


def _drift_row(name: str, kind: str, s: Stat, j: FeatureDrift, change: bool) -> dict[str, Any]:
    feature = name.split(":", 1)[0] if kind in ("output", "labels") else name
    num = s if isinstance(s, NumericDrift) else None
    cat = s if isinstance(s, CategoricalDrift) else None
    return {
        "feature": feature,
        "kind": kind,
        "psi": None if num is None else _finite(num.psi),
        "ks": None if num is None else _finite(num.ks),
        "js": None if cat is None else _finite(cat.js),
        "p_value": _finite(j.p_value),
        "n_ref": int(s.n_ref),
        "n_cur": int(s.n_cur),
        "drifting": j.drifting,
        "alarm": j.alarm,
        "change": change,
        "reason": j.reason,
    }


def _plain_metrics(stats: PartialStats) -> dict[ValueKey, float | None]:
    """Disagreement, latency, errors and coverage of a window, by rule metric name."""
    s = stats.summary()
    cov = stats.coverage
    requests = cov["requests"]
    return {
        ("disagreement.mae", ""): s["mae"],
        ("disagreement.rmse", ""): s["rmse"],
        ("disagreement.mean_signed_diff", ""): s["mean_signed_diff"],
        ("disagreement.rate", ""): s["disagreement_rate"],
        **{
            (f"latency.{side}_{q}_ms", ""): s[f"{side}_latency_{q}"]
            for side in ("primary", "candidate")
            for q in ("p50", "p95", "p99")
        },
        ("errors.primary_rate", ""): s["primary_error_rate"],
        ("errors.candidate_rate", ""): s["candidate_error_rate"],
        ("coverage.no_candidate_rate", ""): cov["no_candidate"] / requests if requests else None,
    }


def top_slices(rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The ``k`` slices that disagree most: by MAE (regression) or disagreement rate."""

    def rank(r: dict[str, Any]) -> tuple[float, str]:
        worst = r["mae"] if r["mae"] is not None else (r["disagreement_rate"] or 0.0)
        return (-worst, r["slice"])

    return sorted(rows, key=rank)[:k]


def slice_rows(stats: PartialStats, k: int) -> list[dict[str, Any]]:
    """Top slices with their disagreement only (a cumulative has no output drift)."""
    rows = [
        {
            "slice": name,
            **s.summary(),
            "output_psi": None,
            "output_ks": None,
            "primary_output_psi": None,
        }
        for name, s in stats.slices.by_name.items()
    ]
    return top_slices(rows, k)
