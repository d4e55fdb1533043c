"""Promotion on the real broker: `understudy promote` publishes a Control event, taps obey.

* A running tap reports the new primary within seconds, and calls ``on_promote`` once.
* A tap started after the promotion learns it from the topic's history.
* A second promotion names the first's candidate as the primary it replaces; promoting the
  primary again, or without the topics, is refused in one ``understudy: error:`` line.
* The evaluator's auto-promotion record (the verdict ledger on a PROMOTE decision),
  published on the topic, is obeyed the same way. (An end-to-end auto-promotion needs a
  PROMOTE verdict, which needs labels: not joined yet.)
* A subscriber decodes every Control event with Apache Avro's own library.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from support import apache_decoder, read_all, wait_for

from streams.config import Config
from streams.control import Promotion, publish_control
from streams.kafka import Topics, ensure_topics
from streams.metrics.partial import PartialStats
from streams.schemas import default_codec
from streams.tap import Tap
from streams.verdicts.decide import Policy
from streams.verdicts.ledger import PairedLoss, VerdictLedger


def promote(cfg: Config, *argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(cfg.to_env())
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "promote", *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def until(check: Callable[[], Any], timeout: float, what: str) -> None:
    wait_for(check, timeout, what)


def test_promote_switches_running_and_later_taps(kafka_bootstrap: str, prefix: str) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=1)
    ensure_topics(cfg)
    seen: list[Promotion] = []
    early = Tap(cfg, primary="price@1", on_promote=seen.append)
    try:
        assert early.caught_up(timeout=30)
        assert early.primary == "price@1" and early.last_promotion is None and seen == []

        done = promote(
            cfg, "price@2", "--reason", "better on 12,000 sales", "--old-primary", "shadow",
            "--previous-primary", "price@1",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "promoted price@2" in done.stderr and "kept as a shadow" in done.stderr
        started = time.monotonic()
        until(lambda: early.primary == "price@2", 10, "the running tap to switch")
        print(f"running tap switched {time.monotonic() - started:.2f} s after the command")
        assert [p.candidate for p in seen] == ["price@2"]
        p = seen[0]
        assert (p.previous_primary, p.old_primary, p.reason) == (
            "price@1",
            "SHADOW",
            "better on 12,000 sales",
        )
        assert "@" in p.who and p.comparison == ""

        late = Tap(cfg)  # no primary given: it learns the promotion from the topic
        try:
            assert late.caught_up(timeout=30)
            assert late.primary == "price@2"
            assert late.last_promotion == p

            again = promote(cfg, "price@2")
            assert again.returncode == 1
            assert again.stderr.strip() == "understudy: error: price@2 is already the primary"

            second = promote(cfg, "price@3")  # replaces the latest promotion's candidate
            assert second.returncode == 0, second.stderr
            for tap in (early, late):
                until(lambda t=tap: t.primary == "price@3", 10, "both taps to follow")
            assert late.last_promotion is not None
            assert late.last_promotion.previous_primary == "price@2"
            assert late.last_promotion.old_primary == "RETIRE"
        finally:
            late.close(timeout=5)
    finally:
        early.close(timeout=5)
    assert [p.candidate for p in seen] == ["price@2", "price@3"]
    decode = apache_decoder("Control")
    controls = [decode(v) for _, v, _ in read_all(cfg, Topics(cfg.prefix).control) if v]
    assert [(c["candidate"], c["previous_primary"]) for c in controls] == [
        ("price@2", "price@1"),
        ("price@3", "price@2"),
    ]


def test_an_auto_promotion_record_is_obeyed(kafka_bootstrap: str, prefix: str) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=1)
    ensure_topics(cfg)
    ledger = VerdictLedger({}, Policy(), auto_promote=True, old_primary="RETIRE")
    rng = np.random.default_rng(1)
    d = rng.normal(-0.2, 1.0, 5_000)  # the candidate's loss is clearly lower
    loss = PairedLoss(n=d.size)
    loss.sum.update_many(d)
    loss.sumsq.update_many(d * d)
    stats = PartialStats()
    stats.count("candidate_predictions", 5_000)
    stats.add_latency(None, np.full(5_000, 3.0))
    out = ledger.window("cand@7", "prim@6", 0, 10_000, stats, int(time.time() * 1000), loss)
    kinds = [kind for kind, _ in out]
    assert kinds == ["Verdict", "Control"]
    control = default_codec().decode_as("Control", out[1][1][1])
    with Tap(cfg, primary="prim@6") as tap:
        assert tap.caught_up(timeout=30)
        publish_control(cfg, control)
        until(lambda: tap.primary == "cand@7", 10, "the tap to obey the auto-promotion")
        assert tap.last_promotion is not None
        assert tap.last_promotion.who == "evaluator"
        assert tap.last_promotion.reason.startswith("auto-promotion: candidate loss lower")


def test_promote_without_topics_is_one_line(kafka_bootstrap: str, prefix: str) -> None:
    done = promote(Config(bootstrap_servers=kafka_bootstrap, prefix=prefix), "m@2")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"understudy: error: missing topic {prefix}.control: run `understudy topics create` "
        f"(prefix {prefix!r})"
    )
