"""Drift alarms on the real broker, through the joiner and the evaluator stages.

* Stationary traffic, 100,000 requests with 20 numeric features and a categorical one, a
  window every 10 s (the default) of 1,000 requests: at most one drift alert (issue 7, 4).
* One feature shifted by half a standard deviation from a window on: it alarms within two
  windows of the onset, and no other feature does.
* `understudy demo --events 30000`: a subscriber that reads ``<prefix>.alerts``,
  ``<prefix>.verdicts`` and ``<prefix>.control`` with Apache Avro's own decoder and the
  ``.avsc`` files (single-object encoding: ``C3 01``, the schema's CRC-64-AVRO fingerprint,
  the body) finds a FIRING drift alert, a PROMOTE verdict and the promotion after it.

Messages carry their event time as Kafka timestamp (as a tap stamps them), so 100,000
requests spread over 1,000 s of event time are believable to the joiner's time check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer
from support import apache_decoder, read_all, send, snapshots, stage, terminate, wait_for

from streams.config import Config
from streams.joiner import run_joiner
from streams.kafka import Topics, ensure_topics
from streams.schemas import default_codec

FEATURES = [f"f{i:02d}" for i in range(20)]
W = 10_000  # the default window


def produce(cfg: Config, n: int, per_window: int, seed: int, shift_at: int | None = None) -> int:
    """Requests, primary and candidate answers; returns the last event time."""
    ensure_topics(cfg)
    t = Topics(cfg.prefix)
    codec = default_codec()
    enc_req, enc_pred = codec.encoder("Request"), codec.encoder("Prediction")
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 1.0, (n, len(FEATURES)))
    if shift_at is not None:
        x[shift_at:, 3] += 0.5
    cities = rng.choice(["Paris", "Lyon", "Nice"], n, p=[0.5, 0.3, 0.2])
    regions = rng.choice(["eu", "us"], n)
    step = W // per_window
    # aligned to a window, ending about a minute ago
    base = (int(time.time() * 1000) - n * step - 60_000) // W * W
    p = Producer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "linger.ms": 20,
            "enable.idempotence": True,
            "compression.type": "lz4",
        }
    )
    for i in range(n):
        ts = base + i * step
        rid = f"r{i}"
        key = rid.encode()
        req = {
            "request_id": rid,
            "event_time": ts,
            "numeric_features": {f: float(v) for f, v in zip(FEATURES, x[i], strict=True)},
            "categorical_features": {"city": str(cities[i])},
            "context": {"region": str(regions[i])},
        }
        send(p, t.requests, enc_req(req), key, timestamp=ts)
        y = float(x[i, :5].sum())
        for mid, role, v in (("p@1", "PRIMARY", y), ("c@1", "CANDIDATE", y + 0.1)):
            pred = {"request_id": rid, "event_time": ts, "model_id": mid, "role": role,
                    "value": v, "latency_ms": 2.0}  # fmt: skip
            send(p, t.predictions, enc_pred(pred), key, timestamp=ts)
        if i % 5000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    return base + (n - 1) * step


def evaluate(cfg: Config, n: int, log: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run the joiner to the end of the input, then the evaluator until all is published."""
    run_joiner(cfg, idle_exit_s=4)
    proc = stage(cfg, "evaluator", log=log)
    try:

        def done() -> bool:
            last = [s for s in snapshots(cfg, idle_s=1.0) if s["scope"] == "CUMULATIVE"]
            return bool(last) and last[-1]["coverage"]["pairs"] >= n

        wait_for(done, 600, "the evaluator's final cumulative", [proc])
    finally:
        terminate(proc)
    codec = default_codec()
    alerts = [
        codec.decode_as("Alert", v) for _, v, _ in read_all(cfg, Topics(cfg.prefix).alerts) if v
    ]
    return snapshots(cfg, idle_s=1.0), alerts


def drift_alerts(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [a for a in alerts if a["rule"] in ("feature-drift", "output-drift")]


def test_stationary_100000_requests_raise_at_most_one_drift_alert(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    n = 100_000
    produce(cfg, n, per_window=1_000, seed=21)
    snaps, alerts = evaluate(cfg, n, tmp_path / "evaluator.log")
    windows = [s for s in snaps if s["scope"] == "WINDOW"]
    judged = [s for s in windows if s["drift"]]
    assert len(judged) >= 90, len(judged)  # all but the reference's windows (and edges)
    rows = [d for s in judged for d in s["drift"]]
    assert {d["feature"] for d in rows} >= {*FEATURES, "city", "primary", "candidate"}
    firing = [a for a in drift_alerts(alerts) if a["state"] == "FIRING"]
    assert len(firing) <= 1, firing


def test_a_shifted_feature_alarms_within_two_windows_and_no_other(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    per, onset = 1_000, 20
    last = produce(cfg, 40_000, per_window=per, seed=5, shift_at=onset * per)
    snaps, alerts = evaluate(cfg, 40_000, tmp_path / "evaluator.log")
    first = last - (40_000 - 1) * (W // per)  # the first event time: a window start
    onset_end = first + (onset + 1) * W  # the end of the first window with the shift
    firing = [a for a in alerts if a["rule"] == "feature-drift" and a["state"] == "FIRING"]
    assert {a["feature"] for a in firing} == {"f03"}, firing
    assert min(a["window_end"] for a in firing) <= onset_end + W  # onset window or the next
    window = next(s for s in snaps if s["scope"] == "WINDOW" and s["window_end"] == onset_end + W)
    assert {d["feature"] for d in window["drift"] if d["alarm"]} <= {"f03", "primary", "candidate"}


@pytest.mark.timeout(900)
def test_a_subscriber_with_its_own_avro_decoder_sees_the_demos_alert_verdict_and_promotion(
    kafka_bootstrap: str, prefix: str
) -> None:
    """After ``understudy demo --events 30000`` (issue 7's alert, issue 8's promotion): an
    outside subscriber decoding with Apache avro and the .avsc files finds a FIRING drift
    alert, a PROMOTE verdict, and the Control event that followed it, naming that verdict's
    comparison; and the demo's --json line of the promoted candidate carries both."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "demo",
            "--events",
            "30000",
            "--rate",
            "1000",
            "--json",
            "--prefix",
            prefix,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=800,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    decode = apache_decoder("Alert")
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix)
    seen = [decode(v) for _, v, _ in read_all(cfg, f"{prefix}.alerts") if v]
    firing = [a for a in seen if a["state"] == "FIRING" and a["rule"] == "feature-drift"]
    assert firing, seen
    assert {a["feature"] for a in firing} <= {
        "sqft", "bedrooms", "bathrooms", "distance_km", "lot_size", "region", "property_type"
    }  # fmt: skip
    assert all(a["candidate"] == "*" and a["metric"] == "drift.alarm" for a in firing)
    verdicts = [apache_decoder("Verdict")(v) for _, v, _ in read_all(cfg, f"{prefix}.verdicts")]
    promote = [v for v in verdicts if v["decision"] == "PROMOTE"]
    assert promote, {v["decision"] for v in verdicts}
    assert all(v["upper"] < 0 and v["n"] > 0 for v in promote)
    controls = [apache_decoder("Control")(v) for _, v, _ in read_all(cfg, f"{prefix}.control")]
    # one promotion: the tree over the decayed linear model. A second one (ridge, a refit of
    # the linear model, over the tree) came once from pairs scored against the old primary
    # counted against the new one (docs/verdicts.md, section 5)
    assert [(c["action"], c["candidate"], c["comparison"]) for c in controls] == [
        ("PROMOTE", promote[0]["candidate"], promote[0]["comparison"])
    ]
    assert {v["comparison"] for v in promote} == {promote[0]["comparison"]}
    assert controls[0]["time"] >= promote[0]["emitted_at"]
    lines = [json.loads(x) for x in done.stdout.decode().splitlines() if x.strip()]
    promoted = next(x for x in lines if x["candidate"] == promote[0]["candidate"])
    assert promoted["promotion"]["candidate"] == promote[0]["candidate"]
    assert promoted["promotion"]["verdict"]["decision"] == "PROMOTE"
