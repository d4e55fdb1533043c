"""``understudy report``'s page, drawn from a reading with history (no broker: the reading
is built here as ``read_status`` would return it)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any

import pytest

from streams.report import DRIFT_FEATURES, HEIGHT, render_report, scale
from streams.status import Status

T0 = 1_800_000_000_000
VOID = {"meta", "br", "rect", "polyline", "circle", "line", "hr", "img"}


def snapshot(cand: str, i: int, mae: float | None, drift: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "candidate": cand,
        "primary": "prim@1",
        "scope": "WINDOW",
        "task": "regression",
        "window_start": T0 + i * 1000,
        "window_end": T0 + (i + 1) * 1000,
        "coverage": {"requests": 10, "pairs": 10},
        "mae": mae,
        "candidate_latency_p99": 5.0 + i,
        "primary_latency_p99": 4.0,
        "candidate_error_rate": 0.0,
        "disagreement_rate": None,
        "drift": drift,
        "slices": [{"slice": "region=eu", "requests": 4, "pairs": 4, "mae": 1.5}],
        "labelled": None,
    }


def drift_row(feature: str, psi: float, alarm: bool = False) -> dict[str, Any]:
    return {"feature": feature, "kind": "numeric", "psi": psi, "alarm": alarm}


def reading(cand: str, maes: list[float | None], verdicts: list[dict[str, Any]]) -> Status:
    windows = []
    for i, mae in enumerate(maes):
        drift = [drift_row(f"f{j}", 0.01 * j * (i + 1)) for j in range(10)]
        drift.append(drift_row("price", 0.5 * i, alarm=i >= 3))
        windows.append(snapshot(cand, i, mae, drift))
    cumulative = {
        **windows[-1],
        "scope": "CUMULATIVE",
        "coverage": {"requests": 50, "pairs": 49},
        "mae": 2.5,
        "labelled": {"n": 0},
    }
    view = SimpleNamespace(
        cumulative={cand: cumulative},
        window_history={cand: windows},
        verdict_history={cand: verdicts},
        verdicts={cand: verdicts[-1]} if verdicts else {},
        alerts=[],
    )
    return Status("shop", view, {"worker": 0, "joiner": None}, True)  # type: ignore[arg-type]


def verdict(i: int, lower: float, upper: float, decision: str = "CONTINUE") -> dict[str, Any]:
    return {
        "window_end": T0 + (i + 1) * 1000,
        "lower": lower,
        "upper": upper,
        "estimate": (lower + upper) / 2,
        "decision": decision,
        "reason": "interval straddles 0",
    }


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.polylines: list[dict[str, str]] = []
        self.marks = 0
        self.bad: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "polyline":
            self.polylines.append(a)
        if tag == "circle" and a.get("class") == "mark":
            self.marks += 1
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if not self.open or self.open.pop() != tag:
            self.bad.append(tag)


def parse(page: str) -> Tags:
    tags = Tags()
    tags.feed(page)
    assert not tags.bad and not tags.open, (tags.bad, tags.open)
    return tags


def points(polyline: dict[str, str]) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (p.split(",") for p in polyline["points"].split())]


def test_each_chart_draws_the_windows_that_have_the_figure_in_order() -> None:
    page = render_report(reading("cand@2", [1.0, 2.0, None, 4.0, 3.0], [verdict(4, -1, 2)]))
    tags = parse(page)
    mae = next(p for p in tags.polylines if p["data-name"] == "MAE")
    xy = points(mae)
    assert len(xy) == 4  # the window without pairs is a gap, not a zero
    assert [x for x, _ in xy] == sorted(x for x, _ in xy)
    ys = [y for _, y in xy]  # SVG's y grows downwards: the largest MAE is highest
    assert ys.index(min(ys)) == 2 and ys.index(max(ys)) == 0
    assert all(0 <= y <= HEIGHT for y in ys)
    assert "<td>cand@2</td><td>prim@1</td><td>50</td><td>49</td><td>2.5</td>" in page


def test_the_drift_chart_shows_the_features_that_drifted_most_and_the_alarms() -> None:
    page = render_report(reading("cand@2", [1.0, 2.0, 3.0, 4.0, 5.0], []))
    tags = parse(page)
    names = [p["data-name"] for p in tags.polylines]
    drift = names[names.index("candidate") + 2 :]  # after the latency chart's two series
    assert drift[0] == "price" and len(drift) == DRIFT_FEATURES
    assert drift[1:] == ["f9", "f8", "f7", "f6", "f5"]
    assert tags.marks == 2  # windows 3 and 4 alarmed on price


def test_the_verdict_chart_has_its_interval_and_the_zero_line() -> None:
    verdicts = [verdict(i, -1.0 - i, 1.0 - 0.6 * i) for i in range(5)]
    verdicts[-1]["decision"] = "PROMOTE"
    page = render_report(reading("cand@2", [1.0] * 5, verdicts))
    names = [p["data-name"] for p in parse(page).polylines]
    assert names[-3:] == ["upper", "estimate", "lower"]
    assert 'stroke-dasharray="4 3"' in page  # the interval crosses 0 at first
    assert "Latest decision: <b>PROMOTE</b>" in page


def test_names_from_the_topics_are_escaped() -> None:
    page = render_report(reading("<script>alert(1)</script>@1", [1.0, 2.0], []))
    parse(page)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;@1" in page


def test_a_deployment_without_snapshots_still_gets_a_page() -> None:
    view = SimpleNamespace(
        cumulative={}, window_history={}, verdict_history={}, verdicts={}, alerts=[]
    )
    page = render_report(Status("shop", view, {"worker": None}, False))  # type: ignore[arg-type]
    parse(page)
    assert "No metric snapshots on <code>shop.metrics</code> yet." in page
    assert "The topics were not all read to their end." in page
    assert not re.search(r"<svg", page)


@pytest.mark.parametrize(
    ("v", "lo", "hi", "expected"), [(0, 0, 10, 100), (10, 0, 10, 200), (5, 5, 5, 150)]
)
def test_scale_maps_a_range_onto_another(v: float, lo: float, hi: float, expected: float) -> None:
    assert scale(v, lo, hi, 100, 200) == expected
