"""The tap's side of the ledger on the real broker (issue 9, item 7).

A tap at sample rate 0.5 reports its counters on ``<prefix>.tap-stats`` every 0.5 s and
when it closes. Every report satisfies the law
``seen = sent + sampled_out + dropped + failed + encode_errors + in_flight``; the final one
has nothing in flight, counts every call the service made, and its ``sent`` equals the
messages found on the requests and predictions topics. Decoded with Apache Avro.
"""

from __future__ import annotations

from support import apache_decoder, read_all, wait_for

from streams.config import Config
from streams.kafka import Topics, ensure_topics
from streams.tap import Tap

N = 2_000


def law_holds(r: dict[str, object]) -> bool:
    terms = ("sent", "sampled_out", "dropped", "failed", "encode_errors", "in_flight")
    return r["seen"] == sum(r[t] for t in terms)  # type: ignore[misc]


def test_the_tap_publishes_its_counters_periodically_and_at_close(
    kafka_bootstrap: str, prefix: str
) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, partitions=2)
    ensure_topics(cfg)
    topics = Topics(prefix)
    decode = apache_decoder("TapStats")
    tap = Tap(cfg, sample_rate=0.5, use_case="pricing", stats_interval_s=0.5)
    instance = tap.instance
    for i in range(N):
        tap.record_request(f"r-{i}", {"x": float(i)})
        tap.record_prediction(f"r-{i}", "m@1", value=1.0, latency_ms=2.0)

    def periodic() -> list[dict[str, object]]:
        reports = [decode(v) for _, v, _ in read_all(cfg, topics.tap_stats, 0.5, 5.0) if v]
        return [r for r in reports if r["seen"] == 2 * N]

    wait_for(periodic, 30, "a periodic report that has seen every call")
    stats = tap.close(timeout=30)

    messages = read_all(cfg, topics.tap_stats, idle_s=1.0)
    reports = [decode(v) for key, v, _ in messages if v]
    assert {key for key, _, _ in messages} == {instance.encode()}
    assert all(r["tap"] == instance and r["use_case"] == "pricing" for r in reports)
    assert all(law_holds(r) for r in reports), reports
    assert [r["final"] for r in reports].count(True) == 1 and reports[-1]["final"]
    final = reports[-1]
    assert final["in_flight"] == 0 and final["seen"] == 2 * N
    assert final["sent"] == stats.sent and final["sampled_out"] == stats.sampled_out
    assert final["dropped"] == final["failed"] == final["encode_errors"] == 0
    assert 0.4 * 2 * N < final["sampled_out"] < 0.6 * 2 * N  # type: ignore[operator]
    on_topics = len(read_all(cfg, topics.requests)) + len(read_all(cfg, topics.predictions))
    assert on_topics == final["sent"]
    times = [r["time"] for r in reports]
    assert times == sorted(times) and all(r["started_at"] <= r["time"] for r in reports)
