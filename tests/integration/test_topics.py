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
