"""The evaluator refuses to run without its topics, and creates none of them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from confluent_kafka.admin import AdminClient

from streams.config import Config


@pytest.mark.serial  # a 15 s deadline
def test_without_topics_the_evaluator_exits_at_once_and_creates_nothing(
    kafka_bootstrap: str, prefix: str, admin: AdminClient
) -> None:
    env = dict(os.environ)
    env.update(Config(bootstrap_servers=kafka_bootstrap, prefix=prefix).to_env())
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "evaluator"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    err = done.stderr.decode()
    assert done.returncode != 0, err
    assert took < 15, f"took {took:.1f} s"
    assert "Traceback" not in err
    assert (
        f"missing topics {prefix}.partials, {prefix}.metrics, {prefix}.alerts, "
        f"{prefix}.verdicts, {prefix}.control, {prefix}.deadletter" in err
    )
    assert "understudy topics create" in err
    assert [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)] == []
