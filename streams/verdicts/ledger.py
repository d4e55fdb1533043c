"""Verdict state per (candidate, primary) comparison, and the records a window close gives.

:class:`streams.merging.WindowMerger` calls :meth:`VerdictLedger.fold` with every
candidate partial as it arrives, and :meth:`VerdictLedger.verdict` once per candidate of
every closed window. A partial's paired loss sums and guardrail figures go to the
comparison of its candidate with the primary *it* was scored against; a window close
decides (:func:`streams.verdicts.decide.decide`) on the comparison with the window's
primary and returns one ``Verdict`` record; with auto-promotion on, the comparison's first
PROMOTE also returns one ``Control`` record.

A comparison is keyed by (candidate, primary): when the primary a candidate is compared
with changes (a promotion), the comparison with the new primary starts from zero, so
evidence gathered against the old primary never counts against the new one, not even in
the windows where the joiner's partitions switch one after the other. Its first PROMOTE
is final: it is acted on, and later windows repeat it. A REJECT is a reading, not an end:
the confidence sequence holds at every n at once, so reading it again later is no choice
after looking, and a candidate worse before a market moved can be shown better after it
(docs/verdicts.md, section 5). Should a former primary become primary again (a rollback),
its comparisons go on from where they stood.

State is JSON in one ``MutableMapping[bytes, bytes]`` the caller owns (a changelog-backed
faust table in the evaluator, a dict in the tests), so a restarted evaluator continues
every comparison where it stood. Loss sums are kept as :class:`ExactSum` integers: exact,
whatever the windows and partitions they came from.
"""

from __future__ import annotations

import json
import math
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

from streams.control import control_message, promotion_record
from streams.metrics.exact import ExactSum
from streams.metrics.partial import PartialStats
from streams.metrics.sketch import LatencySketch
from streams.schemas import Codec, default_codec
from streams.verdicts.decide import Decision, Evidence, Policy, Verdict, decide

__all__ = ["PairedLoss", "VerdictLedger", "paired_loss", "verdict_record"]

Table = MutableMapping[bytes, bytes]
Message = tuple[bytes, bytes]


@dataclass
class PairedLoss:
    """Count, exact sum and exact sum of squares of candidate loss - primary loss."""

    n: int = 0
    sum: ExactSum = field(default_factory=ExactSum)
    sumsq: ExactSum = field(default_factory=ExactSum)

    def merge(self, other: PairedLoss) -> None:
        self.n += other.n
        self.sum.merge(other.sum)
        self.sumsq.merge(other.sumsq)


def paired_loss(stats: PartialStats) -> PairedLoss:
    """The paired loss sums a window's merged statistics carry: the count, exact sum and
    exact sum of squares of candidate loss - primary loss over the window's labelled pairs
    (:mod:`streams.metrics.labelled`; zero while no label met this candidate's answers)."""
    lab = stats.labelled
    if lab is None:
        return PairedLoss()
    return PairedLoss(lab.diff_n, lab.diff_sum.copy(), lab.diff_sq.copy())


@dataclass
class _Comparison:
    """One comparison's accumulated figures (JSON in the state table)."""

    id: str
    loss: PairedLoss
    latency: LatencySketch
    predictions: int = 0
    errors: int = 0
    #: the final verdict's record, once PROMOTE or REJECT
    decided: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        indices, counts = self.latency.to_sparse()
        return {
            "id": self.id,
            "n": self.loss.n,
            "sum": self.loss.sum.to_int(),
            "sumsq": self.loss.sumsq.to_int(),
            "latency": [indices, counts],
            "predictions": self.predictions,
            "errors": self.errors,
            "decided": self.decided,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> _Comparison:
        loss = PairedLoss(d["n"], ExactSum.from_int(d["sum"]), ExactSum.from_int(d["sumsq"]))
        return cls(
            id=d["id"],
            loss=loss,
            latency=LatencySketch.from_sparse(*d["latency"]),
            predictions=d["predictions"],
            errors=d["errors"],
            decided=d.get("decided"),
        )

    def evidence(self) -> Evidence:
        return Evidence(
            n=self.loss.n,
            sum=self.loss.sum.get(),
            sumsq=self.loss.sumsq.get(),
            p99_latency_ms=self.latency.quantile(0.99) if self.latency.count else None,
            error_rate=self.errors / self.predictions if self.predictions else None,
            predictions=self.predictions,
        )


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def verdict_record(
    v: Verdict,
    *,
    candidate: str,
    primary: str,
    comparison: str,
    policy: Policy,
    candidates: int,
    window_start: int,
    window_end: int,
    emitted_at: int,
) -> dict[str, Any]:
    """A ``Verdict`` Avro record from a decision and where it was made."""
    iv, ev = v.interval, v.evidence
    return {
        "candidate": candidate,
        "primary": primary,
        "comparison": comparison,
        "decision": v.decision.value,
        "reason": v.reason,
        "n": ev.n,
        "estimate": _finite(ev.sum / ev.n) if ev.n else None,
        "lower": None if iv is None else _finite(iv.lower),
        "upper": None if iv is None else _finite(iv.upper),
        "alpha": v.alpha,
        "family_alpha": policy.alpha,
        "candidates": candidates,
        "p99_latency_ms": _finite(ev.p99_latency_ms),
        "latency_budget_ms": policy.latency_budget_ms,
        "error_rate": _finite(ev.error_rate),
        "error_rate_budget": policy.error_rate_budget,
        "predictions": ev.predictions,
        "breached": list(v.breached),
        "window_start": window_start,
        "window_end": window_end,
        "emitted_at": emitted_at,
    }


class VerdictLedger:
    """Comparisons in a table; :meth:`window` gives each closed window's verdict.

    ``expected_candidates``: the Bonferroni divisor is the larger of it and the number of
    candidates seen against the primary so far (set it to the number of candidates you
    will compare, so that one added later does not share an alpha already spent).
    ``auto_promote``: a comparison's first PROMOTE also gives a ``Control`` record, with
    ``old_primary`` (RETIRE or SHADOW) saying what happens to the primary it replaces.
    """

    def __init__(
        self,
        state: Table,
        policy: Policy,
        *,
        expected_candidates: int = 0,
        auto_promote: bool = False,
        old_primary: str = "RETIRE",
        codec: Codec | None = None,
    ) -> None:
        if old_primary not in ("RETIRE", "SHADOW"):
            raise ValueError(f"old_primary must be RETIRE or SHADOW, got {old_primary!r}")
        self.state = state
        self.policy = policy
        self.expected_candidates = expected_candidates
        self.auto_promote = auto_promote
        self.old_primary = old_primary
        self.codec = codec or default_codec()

    def _json(self, key: bytes, default: Any) -> Any:
        raw = self.state.get(key)
        return default if raw is None else json.loads(raw)

    def _put(self, key: bytes, value: Any) -> None:
        self.state[key] = json.dumps(value, sort_keys=True).encode()

    def _comparison(self, cand: str, primary: str, start: int) -> _Comparison:
        """The comparison of ``cand`` with ``primary``; a new one, from zero, the first time."""
        stored = self._json(f"cmp|{cand}|{primary}".encode(), None)
        if stored is not None:
            return _Comparison.from_json(stored)
        return _Comparison(f"{cand}|{primary}|{start}", PairedLoss(), LatencySketch())

    def candidates(self, primary: str) -> int:
        """The Bonferroni divisor for candidates compared with ``primary``."""
        seen = self._json(f"seen|{primary}".encode(), [])
        return max(self.expected_candidates, len(seen), 1)

    def _see(self, cand: str, primary: str) -> None:
        key = f"seen|{primary}".encode()
        seen = self._json(key, [])
        if cand not in seen:
            self._put(key, sorted([*seen, cand]))

    def fold(
        self, cand: str, primary: str, ws: int, stats: PartialStats, loss: PairedLoss | None = None
    ) -> None:
        """One partial of ``cand`` into its comparison with the primary *that partial* was
        scored against (its ``primary`` field), on time or late.

        Not the primary of the window it is merged into: around a promotion, the joiner's
        partitions switch primary at slightly different times, so one window can hold
        partials against the old primary and against the new one. Had they been merged
        first, a candidate close to the old primary (a refit of it, whose paired difference
        has a small variance) would lend its small lead over the *old* primary to its
        comparison with the *new* one, and be promoted over a better model within a window.

        A partial from a partition that has not seen a primary answer yet (``primary``
        empty; it holds no labelled pairs) counts in the candidate's latest comparison, if
        it has one. A comparison over (a PROMOTE acted on) still takes late figures; they
        change no decision.
        """
        primary = primary or self._json(b"current|" + cand.encode(), "")
        if not primary or cand == primary:
            return
        cmp = self._comparison(cand, primary, ws)
        cmp.loss.merge(loss if loss is not None else paired_loss(stats))
        cmp.latency.merge(stats.candidate_latency)
        cmp.predictions += stats.coverage["candidate_predictions"]
        cmp.errors += stats.coverage["candidate_errors"]
        self._put(f"cmp|{cand}|{primary}".encode(), cmp.to_json())

    def window(
        self,
        cand: str,
        primary: str,
        ws: int,
        we: int,
        stats: PartialStats,
        now: int,
        loss: PairedLoss | None = None,
    ) -> list[tuple[str, Message]]:
        """:meth:`fold` the window's figures, then :meth:`verdict` (for callers that merge
        a window's partials themselves, all against one primary)."""
        self.fold(cand, primary, ws, stats, loss)
        return self.verdict(cand, primary, ws, we, now)

    def verdict(
        self, cand: str, primary: str, ws: int, we: int, now: int
    ) -> list[tuple[str, Message]]:
        """The records of ``cand``'s closed window, judged on its comparison with the
        window's ``primary`` (every partial already folded): ``("Verdict", (key, value))``
        and, on an auto-promotion, ``("Control", (key, value))``.

        A candidate that is the primary itself (after its promotion) gives nothing.
        """
        if cand == primary or not primary:
            return []
        self._see(cand, primary)
        if self._json(b"current|" + cand.encode(), None) != primary:
            self._put(b"current|" + cand.encode(), primary)
        cmp = self._comparison(cand, primary, ws)
        k = self.candidates(primary)
        out: list[tuple[str, Message]] = []
        if cmp.decided is not None:
            rec = dict(cmp.decided)
            rec.update(window_start=ws, window_end=we, emitted_at=now)
        else:
            v = decide(cmp.evidence(), self.policy, k)
            rec = verdict_record(
                v,
                candidate=cand,
                primary=primary,
                comparison=cmp.id,
                policy=self.policy,
                candidates=k,
                window_start=ws,
                window_end=we,
                emitted_at=now,
            )
            if v.decision is Decision.PROMOTE:  # acted on: the comparison ends here
                cmp.decided = rec
                if self.auto_promote:
                    control = promotion_record(
                        cand,
                        previous_primary=primary,
                        old_primary=self.old_primary,
                        reason=f"auto-promotion: {v.reason}",
                        comparison=cmp.id,
                        who="evaluator",
                        now=now,
                    )
                    out.append(("Control", control_message(self.codec, control)))
        self._put(f"cmp|{cand}|{primary}".encode(), cmp.to_json())
        key = f"{cand}|{primary}".encode()
        out.insert(0, ("Verdict", (key, self.codec.encode("Verdict", rec))))
        return out
