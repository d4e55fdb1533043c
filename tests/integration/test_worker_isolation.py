"""Isolation seen where a user reads it: through the joiner and the evaluator (issue 9).

One worker scores 3,000 requests with four candidates: two healthy ones (the demo's
vectorized ridge and its one-at-a-time tree), one that hangs for 30 s on its second batch,
and one whose model server is down for 10% of its batches (every call of those batches
raises, the worker's request-by-request retry included). The acceptance asks for three
candidates twice (two healthy ones beside each faulty one); here both faulty ones run
beside the two healthy ones and each other in one run, which is the harder case and
half the time. What must hold, from each candidate's cumulative MetricSnapshot:

- the healthy ones predicted every request, on time: all their predictions were committed
  while the hung call was still sleeping, and their figures show every pair, no error;
- the hung one's figures show its timeouts: as many errors as it published ``timeout``
  predictions (the budget's), and its latency percentiles at the budget;
- the raising one's figures show its failures as errors, as many as it published.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from support import (
    committed_total,
    judged,
    pipeline_cfg,
    produce_answered,
    read_all,
    stage,
    wait_for,
)

from streams.kafka import Topics
from streams.schemas import default_codec

N = 3000
BUDGET_S = 1.0
RIDGE = "price-ridge@4=streams.demo_models:ridge_candidate"
TREE = "price-tree@1=streams.demo_models:tree_candidate"
HEALTHY = ("price-ridge@4", "price-tree@1")

FAULTY_PY = """
import time
from pathlib import Path

DONE = Path(__file__).with_name("hang-done")


class Hangs:
    '''Hangs 30 s on its second batch call (the first is the warm-up); DONE marks its end.'''

    def __init__(self):
        self.batches = 0

    def predict_many(self, xs):
        if len(xs) > 1:
            self.batches += 1
            if self.batches == 2:
                time.sleep(30.0)
                DONE.touch()
        return [100.0] * len(xs)


class Outage:
    '''Its model server is down for every 10th batch: that call raises, and so does each
    request of the batch retried alone.'''

    def __init__(self):
        self.batches = 0
        self.down = 0

    def predict_many(self, xs):
        if len(xs) > 1:
            self.batches += 1
            if self.batches % 10 == 0:
                self.down = len(xs)
                raise RuntimeError("model server unavailable")
        elif self.down > 0:
            self.down -= 1
            raise RuntimeError("model server unavailable")
        return [200.0] * len(xs)


hangs = Hangs()
outage = Outage()
"""


def test_a_hung_and_a_raising_candidate_show_in_the_joiners_figures_and_stall_nobody(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    cfg = pipeline_cfg(kafka_bootstrap, prefix, partitions=3)
    t = Topics(cfg.prefix)
    produce_answered(cfg, N)
    models = tmp_path / "faulty.py"
    models.write_text(FAULTY_PY)
    done = tmp_path / "hang-done"  # beside the model file: see FAULTY_PY
    log = tmp_path / "worker.log"
    worker = stage(
        cfg,
        "worker",
        *("--candidate", RIDGE, "--candidate", TREE),
        *("--candidate", f"hangs@1={models}:hangs", "--candidate", f"outage@1={models}:outage"),
        *("--batch-size", "100", "--budget", str(BUDGET_S), "--idle-exit", "3"),
        log=log,
    )
    group = f"{cfg.prefix}.worker"
    try:
        wait_for(
            lambda: committed_total(cfg, group, [t.requests], cfg.partitions) == N,
            timeout=120,
            what="every request committed",
            procs=[worker],
        )
        # every prediction of every candidate was delivered before the worker committed
        # its offsets: all of it while the hung call still slept
        assert not done.exists(), "the worker waited for the hung call"
        assert worker.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)

    codec = default_codec()
    errors: dict[str, Counter[str]] = {}
    for _, value, _ in read_all(cfg, t.predictions, idle_s=1.0):
        p = codec.decode_as("Prediction", value)
        if p["role"] == "CANDIDATE":
            kind = "ok" if p["error"] is None else p["error"].split(" ")[0].rstrip(":")
            errors.setdefault(p["model_id"], Counter())[kind] += 1
    assert errors["price-ridge@4"] == errors["price-tree@1"] == {"ok": N}
    assert errors["hangs@1"]["timeout"] > 0 and errors["hangs@1"]["ok"] > 0
    assert set(errors["hangs@1"]) == {"ok", "timeout"}
    assert errors["outage@1"]["RuntimeError"] > 0 and errors["outage@1"]["ok"] > 0
    assert set(errors["outage@1"]) == {"ok", "RuntimeError"}

    final = judged(cfg, tmp_path, N, 4)
    for cand in HEALTHY:
        cov = final[cand]["coverage"]
        assert (cov["pairs"], cov["candidate_predictions"], cov["candidate_errors"]) == (N, N, 0)
    hung = final["hangs@1"]
    assert hung["coverage"]["candidate_predictions"] == N
    assert hung["coverage"]["candidate_errors"] == errors["hangs@1"]["timeout"]
    assert hung["candidate_error_rate"] == pytest.approx(errors["hangs@1"]["timeout"] / N)
    # most of its batches timed out, each prediction with the budget as its latency
    assert errors["hangs@1"]["timeout"] > N / 2
    assert hung["candidate_latency_p50"] == pytest.approx(BUDGET_S * 1000, rel=0.05)
    raising = final["outage@1"]["coverage"]
    assert raising["candidate_predictions"] == N
    assert raising["candidate_errors"] == errors["outage@1"]["RuntimeError"]
    print(
        f"\nisolation through the joiner: {dict(errors['hangs@1'])} for the hung candidate, "
        f"{dict(errors['outage@1'])} for the raising one; the healthy two: every pair"
    )
