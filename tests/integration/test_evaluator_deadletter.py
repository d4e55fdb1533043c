"""What the evaluator cannot use goes to the dead-letter topic, with where it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confluent_kafka import Message, Producer
from support import end_total, read_all, stage, terminate, wait_for

from streams.config import Config
from streams.kafka import Topics, ensure_topics
from streams.metrics.partial import SHARED, PartialStats
from streams.schemas import default_codec

W = 2000
CODEC = default_codec()


def good_partials(ws: int) -> list[tuple[bytes, bytes]]:
    """One joiner partition's window: a@1's pairs, then the ``*`` partial with progress."""
    out = []
    for cand in ("a@1", SHARED):
        stats = PartialStats()
        stats.count("requests" if cand == SHARED else "pairs", 3)
        rec = stats.to_partial(
            joiner_partition=0,
            partition_count=1,
            candidate=cand,
            primary="prim@1",
            window_start=ws,
            window_end=ws + W,
            watermark=ws + W if cand == SHARED else 0,
        )
        out.append((cand.encode(), CODEC.encode("Partial", rec)))
    return out


def test_bad_partials_become_dead_letters_and_good_ones_still_count(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    cfg = Config(bootstrap_servers=kafka_bootstrap, prefix=prefix, window_ms=W)
    ensure_topics(cfg)
    t = Topics(prefix)
    wrong_event = CODEC.encode(
        "DeadLetter",
        {
            "stage": "joiner",
            "reason": "x",
            "source_topic": "t",
            "source_partition": 0,
            "source_offset": 0,
            "time": 0,
        },
    )
    bad = {
        b"garbage": b"\x00\x01 not avro",
        b"unknown": b"\xc3\x01" + b"\xee" * 8 + b"\x02",
        b"wrong-event": wrong_event,
        b"truncated": good_partials(0)[0][1][:12],
    }
    messages = [(k, v) for k, v in bad.items()] + good_partials(0) + good_partials(W)
    offsets: dict[bytes, int] = {}

    def delivered(err: Any, msg: Message) -> None:
        assert err is None, err
        offsets[msg.key() or b""] = msg.offset() or 0

    p = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for key, value in messages:
        p.produce(t.partials, value, key, partition=0, on_delivery=delivered)
    assert p.flush(30) == 0

    proc = stage(cfg, "evaluator", log=tmp_path / "evaluator.log")

    def dead_and_snapshots() -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        dead = [CODEC.decode_as("DeadLetter", v) for _, v, _ in read_all(cfg, t.deadletter, 1.0)]
        snaps = [CODEC.decode_as("MetricSnapshot", v) for _, v, _ in read_all(cfg, t.metrics, 1.0)]
        if len(dead) >= len(bad) and sum(s["scope"] == "WINDOW" for s in snaps) >= 2:
            return dead, snaps
        return None

    try:
        dead, snaps = wait_for(dead_and_snapshots, 120, "dead letters and a snapshot", [proc])
    finally:
        terminate(proc)
    log = (tmp_path / "evaluator.log").read_text()
    assert len(dead) == len(bad), log[-3000:]
    by_key = {d["key"]: d for d in dead}
    assert sorted(by_key) == sorted(bad)
    for key, value in bad.items():
        d = by_key[key]
        assert d["stage"] == "evaluator"
        assert d["source_topic"] == t.partials
        assert d["source_partition"] == 0
        assert d["source_offset"] == offsets[key]
        assert d["value"] == value  # unchanged
        assert d["reason"].startswith("cannot use this partial: ")
    # written in a transaction (the evaluator's exactly-once one): its commit marker takes an
    # offset of its own, which a plain send would not
    assert end_total(cfg, [t.deadletter], 1) > len(dead)
    assert "unknown writer schema" in by_key[b"unknown"]["reason"]
    assert "expected a Partial" in by_key[b"wrong-event"]["reason"]
    # the good partials were all used: both windows closed, once each, with all in them
    windows = [s for s in snaps if s["scope"] == "WINDOW"]
    assert [(s["candidate"], s["window_start"]) for s in windows] == [("a@1", 0), ("a@1", W)]
    assert all(s["coverage"]["pairs"] == s["coverage"]["requests"] == 3 for s in windows)
    last = [s for s in snaps if s["scope"] == "CUMULATIVE"][-1]
    assert last["coverage"]["pairs"] == 6
