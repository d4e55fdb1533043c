"""``understudy exporter``: the published figures as Prometheus metrics, for dashboards and
the alerting a team already runs.

Why: many teams watch services through Prometheus and Grafana, not Kafka topics. The
exporter follows the deployment's public topics (as ``status`` reads them: committed
records only, the last ``METRICS_TAIL`` snapshots of each metrics partition to start) and
serves each candidate's latest figures at ``/metrics`` in the Prometheus text format
(version 0.0.4). It joins no stage's group and commits nothing, so any number can run.

What is exported (labels ``candidate`` and ``primary`` on each, and more where named):

* ``understudy_coverage_total{kind}``: the cumulative counts (requests, pairs, duplicates,
  dead letters, labels, ...), the candidate's since it was first seen, across promotions
  (only its losses against the labels start again with a new primary, docs/labels.md).
* ``understudy_mae``, ``understudy_rmse``, ``understudy_mean_signed_diff``,
  ``understudy_disagreement_rate``: disagreement with the primary, since the start.
* ``understudy_latency_ms{model,quantile}``, ``understudy_error_rate{model}``.
* ``understudy_labelled_mae{model}``, ``understudy_labelled_accuracy{model}``.
* ``understudy_verdict{decision}``: 1 for the current decision, 0 for the other two;
  ``understudy_verdict_bound{bound}``: the confidence sequence (lower, estimate, upper).
* ``understudy_drift_psi{feature,kind}``, ``understudy_drift_alarm{feature,kind}``: the
  latest window with traffic.
* ``understudy_alert_firing{rule,feature,severity}``: 1 while the alert's latest
  transition is FIRING, else 0.
* ``understudy_window_end_seconds``: the event time of the latest window, to alert on a
  deployment that stopped publishing.

A figure the topics do not have yet (no labels, no pairs) is left out, not exported as 0.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from streams.alerts.follow import latest_by_alert
from streams.config import Config
from streams.kafka import Topics
from streams.status import assign_tail
from streams.view import MetricsView

__all__ = ["Exporter", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DECISIONS = ("PROMOTE", "REJECT", "CONTINUE")
MAX_TRANSITIONS = 10_000
"""Alert transitions kept before they are cut to each alert's latest (a long-running
exporter would otherwise keep every transition it ever read)."""
QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))

Sample = tuple[dict[str, str], float]


def render_metrics(view: MetricsView, snapshots_read: int = 0) -> str:
    """The text exposition of what ``view`` holds now."""
    families: dict[str, tuple[str, str, list[Sample]]] = {}

    def add(name: str, kind: str, doc: str, labels: dict[str, str], value: Any) -> None:
        if value is None:
            return
        v = float(value)
        if math.isnan(v):
            return
        families.setdefault(name, (kind, doc, []))[2].append((labels, v))

    for cand in sorted(view.cumulative):
        r = view.cumulative[cand]
        base = {"candidate": cand, "primary": str(r.get("primary", ""))}
        for kind, n in sorted(r["coverage"].items()):
            add(
                "understudy_coverage_total",
                "counter",
                "Cumulative counts of the comparison (requests, pairs, duplicates, ...).",
                {**base, "kind": kind},
                n,
            )
        for field, doc in (
            ("mae", "Mean absolute difference from the primary's outputs."),
            ("rmse", "Root mean squared difference from the primary's outputs."),
            ("mean_signed_diff", "Mean signed difference (candidate - primary)."),
            ("disagreement_rate", "Share of requests where the classes differ."),
        ):
            add(f"understudy_{field}", "gauge", doc, base, r.get(field))
        for model in ("candidate", "primary"):
            for q, p in QUANTILES:
                add(
                    "understudy_latency_ms",
                    "gauge",
                    "Latency quantiles, one request called alone, in ms.",
                    {**base, "model": model, "quantile": q},
                    r.get(f"{model}_latency_{p}"),
                )
            add(
                "understudy_error_rate",
                "gauge",
                "Share of predictions that failed.",
                {**base, "model": model},
                r.get(f"{model}_error_rate"),
            )
        lab = r.get("labelled") or {}
        for model, prefix in (("candidate", ""), ("primary", "primary_")):
            for metric in ("mae", "accuracy"):
                add(
                    f"understudy_labelled_{metric}",
                    "gauge",
                    f"{metric.upper() if metric == 'mae' else 'Accuracy'} against the labels.",
                    {**base, "model": model},
                    lab.get(f"{prefix}{metric}"),
                )
        v = view.verdicts.get(cand)
        if v is not None:
            for decision in DECISIONS:
                add(
                    "understudy_verdict",
                    "gauge",
                    "1 for the candidate's current decision, 0 for the others.",
                    {**base, "decision": decision},
                    1.0 if v["decision"] == decision else 0.0,
                )
            for bound in ("lower", "estimate", "upper"):
                add(
                    "understudy_verdict_bound",
                    "gauge",
                    "Confidence sequence on the mean paired loss difference (candidate - "
                    "primary); below 0 favours the candidate.",
                    {**base, "bound": bound},
                    v.get(bound),
                )
        w = view.window.get(cand)
        if w is not None:
            add(
                "understudy_window_end_seconds",
                "gauge",
                "Event time of the end of the latest window published, in s.",
                base,
                w["window_end"] / 1000,
            )
            for d in w.get("drift") or []:
                labels = {**base, "feature": str(d["feature"]), "kind": str(d["kind"])}
                add(
                    "understudy_drift_psi",
                    "gauge",
                    "PSI of the latest window against the reference.",
                    labels,
                    d.get("psi"),
                )
                if d.get("alarm") is not None:
                    add(
                        "understudy_drift_alarm",
                        "gauge",
                        "1 when the drift rule alarms on the latest window.",
                        labels,
                        1.0 if d["alarm"] else 0.0,
                    )
    for (rule, cand, feature), a in sorted(latest_by_alert(view.alerts).items()):
        add(
            "understudy_alert_firing",
            "gauge",
            "1 while the alert's latest transition is FIRING, else 0.",
            {"rule": rule, "candidate": cand, "feature": feature, "severity": a["severity"]},
            1.0 if a["state"] == "FIRING" else 0.0,
        )
    add(
        "understudy_exporter_snapshots_read_total",
        "counter",
        "Metric snapshots this exporter has read from the topics.",
        {},
        snapshots_read,
    )
    return "".join(_family(n, *families[n]) for n in sorted(families))


def _family(name: str, kind: str, doc: str, samples: Iterable[Sample]) -> str:
    lines = [f"# HELP {name} {doc}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        body = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{body}}} {_value(value)}" if body else f"{name} {_value(value)}")
    return "\n".join(lines) + "\n"


def _label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def latest_transitions(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each alert's latest transition (by rule, candidate and feature), in arrival order:
    all the page shows of an alert, so a long-running exporter keeps no more."""
    latest = latest_by_alert(alerts)
    return [a for a in alerts if latest[(a["rule"], a["candidate"], a["feature"])] is a]


class Exporter:
    """Follows the topics on one thread, serves ``/metrics`` from another."""

    def __init__(self, cfg: Config, host: str = "0.0.0.0", port: int = 9464) -> None:
        self.view = MetricsView(cfg, role="exporter", follow=False)
        assign_tail(self.view, Topics(cfg.prefix))
        self._lock = threading.Lock()
        self.snapshots_read = 0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "the metrics are at /metrics")
                    return
                with exporter._lock:
                    body = render_metrics(exporter.view, exporter.snapshots_read).encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every few seconds is not news

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def run(self, stop: threading.Event) -> None:
        """Serve and follow until ``stop`` is set."""
        serving = threading.Thread(target=self.server.serve_forever, daemon=True)
        serving.start()
        try:
            while not stop.is_set():
                with self._lock:  # a scrape waits for this poll, never for a long one
                    n = self.view.poll(0.0)
                    self.snapshots_read += n
                    if len(self.view.alerts) > MAX_TRANSITIONS:
                        self.view.alerts = latest_transitions(self.view.alerts)
                if not n:
                    stop.wait(0.2)
        finally:
            self.server.shutdown()
            self.server.server_close()
            self.view.close()
