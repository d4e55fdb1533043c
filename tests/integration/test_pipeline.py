"""The whole flow on a real broker: tap -> worker -> joiner -> evaluator -> metrics."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from support import (
    apache_decoder,
    final_cumulative,
    java_records,
    read_all,
    stage,
    terminate,
    wait_for,
)

from streams.config import Config
from streams.demo_models import CANDIDATE_SPECS, PRIMARY_ID
from streams.joiner import run_joiner
from streams.kafka import Topics, ensure_topics
from streams.models import load_candidate
from streams.schemas import default_codec
from streams.simulation import run_service
from streams.worker import run_worker

N = 5000
CANDIDATES = tuple(spec.split("=", 1)[0] for spec in CANDIDATE_SPECS)


@pytest.fixture
def cfg(kafka_bootstrap: str, prefix: str) -> Config:
    c = Config(
        bootstrap_servers=kafka_bootstrap,
        prefix=prefix,
        window_ms=2000,
        lateness_ms=1000,
        idle_flush_ms=1500,
    )
    ensure_topics(c)
    return c


def test_5000_requests_through_the_tap_give_exact_disagreement(cfg: Config, tmp_path: Path) -> None:
    service = run_service(cfg, events=N, rate=0)
    assert service.requests == N
    assert service.dropped == 0 and service.failed == 0

    evaluator = stage(cfg, "evaluator", log=tmp_path / "evaluator.log")
    stop = threading.Event()
    candidates = [load_candidate(spec) for spec in CANDIDATE_SPECS]
    worker = threading.Thread(
        target=run_worker, args=(cfg, candidates), kwargs={"stop": stop}, daemon=True
    )
    joiner = threading.Thread(target=run_joiner, args=(cfg,), kwargs={"stop": stop}, daemon=True)
    worker.start()
    joiner.start()
    try:
        final = wait_for(
            lambda: final_cumulative(cfg, N, len(CANDIDATES)),
            timeout=240,
            what="final cumulative snapshots",
            procs=[evaluator],
        )
    finally:
        stop.set()
        worker.join(60)
        joiner.join(60)
        terminate(evaluator)

    # the reference: numpy over the very predictions on the topic, joined by request id
    codec = default_codec()
    by_model: dict[str, dict[str, float]] = {}
    for _, value, _ in read_all(cfg, Topics(cfg.prefix).predictions):
        rec = codec.decode_as("Prediction", value)
        by_model.setdefault(rec["model_id"], {})[rec["request_id"]] = rec["value"]
    primary = by_model[PRIMARY_ID]
    assert len(primary) == N
    for cand in CANDIDATES:
        snap = final[cand]
        assert snap["coverage"]["pairs"] == N
        assert snap["coverage"]["requests"] == N
        assert snap["coverage"]["duplicates"] == 0
        ids = sorted(primary)
        assert sorted(by_model[cand]) == ids
        d = np.array([by_model[cand][i] for i in ids]) - np.array([primary[i] for i in ids])
        assert snap["mae"] == pytest.approx(np.mean(np.abs(d)), rel=1e-9)
        assert snap["rmse"] == pytest.approx(np.sqrt(np.mean(d * d)), rel=1e-9)
        assert snap["mean_signed_diff"] == pytest.approx(np.mean(d), rel=1e-9)
        assert snap["primary"] == PRIMARY_ID
        assert snap["candidate_latency_p50"] is not None

    # An outside Java subscriber (Apache Kafka's own consumer, read_committed) reads every
    # public topic record for record as we do, and Apache avro decodes each value it read.
    t = Topics(cfg.prefix)
    public = {
        t.requests: "Request",
        t.predictions: "Prediction",
        t.partials: "Partial",
        t.metrics: "MetricSnapshot",
        t.verdicts: "Verdict",
        t.tap_stats: "TapStats",
    }
    java = java_records(cfg.bootstrap_servers, list(public), tmp_path)
    for topic, name in public.items():
        ours = sorted(
            ((p, k, v) for k, v, p in read_all(cfg, topic, idle_s=1.0)), key=lambda r: r[0]
        )
        theirs = [(p, k, v) for p, _, k, v in java[topic]]
        assert theirs, topic
        assert theirs == ours, f"{topic}: Java read {len(theirs)}, confluent-kafka {len(ours)}"
        decode = apache_decoder(name)
        for _, _, value in theirs:
            assert value is not None
            decode(value)
    assert len(java[t.requests]) == N
