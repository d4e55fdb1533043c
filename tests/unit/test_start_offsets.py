"""The idleness check's committed-offset lookups: one per partition, never a storm.

A CI run of the broker-outage test froze a restarted joiner: each idle tick asked the group
coordinator for the committed offset of every partition and stream (18 lookups of up to 5 s
each) while a killed incarnation's transaction held the group's offsets.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.join.start_offsets import StartOffsets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failing_lookup_is_not_retried_until_the_back_off_has_passed() -> None:
    clock, calls = Clock(), []

    def lookup(tp: TopicPartition) -> int:
        calls.append(tp.partition)
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    starts = StartOffsets(lookup, backoff_s=1.5, clock=clock)
    # one idle tick: 6 partitions x 3 streams asked
    answers = [starts.get(TopicPartition("t", p % 6), low=0) for p in range(18)]
    assert answers == [None] * 18  # not known: the idleness check reads "not caught up"
    assert calls == [0]  # one lookup, not 18
    clock.now += 1.4
    assert starts.get(TopicPartition("t", 3), low=0) is None
    assert calls == [0]
    clock.now += 0.2
    assert starts.get(TopicPartition("t", 3), low=0) is None
    assert calls == [0, 3]


def test_an_answer_is_kept_until_the_partition_is_revoked() -> None:
    clock, calls = Clock(), []
    committed = {0: 42, 1: -1001}  # partition 1: no commit yet (OFFSET_INVALID)

    def lookup(tp: TopicPartition) -> int:
        calls.append(tp.partition)
        return committed[tp.partition]

    starts = StartOffsets(lookup, backoff_s=1.5, clock=clock)
    assert [starts.get(TopicPartition("t", 0), low=5) for _ in range(3)] == [42, 42, 42]
    assert starts.get(TopicPartition("t", 1), low=5) == 5  # the log start
    assert calls == [0, 1]
    starts.forget(TopicPartition("t", 0))
    committed[0] = 50
    assert starts.get(TopicPartition("t", 0), low=5) == 50
    assert calls == [0, 1, 0]


def test_doctest() -> None:
    import doctest

    from streams.join import start_offsets

    result = doctest.testmod(start_offsets)
    assert result.attempted > 0 and result.failed == 0
