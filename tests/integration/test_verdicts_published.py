"""Verdicts on the real broker: the evaluator publishes one per candidate per closed window.

Without labels (the joiner does not join them yet) every verdict is CONTINUE with the
reason "no labels", and carries the candidate's guardrail figures: its p99 latency over the
comparison equals the final CUMULATIVE snapshot's (the same sketch) and numpy's order
statistic within the sketch's 1%, and its prediction count equals the snapshot's. A
subscriber decodes each with Apache Avro's own library and the ``.avsc`` file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import (
    apache_decoder,
    final_cumulative,
    produce_dataset,
    read_all,
    snapshots,
    stage,
    terminate,
    wait_for,
)

from streams.config import Config
from streams.joiner import run_joiner
from streams.kafka import Topics
from streams.schemas import default_codec

N = 3_000  # 10 ms apart: three 10 s windows


@pytest.mark.timeout(600)
def test_the_evaluator_publishes_continue_no_labels_per_candidate_per_window(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    # one joiner partition: no partial can be late (a late one counts in the next verdict, and
    # there is none after the last window), so the last verdict covers every prediction
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=1)
    produce_dataset(cfg, N)
    run_joiner(cfg, idle_exit_s=4)
    proc = stage(cfg, "evaluator", log=tmp_path / "evaluator.log")
    try:
        last = wait_for(
            lambda: final_cumulative(cfg, pairs=N - N // 50, candidates=2),
            300,
            "the final cumulative of both candidates",
            [proc],
        )

        def all_verdicts() -> list[tuple[bytes | None, bytes | None, int]] | None:
            windows = [s for s in snapshots(cfg, idle_s=1.0) if s["scope"] == "WINDOW"]
            got = read_all(cfg, Topics(cfg.prefix).verdicts, idle_s=1.0)
            return got if len(got) >= len(windows) > 0 else None

        messages = wait_for(all_verdicts, 120, "a verdict per WINDOW snapshot", [proc])
    finally:
        terminate(proc)
    windows = [s for s in snapshots(cfg, idle_s=1.0) if s["scope"] == "WINDOW"]
    decode = apache_decoder("Verdict")
    verdicts = [decode(v) for _, v, _ in messages if v]
    codec = default_codec()
    for (key, value, _), v in zip(messages, verdicts, strict=True):
        mine = codec.decode_as("Verdict", value)
        assert {k: mine[k] for k in ("candidate", "decision", "n", "reason")} == {
            k: v[k] for k in ("candidate", "decision", "n", "reason")
        }
        assert key == f"{v['candidate']}|{v['primary']}".encode()
    # one per candidate per closed window, no more
    assert sorted((v["candidate"], v["window_start"]) for v in verdicts) == sorted(
        (s["candidate"], s["window_start"]) for s in windows
    )
    assert {v["candidate"] for v in verdicts} == {"c1@1", "c2@1"}
    assert {(v["decision"], v["reason"], v["n"]) for v in verdicts} == {
        ("CONTINUE", "no labels", 0)
    }
    for cand in ("c1@1", "c2@1"):
        mine = [v for v in verdicts if v["candidate"] == cand]
        assert {v["comparison"] for v in mine} == {
            f"{cand}|prim@1|{min(v['window_start'] for v in mine)}"
        }
        final = max(mine, key=lambda v: v["window_start"])
        cumulative = last[cand]
        assert cumulative["late_partials"] == 0
        assert final["p99_latency_ms"] == pytest.approx(
            cumulative["candidate_latency_p99"], rel=1e-12
        )
        assert final["predictions"] == cumulative["coverage"]["candidate_predictions"]
        assert final["error_rate"] == 0.0 and final["breached"] == []
        assert final["alpha"] == pytest.approx(0.025) and final["candidates"] == 2
    # numpy's p99 of the latencies produced: support.produce_dataset's draws, replayed
    rng = np.random.default_rng(3)
    for _ in range(3):
        rng.normal(size=N)  # the primary's and the candidates' values
    latencies = rng.lognormal(1.0, 0.6, (3, N))
    for j, cand in ((1, "c1@1"), (2, "c2@1")):
        final = max(
            (v for v in verdicts if v["candidate"] == cand), key=lambda v: v["window_start"]
        )
        expected = np.quantile(latencies[j], 0.99, method="lower")
        assert final["p99_latency_ms"] == pytest.approx(expected, rel=0.01)
