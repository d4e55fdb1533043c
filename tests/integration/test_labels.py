"""Ground truth on the real broker: labels 0 to 60 s after their requests, some while their
joins are open and most after they finished (scored against the answers the joiner kept),
give every model's loss equal to numpy's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer
from support import (
    final_cumulative,
    pipeline_cfg,
    produce_dataset,
    send,
    snapshots,
    stage,
    terminate,
    wait_for,
)

from streams.config import Config
from streams.kafka import Topics
from streams.schemas import default_codec

N = 2_000  # 20 s of requests: under the join TTL, so no join ends before the data does


def produce_labels(
    cfg: Config,
    labels: list[tuple[str, float]],
    *,
    partition: int | None = None,
    times: list[int] | None = None,
) -> None:
    """Labels stamped ``times`` (default: now): truth that becomes known after its
    requests were answered."""
    # the requests' partitioner (produce_dataset's, Java's default): a label must land in its
    # request's partition, or its joiner partition never saw the request
    p = Producer(
        {
            "bootstrap.servers": cfg.bootstrap_servers,
            "linger.ms": 20,
            "partitioner": "murmur2_random",
        }
    )
    enc = default_codec().encoder("Label")
    topic = Topics(cfg.prefix).labels
    for i, (rid, value) in enumerate(labels):
        now = int(time.time() * 1000) if times is None else times[i]
        kw: dict[str, Any] = {} if partition is None else {"partition": partition}
        send(
            p,
            topic,
            enc({"request_id": rid, "event_time": now, "value": value}),
            rid.encode(),
            **kw,
        )
    assert p.flush(60) == 0


def cumulative(cfg: Config) -> dict[str, dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}
    for s in snapshots(cfg, idle_s=1.0):
        if s["scope"] == "CUMULATIVE":
            last[s["candidate"]] = s
    return last


def test_late_labels_give_each_models_loss_equal_to_numpys(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    cfg = pipeline_cfg(kafka_bootstrap, prefix)
    data = produce_dataset(cfg, N)
    sent_at = [int(t) for t in data["t"]]
    rng = np.random.default_rng(11)
    truth = data["prim"] + rng.normal(0.0, 20.0, N)
    label_at = [sent_at[i] + int(d) for i, d in enumerate(rng.uniform(0, 60_000, N))]
    # one label per partition before the traffic is read: from then on each partition keeps
    # its finished joins' answers for labels to come (a service that never labels pays nothing)
    for part in range(cfg.partitions):
        produce_labels(cfg, [(f"warm-up-{part}", 0.0)], partition=part)
    # labels that come within 8 s of their request are there while the join is open
    soon = [i for i in range(N) if label_at[i] - sent_at[i] < 8_000]
    produce_labels(
        cfg, [(f"req-{i}", float(truth[i])) for i in soon], times=[label_at[i] for i in soon]
    )
    evaluator = stage(cfg, "evaluator", log=tmp_path / "evaluator.log")
    joiner = stage(cfg, "joiner", log=tmp_path / "joiner.log")
    try:
        # the others only after every join finished (the idle flush ended them)
        wait_for(
            lambda: (
                (f := final_cumulative(cfg, N - N // 50, 2))
                and all(s["conservation"]["terms"]["pending"] == 0 for s in f.values())
            ),
            timeout=180,
            what="every join finished",
            procs=[evaluator, joiner],
        )
        later = sorted(set(range(N)) - set(soon))
        produce_labels(
            cfg, [(f"req-{i}", float(truth[i])) for i in later], times=[label_at[i] for i in later]
        )
        expected = {"c1@1": N, "c2@1": N - N // 50}  # c2 skipped every 50th request

        def labelled() -> dict[str, dict[str, Any]] | None:
            last = cumulative(cfg)
            got = {c: (last.get(c) or {}).get("labelled") or {} for c in expected}
            return got if all(got[c].get("n") == n for c, n in expected.items()) else None

        got = wait_for(labelled, timeout=120, what="every label scored", procs=[evaluator, joiner])
    finally:
        terminate(joiner)
        terminate(evaluator)
    for cand, key in (("c1@1", "c1"), ("c2@1", "c2")):
        rows = np.arange(N) if cand == "c1@1" else np.array([i for i in range(N) if i % 50])
        err = np.abs(data[key][rows] - truth[rows])
        prim_err = np.abs(data["prim"][rows] - truth[rows])
        s = got[cand]
        assert s["mae"] == pytest.approx(err.mean(), rel=1e-9)
        assert s["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-9)
        assert s["primary_mae"] == pytest.approx(prim_err.mean(), rel=1e-9)
        assert s["diff_n"] == rows.size
        assert s["diff_mean"] == pytest.approx((err - prim_err).mean(), rel=1e-9, abs=1e-12)
    cov = cumulative(cfg)["c1@1"]["coverage"]
    assert cov["labels"] == N + cfg.partitions  # the warm-up labels are counted too,
    # as early (their joins wait for answers), and so are the soon ones read before their
    # requests
    assert cfg.partitions <= cov["labels_early"] <= cfg.partitions + len(soon)
    # only the warm-up labels can be unmatched: no answer ever comes for them, and once the
    # idle flush ends their joins they are (the real ones all scored: checked above)
    assert cov["labels_unmatched"] in (0, cfg.partitions)
    assert cov["label_duplicates"] == 0 and cov["labels_evicted"] == 0
