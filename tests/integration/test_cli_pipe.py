"""Commands whose output is piped into a reader that stops early (`understudy status |
head -1`) end quietly, as a Unix tool killed by SIGPIPE does: exit 141, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from confluent_kafka import Producer

from streams.config import Config
from streams.kafka import Topics, ensure_topics
from streams.schemas import default_codec


def publish_an_alert(cfg: Config) -> None:
    """One FIRING transition, so that `alerts --once` has a line to print."""
    alert = {
        "rule": "slow",
        "severity": "warning",
        "state": "FIRING",
        "candidate": "c@1",
        "metric": "latency.candidate_p99_ms",
        "value": 900.0,
        "threshold": 500.0,
        "comparison": ">",
        "window_start": 1_800_000_000_000,
        "window_end": 1_800_000_010_000,
        "emitted_at": 1_800_000_011_000,
    }
    p = Producer({"bootstrap.servers": cfg.bootstrap_servers})
    p.produce(Topics(cfg.prefix).alerts, default_codec().encode("Alert", alert), b"slow|c@1|")
    assert p.flush(30) == 0


@pytest.mark.parametrize("args", [["status"], ["alerts", "--once"], ["status", "--json"]])
def test_a_reader_gone_is_a_quiet_exit_141(
    kafka_bootstrap: str, prefix: str, args: list[str]
) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    ensure_topics(cfg)
    publish_an_alert(cfg)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    env = {**os.environ, **cfg.to_env()}
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "streams.cli",
                *args,
                *(["--timeout", "20"] if args[0] == "status" else []),
            ],
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=120,
            text=True,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
