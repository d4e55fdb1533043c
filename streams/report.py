"""``understudy report``: one HTML file with plots, from what a deployment publishes.

Why: ``status`` answers "where do we stand now"; before promoting a candidate, or after an
alert, a team wants the story over time, in a form they can attach to a ticket or a review:
how far the candidate disagreed window by window, how its latency compared, which inputs
drifted and when, and how the promotion evidence closed in. The file is self-contained
(inline SVG, no script, no network), so it opens anywhere and can be archived.

Everything comes from the same reading as ``status`` (:func:`streams.status.read_status`:
the public topics, committed records only, the last ``METRICS_TAIL`` snapshots of each
metrics partition), so the report never shows a figure the topics do not hold.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence
from typing import Any

from streams.alerts.follow import format_alert
from streams.status import Status

__all__ = ["render_report"]

Point = tuple[float, float]

#: chart size in SVG user units, and the inner margins for the axis labels
WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 24
#: features drawn in a candidate's drift chart: those that drifted most, by their peak PSI
DRIFT_FEATURES = 6
#: line colours, in the order series are drawn (distinguishable in grey print too)
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def render_report(status: Status, generated_ms: int | None = None) -> str:
    """The HTML page of a reading taken with ``history=True``."""
    view = status.view
    when = time.strftime(
        "%Y-%m-%d %H:%M:%S UTC",
        time.gmtime((generated_ms if generated_ms is not None else time.time() * 1000) / 1000),
    )
    body = [
        f"<h1>Understudy report: {_e(status.prefix)}</h1>",
        f"<p>Read from the topics of prefix <code>{_e(status.prefix)}</code> at {when}."
        + ("" if status.complete else " <b>The topics were not all read to their end.</b>")
        + "</p>",
    ]
    if not view.cumulative:
        body.append(f"<p>No metric snapshots on <code>{_e(status.prefix)}.metrics</code> yet.</p>")
    lag = ", ".join(f"{k} {'-' if n is None else n}" for k, n in status.lag.items())
    body.append(f"<p>Consumer lag (records not yet committed): {_e(lag)}.</p>")
    body.append(_summary(status))
    for cand in sorted(set(view.cumulative) | set(view.window_history)):
        body.append(_candidate(status, cand))
    body.append(_alerts(status))
    return _PAGE.format(title=_e(f"Understudy report: {status.prefix}"), body="\n".join(body))


# -- sections ----------------------------------------------------------------------------


def _summary(status: Status) -> str:
    view = status.view
    rows = []
    for cand in sorted(view.cumulative):
        r = view.cumulative[cand]
        cov = r["coverage"]
        lab = r.get("labelled") or {}
        v = view.verdicts.get(cand)
        rows.append(
            [
                cand,
                r.get("primary", ""),
                cov["requests"],
                cov["pairs"],
                _fmt(r["mae"] if r.get("task") != "classification" else r["disagreement_rate"]),
                _fmt(r["candidate_latency_p99"]),
                _fmt(r["primary_latency_p99"]),
                _fmt(r["candidate_error_rate"]),
                _fmt(lab.get("mae") if lab.get("n") else lab.get("accuracy")),
                _fmt(lab.get("primary_mae") if lab.get("n") else lab.get("primary_accuracy")),
                "-" if v is None else f"{v['decision']} ({v['reason']})",
            ]
        )
    if not rows:
        return ""
    head = [
        "candidate",
        "primary",
        "requests",
        "pairs",
        "MAE or disagreement",
        "p99 ms",
        "primary p99 ms",
        "error rate",
        "true MAE or accuracy",
        "primary's",
        "verdict",
    ]
    return "<h2>Since the start (cumulative)</h2>" + _table(head, rows)


def _candidate(status: Status, cand: str) -> str:
    view = status.view
    windows = sorted(view.window_history.get(cand, []), key=lambda w: w["window_end"])
    out = [f"<h2>Candidate {_e(cand)}</h2>"]
    if not windows:
        out.append("<p>No window snapshots read.</p>")
        return "\n".join(out)
    t0 = windows[0]["window_end"]
    x = [(w["window_end"] - t0) / 1000 for w in windows]
    classification = any(w.get("task") == "classification" for w in windows)
    key, name = ("disagreement_rate", "disagreement rate") if classification else ("mae", "MAE")
    out.append(
        _chart(
            f"Disagreement with the primary, per window ({name})",
            {name: _points(x, [w.get(key) for w in windows])},
        )
    )
    out.append(
        _chart(
            "Latency p99 per window (ms)",
            {
                "candidate": _points(x, [w.get("candidate_latency_p99") for w in windows]),
                "primary": _points(x, [w.get("primary_latency_p99") for w in windows]),
            },
        )
    )
    out.append(_drift_chart(windows, x))
    labelled = [w.get("labelled") or {} for w in windows]
    metric = "accuracy" if classification else "mae"
    if any(lab.get(metric) is not None for lab in labelled):
        out.append(
            _chart(
                f"Against the true labels, per window ({'accuracy' if classification else 'MAE'})",
                {
                    "candidate": _points(x, [lab.get(metric) for lab in labelled]),
                    "primary": _points(x, [lab.get(f"primary_{metric}") for lab in labelled]),
                },
            )
        )
    out.append(_verdict_chart(view.verdict_history.get(cand, []), t0))
    out.append(_slices(windows))
    out.append(
        f"<p class=note>x axis: seconds of event time since the first window read "
        f"({len(windows)} windows).</p>"
    )
    return "\n".join(o for o in out if o)


def _drift_chart(windows: list[dict[str, Any]], x: list[float]) -> str:
    """PSI of the features (and outputs) that drifted most; alarms as dots."""
    peak: dict[str, float] = {}
    for w in windows:
        for d in w.get("drift") or []:
            if d.get("psi") is not None and math.isfinite(d["psi"]):
                name = _drift_name(d)
                peak[name] = max(peak.get(name, 0.0), d["psi"])
    if not peak:
        return ""
    top = sorted(peak, key=lambda n: (-peak[n], n))[:DRIFT_FEATURES]
    series: dict[str, list[Point]] = {n: [] for n in top}
    alarms: list[Point] = []
    for xi, w in zip(x, windows, strict=True):
        for d in w.get("drift") or []:
            name = _drift_name(d)
            if name in series and d.get("psi") is not None and math.isfinite(d["psi"]):
                series[name].append((xi, d["psi"]))
                if d.get("alarm"):
                    alarms.append((xi, d["psi"]))
    title = f"Drift against the reference: PSI per window (the {len(top)} that drifted most)"
    return _chart(title, series, marks=alarms, mark_label="alarm")


def _drift_name(d: dict[str, Any]) -> str:
    return f"{d['feature']} (output)" if d.get("kind") == "output" else str(d["feature"])


def _verdict_chart(verdicts: list[dict[str, Any]], t0: int) -> str:
    """The confidence sequence on the mean paired loss difference, verdict by verdict."""
    rows = [v for v in verdicts if v.get("lower") is not None and v.get("upper") is not None]
    if not rows:
        return ""
    rows.sort(key=lambda v: v["window_end"])
    x = [(v["window_end"] - t0) / 1000 for v in rows]
    return _chart(
        "Promotion evidence: mean paired loss difference (candidate - primary) and its "
        "anytime-valid interval; below 0 favours the candidate",
        {
            "upper": _points(x, [v["upper"] for v in rows]),
            "estimate": _points(x, [v.get("estimate") for v in rows]),
            "lower": _points(x, [v["lower"] for v in rows]),
        },
        zero=True,
    ) + (f"<p>Latest decision: <b>{_e(rows[-1]['decision'])}</b>: {_e(rows[-1]['reason'])}</p>")


def _slices(windows: list[dict[str, Any]]) -> str:
    latest = next((w for w in reversed(windows) if w.get("slices")), None)
    if latest is None:
        return ""
    rows = [
        [
            s["slice"],
            s["requests"],
            s["pairs"],
            _fmt(s.get("mae") if s.get("mae") is not None else s.get("disagreement_rate")),
            _fmt(s.get("output_psi")),
        ]
        for s in latest["slices"]
    ]
    head = ["slice", "requests", "pairs", "MAE or disagreement", "output PSI"]
    return "<h3>Slices that disagree most, last window with slices</h3>" + _table(head, rows)


def _alerts(status: Status) -> str:
    alerts = status.view.alerts
    if not alerts:
        return "<h2>Alerts</h2><p>No alert transitions.</p>"
    items = "".join(f"<li><code>{_e(format_alert(a))}</code></li>" for a in alerts)
    firing = len(status.firing())
    return f"<h2>Alerts ({len(alerts)} transitions, {firing} firing now)</h2><ol>{items}</ol>"


# -- drawing -----------------------------------------------------------------------------


def _points(x: Sequence[float], y: Sequence[float | None]) -> list[Point]:
    """Pairs with a finite y (a window without pairs has no MAE: a gap, not a zero)."""
    return [
        (xi, float(yi))
        for xi, yi in zip(x, y, strict=True)
        if yi is not None and math.isfinite(float(yi))
    ]


def scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    """``v`` in ``[lo, hi]`` mapped onto ``[a, b]`` (the middle when the range is empty)."""
    if hi <= lo:
        return (a + b) / 2
    return a + (v - lo) / (hi - lo) * (b - a)


def _chart(
    title: str,
    series: dict[str, list[Point]],
    marks: Sequence[Point] = (),
    mark_label: str = "",
    zero: bool = False,
) -> str:
    drawn = {k: v for k, v in series.items() if v}
    if not drawn:
        return ""
    xs = [p[0] for pts in drawn.values() for p in pts]
    ys = [p[1] for pts in drawn.values() for p in pts] + ([0.0] if zero else [])
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad

    def px(x: float) -> float:
        return scale(x, x0, x1, LEFT, WIDTH - RIGHT)

    def py(y: float) -> float:
        return scale(y, y0, y1, HEIGHT - BOTTOM, TOP)

    parts = [
        f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{HEIGHT - TOP - BOTTOM}" fill="none" stroke="#ccc"/>'
    ]
    for v in (y0 + pad, (y0 + y1) / 2, y1 - pad):
        parts.append(
            f'<text x="{LEFT - 4}" y="{py(v) + 4:.1f}" text-anchor="end">{_tick(v)}</text>'
        )
    for v in (x0, x1):
        parts.append(
            f'<text x="{px(v):.1f}" y="{HEIGHT - 6}" text-anchor="middle">{_tick(v)} s</text>'
        )
    if zero and y0 < 0 < y1:
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{py(0):.1f}" y2="{py(0):.1f}" '
            'stroke="#888" stroke-dasharray="4 3"/>'
        )
    legend = []
    for i, (name, pts) in enumerate(drawn.items()):
        colour = COLOURS[i % len(COLOURS)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(
            f'<polyline class="series" data-name="{_e(name)}" points="{coords}" fill="none" '
            f'stroke="{colour}" stroke-width="1.5"/>'
        )
        legend.append(f'<span style="color:{colour}">&#9644; {_e(name)}</span>')
    for x, y in marks:
        parts.append(
            f'<circle class="mark" cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="#d62728"/>'
        )
    if marks:
        legend.append(f'<span style="color:#d62728">&#9679; {_e(mark_label)}</span>')
    svg = (
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{_e(title)}">{"".join(parts)}</svg>'
    )
    caption = f"<figcaption>{_e(title)}</figcaption>"
    return f"<figure>{caption}{svg}<div>{' '.join(legend)}</div></figure>"


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _tick(v: float) -> str:
    return f"{v:.3g}"


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
figure {{ margin: 1em 0; }}
figcaption {{ font-weight: 600; margin-bottom: 0.25em; }}
svg text {{ font-size: 11px; fill: #555; }}
figure div span {{ margin-right: 1em; font-size: 0.85em; }}
.note {{ color: #666; font-size: 0.85em; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
