"""A classifier with class scores, end to end: the joiner pairs it and scores its labels.

A classifier's prediction carries its class and its class scores (``predict_proba``); the
scores are what its log-loss is computed from once the true class comes. Every stage must
take such answers: here a primary and a candidate classifier answer 1,200 requests, their
true classes come as labels, and the evaluator's cumulative snapshot must count every pair
(no dead letter) and give the disagreement rate, accuracy and log-loss numpy gives on the
same answers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer
from support import (
    final_cumulative,
    pipeline_cfg,
    recent_base,
    send,
    snapshots,
    stage,
    terminate,
    wait_for,
)

from streams.kafka import Topics, ensure_topics
from streams.metrics.labelled import LOG_LOSS_FLOOR
from streams.schemas import default_codec

N = 1_200
CLASSES = ("cheap", "fair", "dear")


def probabilities(rng: np.random.Generator, n: int) -> np.ndarray:
    """Class scores that sum to 1 per request, as ``predict_proba`` gives them."""
    raw = rng.gamma(1.0, 1.0, (n, len(CLASSES)))
    return raw / raw.sum(axis=1, keepdims=True)


def test_a_classifier_with_class_scores_is_paired_and_scored(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    cfg = pipeline_cfg(kafka_bootstrap, prefix)
    ensure_topics(cfg)
    t = Topics(cfg.prefix)
    codec = default_codec()
    enc_req, enc_pred, enc_label = (codec.encoder(n) for n in ("Request", "Prediction", "Label"))
    rng = np.random.default_rng(21)
    prim_p, cand_p = probabilities(rng, N), probabilities(rng, N)
    prim = prim_p.argmax(axis=1)
    cand = cand_p.argmax(axis=1)
    truth = rng.integers(0, len(CLASSES), N)
    base = recent_base(N)
    p = Producer({"bootstrap.servers": cfg.bootstrap_servers, "partitioner": "murmur2_random"})
    for i in range(N):
        rid, ts = f"req-{i}", base + 10 * i
        key = rid.encode()
        send(p, t.requests, enc_req({"request_id": rid, "event_time": ts}), key)
        for mid, role, probs, top in (
            ("prim@1", "PRIMARY", prim_p[i], prim[i]),
            ("cls@2", "CANDIDATE", cand_p[i], cand[i]),
        ):
            record: dict[str, Any] = {
                "request_id": rid,
                "event_time": ts,
                "model_id": mid,
                "role": role,
                "label": CLASSES[top],
                "scores": dict(zip(CLASSES, map(float, probs), strict=True)),
                "latency_ms": 1.0,
            }
            send(p, t.predictions, enc_pred(record), key)
        label = {"request_id": rid, "event_time": ts, "label": CLASSES[truth[i]]}
        send(p, t.labels, enc_label(label), key)
    assert p.flush(60) == 0

    evaluator = stage(cfg, "evaluator", log=tmp_path / "evaluator.log")
    joiner = stage(cfg, "joiner", log=tmp_path / "joiner.log")

    def labelled() -> dict[str, Any] | None:
        last = final_cumulative(cfg, N, 1)
        s = (last or {}).get("cls@2")
        return s if s and (s.get("labelled") or {}).get("class_n") == N else None

    try:
        snap = wait_for(
            labelled, timeout=180, what="every pair joined and labelled", procs=[evaluator, joiner]
        )
    finally:
        terminate(joiner)
        terminate(evaluator)
    cov = snap["coverage"]
    assert cov["pairs"] == N and cov["dead_letters"] == 0, cov
    assert cov["invalid"] == 0
    assert snap["disagreement_rate"] == pytest.approx(float(np.mean(prim != cand)), rel=1e-12)
    lab = snap["labelled"]
    assert lab["accuracy"] == pytest.approx(float(np.mean(cand == truth)), rel=1e-12)
    assert lab["primary_accuracy"] == pytest.approx(float(np.mean(prim == truth)), rel=1e-12)

    def log_loss(probs: np.ndarray) -> float:
        p_true = np.maximum(probs[np.arange(N), truth], LOG_LOSS_FLOOR)
        return float(np.mean(-np.log(p_true)))

    assert lab["log_loss"] == pytest.approx(log_loss(cand_p), rel=1e-9)
    assert lab["primary_log_loss"] == pytest.approx(log_loss(prim_p), rel=1e-9)
    assert math.isfinite(lab["log_loss"])
    # nothing of it went to the dead-letter topic either
    assert not [s for s in snapshots(cfg, idle_s=0.5) if s["coverage"]["dead_letters"]]
