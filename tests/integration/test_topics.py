"""Topic layout on a real broker: created co-partitioned, and mis-partitioned ones refused."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from streams.config import Config
from streams.errors import TopicLayoutError
from streams.joiner import Joiner
from streams.kafka import Topics, check_copartitioned, ensure_topics, partition_counts


def test_topics_create_makes_the_joined_topics_co_partitioned(
    kafka_bootstrap: str, prefix: str
) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=4)
    created = ensure_topics(cfg)
    t = Topics(prefix)
    assert set(t.copartitioned) <= set(created)
    counts = partition_counts(cfg, list(t.copartitioned))
    assert set(counts.values()) == {4}
    assert check_copartitioned(cfg) == 4
    assert ensure_topics(cfg) == []  # idempotent: nothing created the second time


def test_joiner_refuses_topics_that_are_not_co_partitioned(
    kafka_bootstrap: str, prefix: str, admin: AdminClient
) -> None:
    t = Topics(prefix)
    specs = [
        NewTopic(t.requests, 3, 1),
        NewTopic(t.predictions, 6, 1),
        NewTopic(t.labels, 3, 1),
        NewTopic(t.joiner_state, 3, 1, config={"cleanup.policy": "compact"}),
    ]
    for fut in admin.create_topics(specs).values():
        fut.result(30)
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix)
    with pytest.raises(TopicLayoutError, match="not co-partitioned") as err:
        Joiner(cfg)
    assert f"{t.predictions}=6" in str(err.value)
    with pytest.raises(TopicLayoutError, match="not co-partitioned"):
        ensure_topics(cfg)


def test_joiner_names_missing_topics(kafka_bootstrap: str, prefix: str) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix)
    with pytest.raises(TopicLayoutError, match="understudy topics create"):
        Joiner(cfg)


def test_topics_create_says_when_partitions_asked_for_are_not_applied(
    kafka_bootstrap: str, prefix: str
) -> None:
    """Existing topics keep their count; `--partitions` asking another one is named, not
    silently ignored."""
    import os
    import subprocess
    import sys

    env = {**os.environ, **Config(bootstrap_servers=kafka_bootstrap, prefix=prefix).to_env()}

    def create(n: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streams.cli", "topics", "create", "--partitions", str(n)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    first = create(2)
    assert first.returncode == 0, first.stderr
    assert "(2 partitions)" in first.stderr and "not applied" not in first.stderr
    again = create(3)
    assert again.returncode == 0, again.stderr
    assert "already exist with 2 partitions; --partitions 3 is not applied" in again.stderr
    assert check_copartitioned(Config(bootstrap_servers=kafka_bootstrap, prefix=prefix)) == 2
