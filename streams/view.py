"""What a deployment publishes, read back: snapshots, alerts, verdicts, promotions.

Why a module of its own: the demo's live table and ``understudy status`` show the same
thing from the same public topics (``<prefix>.metrics``, ``.alerts``, ``.verdicts``,
``.control``), the way any subscribing service would read them: committed records only,
from the beginning, in a consumer group of its own that commits nothing.
"""

from __future__ import annotations

import os
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError

from streams.alerts.follow import format_alert
from streams.config import Config
from streams.kafka import Topics, client_config
from streams.schemas import default_codec

__all__ = ["MetricsView"]


class MetricsView:
    """Follows ``<prefix>.metrics`` and keeps the latest snapshots of each candidate."""

    def __init__(
        self, cfg: Config, role: str = "demo-view", follow: bool = True, history: bool = False
    ) -> None:
        """``follow``: subscribe to the four topics now (the demo's live view); False leaves
        the assignment to the caller and reports each partition read to its end in
        :attr:`at_end` (``understudy status``). ``history``: also keep every WINDOW
        snapshot and verdict read, in order (``understudy report``)."""
        self.codec = default_codec()
        self.consumer = Consumer(
            client_config(
                cfg,
                **{
                    "group.id": f"{cfg.prefix}.{role}.{os.getpid()}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "enable.partition.eof": not follow,
                },
            )
        )
        topics = Topics(cfg.prefix)
        self.alerts_topic = topics.alerts
        self.verdicts_topic = topics.verdicts
        self.control_topic = topics.control
        #: (topic, partition) read to its end, when not following
        self.at_end: set[tuple[str, int]] = set()
        if follow:
            self.consumer.subscribe(
                [topics.metrics, topics.alerts, topics.verdicts, topics.control]
            )
        self.cumulative: dict[str, dict[str, Any]] = {}
        #: each candidate's latest WINDOW snapshot with traffic (requests, pairs or drift)
        self.window: dict[str, dict[str, Any]] = {}
        #: every alert transition seen, in order
        self.alerts: list[dict[str, Any]] = []
        #: the latest verdict of each candidate (its comparison with the current primary)
        self.verdicts: dict[str, dict[str, Any]] = {}
        #: every promotion published, in order
        self.promotions: list[dict[str, Any]] = []
        #: the first PROMOTE verdict of each comparison: the evidence of its promotion
        self.promoting: dict[str, dict[str, Any]] = {}
        self.history = history
        #: with ``history``: each candidate's WINDOW snapshots and verdicts, as read
        self.window_history: dict[str, list[dict[str, Any]]] = {}
        self.verdict_history: dict[str, list[dict[str, Any]]] = {}

    def poll(self, timeout: float) -> int:
        n = 0
        for m in self.consumer.consume(num_messages=1000, timeout=timeout):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self.at_end.add((str(m.topic()), int(m.partition() or 0)))
                continue
            if m.value() is None:
                continue
            self.at_end.discard((str(m.topic()), int(m.partition() or 0)))
            if m.topic() == self.alerts_topic:
                self.alerts.append(self.codec.decode_as("Alert", m.value()))
                continue
            if m.topic() == self.verdicts_topic:
                v = self.codec.decode_as("Verdict", m.value())
                self.verdicts[v["candidate"]] = v
                if self.history:
                    self.verdict_history.setdefault(v["candidate"], []).append(v)
                if v["decision"] == "PROMOTE":
                    self.promoting.setdefault(v["comparison"], v)
                continue
            if m.topic() == self.control_topic:
                self.promotions.append(self.codec.decode_as("Control", m.value()))
                continue
            rec = self.codec.decode_as("MetricSnapshot", m.value())
            cand = rec["candidate"]
            if rec["scope"] == "CUMULATIVE":
                self.cumulative[cand] = rec
            else:
                if self.history:
                    self.window_history.setdefault(cand, []).append(rec)
                if cand not in self.window or _has_traffic(rec):
                    # a window that holds only late labels (scored at the label's time) has
                    # no requests, pairs or drift to show: the last window with traffic stays
                    self.window[cand] = rec
            n += 1
        return n

    def final(self, cand: str) -> dict[str, Any]:
        """The ``--json`` line of ``cand``: its last CUMULATIVE, its drift, its alerts."""
        return {
            **self.cumulative[cand],
            "window_drift": self.window.get(cand, {}).get("drift", []),
            "alerts_raised": [a for a in self.alerts if a["candidate"] in (cand, "*")],
            "verdict": self.verdicts.get(cand),
            "promotion": next(
                (
                    {**p, "verdict": self.promoting.get(p["comparison"])}
                    for p in self.promotions
                    if p["candidate"] == cand
                ),
                None,
            ),
        }

    def close(self) -> None:
        self.consumer.close()

    def table(self, recent_alerts: bool = True) -> str:
        """Each candidate's row, the drift of the last window, promotions, and (with
        ``recent_alerts``) the latest alert transitions."""
        head = (
            f"{'candidate':<13} {'requests':>8} {'pairs':>7} {'MAE':>9} {'RMSE':>9} "
            f"{'bias':>8} {'p50 ms':>7} {'p99 ms':>7} {'win MAE':>9} {'err%':>6} {'law':>6} "
            f"{'true MAE':>9} {'prim MAE':>9} {'labels':>7}  {'loss diff [interval]':<28} verdict"
        )
        lines = [head, "-" * len(head)]
        for cand in sorted(self.cumulative):
            r = self.cumulative[cand]
            w = self.window.get(cand, {})
            lab = r.get("labelled") or {}  # losses against the true sale prices
            lines.append(
                f"{cand:<13} {r['coverage']['requests']:>8} {r['coverage']['pairs']:>7} "
                f"{_num(r['mae'])} {_num(r['rmse'])} {_num(r['mean_signed_diff'], 8)} "
                f"{_num(r['candidate_latency_p50'], 7)} {_num(r['candidate_latency_p99'], 7)} "
                f"{_num(w.get('mae'))} {_num(_pct(r['candidate_error_rate']), 6)} "
                f"{_law(r.get('conservation')):>6} "
                f"{_num(lab.get('mae'))} {_num(lab.get('primary_mae'))} {lab.get('n', 0):>7}  "
                f"{_interval(self.verdicts.get(cand)):<28} {_decision(self.verdicts.get(cand))}"
            )
        lines += self._drift_lines()
        lines += [_promotion_line(p, self.promoting.get(p["comparison"])) for p in self.promotions]
        if recent_alerts and self.alerts:
            lines.append("alerts (latest last):")
            for a in self.alerts[-6:]:
                lines.append("  " + format_alert(a))
        return "\n".join(lines)

    def _drift_lines(self) -> list[str]:
        """Drift per feature of the latest judged window, and each candidate's outputs."""
        latest = max(self.window.values(), key=lambda w: w["window_end"], default=None)
        if latest is None:
            return []
        ref = latest.get("reference") or {}
        if not ref.get("ready"):
            return [f"drift: building the reference ({ref.get('requests', 0)} requests so far)"]
        rows = [d for d in latest.get("drift", []) if d["kind"] in ("numeric", "categorical")]
        if not rows:
            return []
        out = [f"drift of the last window against the {ref['source']}:"]
        cells = []
        for d in rows:
            stat = (
                f"psi {d['psi']:.2f}"
                if d["psi"] is not None
                else (f"js {d['js']:.2f}" if d["js"] is not None else "-")
            )
            flag = " ALARM" if d["alarm"] else (" drifting" if d["drifting"] else "")
            cells.append(f"{d['feature']} {stat}{flag}")
        for i in range(0, len(cells), 4):
            out.append("  " + " | ".join(cells[i : i + 4]))
        for cand in sorted(self.window):
            for d in self.window[cand].get("drift", []):
                if d["kind"] == "output" and d["feature"] == "candidate" and d["psi"] is not None:
                    flag = " ALARM" if d["alarm"] else ""
                    out.append(f"  {cand} output psi {d['psi']:.2f}{flag}")
        return out


def _has_traffic(snapshot: dict[str, Any]) -> bool:
    cov = snapshot["coverage"]
    return bool(cov.get("requests") or cov.get("pairs") or snapshot.get("drift"))


def _interval(v: dict[str, Any] | None) -> str:
    """The mean paired loss difference (candidate - primary) and its confidence interval."""
    if v is None or v.get("estimate") is None:
        return "-"
    lo, hi = v.get("lower"), v.get("upper")
    span = "" if lo is None or hi is None else f" [{lo:+.2f}, {hi:+.2f}]"
    return f"{v['estimate']:+.2f}{span}"


def _decision(v: dict[str, Any] | None) -> str:
    if v is None:
        return "-"
    return v["decision"] if v["decision"] != "CONTINUE" else f"CONTINUE ({v['reason']})"


def _promotion_line(p: dict[str, Any], v: dict[str, Any] | None) -> str:
    """Who was promoted, when, and on what evidence (``v``: the verdict that decided it)."""
    at = time.strftime("%H:%M:%S", time.gmtime(p["time"] / 1000))
    v = v or {}
    evidence = (
        f": {v['n']} labelled pairs, loss diff {_interval(v)} at alpha {v['alpha']:.3g}"
        if v.get("n")
        else ""
    )
    fate = "retired" if p["old_primary"] == "RETIRE" else "kept as a shadow"
    return (
        f"PROMOTED {p['candidate']} at {at}Z over {p['previous_primary']} ({fate}){evidence}"
        f"\n  {p['candidate']} answers the service since: its requests from then on are not"
        " shadowed, and its row counts them no_candidate"
    )


def _num(v: float | None, width: int = 9) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.3f}"


def _law(law: dict[str, Any] | None) -> str:
    if law is None:
        return "-"
    return "holds" if law["holds"] else "BROKEN"


def _pct(v: float | None) -> float | None:
    return None if v is None else 100.0 * v
