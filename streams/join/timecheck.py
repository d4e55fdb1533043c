"""Which event times to believe, judged against the message's own Kafka timestamp.

A timestamp in microseconds (54,000 years ahead), a zero, a clock a year off: any one of
them would move a watermark and close or expire everything, and that progress would be
persisted. So an event time outside ``[now - max_age, now + max_skew]`` is refused (the
event becomes a dead letter) and never reaches a watermark.

``now`` is the Kafka timestamp of the message that carried the event, not the wall clock of
the joiner: a replay after a crash, or a backfill hours later, judges every message exactly
as the first run did.

>>> check_event_time(1_700_000_000_000, now=1_700_000_000_500, max_age_ms=60_000, max_skew_ms=1_000)
>>> check_event_time(1_700_000_000_000_000, now=1_700_000_000_000, max_age_ms=60_000,
...                  max_skew_ms=1_000)[:33]
'event_time 1700000000000000 is 1.'
"""

from __future__ import annotations


def check_event_time(t: int, *, now: int, max_age_ms: int, max_skew_ms: int) -> str | None:
    """None when ``t`` is believable, else the reason it is not."""
    if t > now + max_skew_ms:
        ahead = (t - now) / 1000
        return (
            f"event_time {t} is {ahead:.3g} s after its message's timestamp {now} "
            f"(max_skew_ms={max_skew_ms}; microseconds instead of milliseconds?)"
        )
    if t < now - max_age_ms:
        behind = (now - t) / 1000
        return (
            f"event_time {t} is {behind:.3g} s before its message's timestamp {now} "
            f"(max_age_ms={max_age_ms})"
        )
    return None
