"""The exporter's page, read back with Prometheus' own Python parser (prometheus-client),
from a view built here as the topics would fill it (no broker)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streams.exporter import latest_transitions, render_metrics


def view(**extra: Any) -> Any:
    cumulative = {
        "candidate": 'odd"name\\@1',
        "primary": "prim@1",
        "coverage": {"requests": 2000, "pairs": 1990, "duplicates": 3},
        "mae": 12.5,
        "rmse": 15.0,
        "mean_signed_diff": -1.25,
        "disagreement_rate": None,  # a regression: no classes to disagree on
        "candidate_latency_p50": 1.0,
        "candidate_latency_p95": 2.0,
        "candidate_latency_p99": 3.0,
        "primary_latency_p50": 0.5,
        "primary_latency_p95": None,
        "primary_latency_p99": math.nan,
        "candidate_error_rate": 0.01,
        "primary_error_rate": 0.0,
        "labelled": {"mae": 9.0, "primary_mae": 11.0, "accuracy": None},
    }
    window = {
        "window_end": 1_800_000_010_000,
        "drift": [
            {"feature": "sqft", "kind": "numeric", "psi": 0.4, "alarm": True},
            {"feature": "region", "kind": "categorical", "psi": None, "alarm": False},
        ],
    }
    base = {
        "cumulative": {'odd"name\\@1': cumulative},
        "window": {'odd"name\\@1': window},
        "verdicts": {
            'odd"name\\@1': {"decision": "PROMOTE", "lower": -3.0, "estimate": -2.0, "upper": -1.0}
        },
        "alerts": [
            {
                "rule": "drift",
                "candidate": "*",
                "feature": "sqft",
                "severity": "warn",
                "state": "FIRING",
            },
            {
                "rule": "p99",
                "candidate": "c@1",
                "feature": "",
                "severity": "page",
                "state": "FIRING",
            },
            {
                "rule": "p99",
                "candidate": "c@1",
                "feature": "",
                "severity": "page",
                "state": "RESOLVED",
            },
        ],
    }
    return SimpleNamespace(**{**base, **extra})


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


CAND = {"candidate": 'odd"name\\@1', "primary": "prim@1"}


def test_every_figure_is_read_back_by_prometheus_parser_with_its_labels() -> None:
    got = samples(render_metrics(view(), snapshots_read=42))
    assert got[key("understudy_coverage_total", kind="requests", **CAND)] == 2000
    assert got[key("understudy_coverage_total", kind="pairs", **CAND)] == 1990
    assert got[key("understudy_mae", **CAND)] == 12.5
    assert got[key("understudy_mean_signed_diff", **CAND)] == -1.25
    assert got[key("understudy_latency_ms", model="candidate", quantile="0.99", **CAND)] == 3.0
    assert got[key("understudy_error_rate", model="candidate", **CAND)] == 0.01
    assert got[key("understudy_labelled_mae", model="primary", **CAND)] == 11.0
    assert got[key("understudy_verdict", decision="PROMOTE", **CAND)] == 1
    assert got[key("understudy_verdict", decision="REJECT", **CAND)] == 0
    assert got[key("understudy_verdict_bound", bound="upper", **CAND)] == -1.0
    assert got[key("understudy_drift_psi", feature="sqft", kind="numeric", **CAND)] == 0.4
    assert got[key("understudy_drift_alarm", feature="region", kind="categorical", **CAND)] == 0
    assert got[key("understudy_window_end_seconds", **CAND)] == 1_800_000_010.0
    firing = {"rule": "drift", "candidate": "*", "feature": "sqft", "severity": "warn"}
    assert got[key("understudy_alert_firing", **firing)] == 1
    resolved = {"rule": "p99", "candidate": "c@1", "feature": "", "severity": "page"}
    assert got[key("understudy_alert_firing", **resolved)] == 0  # its latest transition
    assert got[key("understudy_exporter_snapshots_read_total")] == 42


def test_a_figure_the_topics_do_not_have_is_left_out_not_zero() -> None:
    got = samples(render_metrics(view()))
    names = {name for name, _ in got}
    assert "understudy_disagreement_rate" not in names
    assert key("understudy_latency_ms", model="primary", quantile="0.95", **CAND) not in got
    assert key("understudy_latency_ms", model="primary", quantile="0.99", **CAND) not in got
    assert key("understudy_labelled_accuracy", model="candidate", **CAND) not in got
    assert key("understudy_drift_psi", feature="region", kind="categorical", **CAND) not in got


def test_nothing_published_yet_is_a_valid_page() -> None:
    empty = view(cumulative={}, window={}, verdicts={}, alerts=[])
    got = samples(render_metrics(empty))
    assert got == {key("understudy_exporter_snapshots_read_total"): 0}


def test_each_family_has_one_help_and_type_line() -> None:
    lines = render_metrics(view()).splitlines()
    types = [line.split()[2] for line in lines if line.startswith("# TYPE ")]
    helps = [line.split()[2] for line in lines if line.startswith("# HELP ")]
    assert len(types) == len(set(types)) == len(helps)
    assert set(types) == set(helps)


def test_cutting_the_transitions_to_each_alerts_latest_changes_no_metric() -> None:
    flapping = [
        {
            "rule": "p99",
            "candidate": f"c{i % 3}@1",
            "feature": "",
            "severity": "page",
            "state": "FIRING" if i % 2 else "RESOLVED",
        }
        for i in range(101)
    ]
    full = view(alerts=flapping)
    cut = latest_transitions(flapping)
    assert len(cut) == 3
    assert [a["candidate"] for a in cut] == ["c2@1", "c0@1", "c1@1"]  # latest last
    assert render_metrics(view(alerts=cut)) == render_metrics(full)


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/understudy.json"


def test_the_grafana_dashboard_queries_only_what_the_exporter_serves() -> None:
    """Every metric the dashboard's queries name is a family on the exporter's page, and
    every label they match on is one its samples carry: a renamed metric or label breaks
    this test, not a dashboard nobody looks at until an incident."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs.append(dash["templating"]["list"][0]["query"]["query"])
    full = view()  # with the classification figures too: every family on the page
    for figures in full.cumulative.values():
        figures["disagreement_rate"] = 0.1
        figures["labelled"]["accuracy"] = 0.9
    page = samples(render_metrics(full))
    labels_of: dict[str, set[str]] = {}
    for name, labels in page:
        labels_of.setdefault(re.sub(r"_total$", "", name), set()).update(k for k, _ in labels)
    used = 0
    for expr in exprs:
        for metric, selector in re.findall(r"\b(understudy_[a-z_]+)(\{[^}]*\})?", expr):
            family = re.sub(r"_total$", "", metric)
            assert family in labels_of, (metric, expr)
            for label in re.findall(r"(\w+)\s*(?:=~|!=|=)", selector or ""):
                assert label in labels_of[family], (metric, label, expr)
            used += 1
    assert used >= 12
    # the panels' data source is the one Grafana is provisioned with
    source = (DASHBOARD.parents[1] / "provisioning/datasources/prometheus.yml").read_text()
    uids = {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert uids == {"understudy-prometheus"}
    assert "uid: understudy-prometheus" in source
