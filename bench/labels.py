"""What requests awaiting their labels cost the joiner: memory, and the time to restore them.

Fills a fresh prefix with N requests (default 1,000,000), each answered by the primary and
two candidates, after one label per partition (so every partition keeps its finished
joins' answers for labels to come: see ``streams.join.awaiting``). A joiner reads it all
and, at the end of the input, finishes every join: N requests then await their labels,
in its changelog. Then, as a restarted joiner does, every partition's state is restored
from that changelog, in this process, and timed.

Prints ``awaiting labels: N requests``, ``restore: S s`` (every partition, one after the
other, as one joiner restores its assignment), the resident memory the restored states
added (``rss of the restored state: M MiB, B bytes per awaiting request``, from
/proc/self/status before and after), and, for scale, ``joiner: N events/s``. The label
budget per partition is raised to fit N for the run. Usage:
``python bench/labels.py [--requests N]``; uses KAFKA_BOOTSTRAP_SERVERS, else the running
embedded broker, else one started for the run (``--keep-broker`` keeps it).
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import uuid

import numpy as np
from _common import bulk_producer, requests_main

from streams.config import Config
from streams.joiner import Joiner, JoinerStats
from streams.kafka import Topics, ensure_topics
from streams.schemas import default_codec


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def fill(cfg: Config, n: int) -> int:
    t = Topics(cfg.prefix)
    codec = default_codec()
    enc_req, enc_pred, enc_lab = (codec.encoder(x) for x in ("Request", "Prediction", "Label"))
    p = bulk_producer(cfg)
    now = int(time.time() * 1000)
    for part in range(cfg.partitions):
        lab = {"request_id": f"warm-up-{part}", "event_time": now, "value": 0.0}
        p.produce(t.labels, enc_lab(lab), lab["request_id"].encode(), partition=part)
    base = now - n // 10 - 60_000  # 10 requests per ms, all at least a minute old
    values = np.random.default_rng(1).normal(300.0, 50.0, (n, 3)).tolist()
    for i in range(n):
        rid = f"l{i}"
        key = rid.encode()
        ts = base + i // 10
        while True:
            try:
                p.produce(t.requests, enc_req({"request_id": rid, "event_time": ts}), key)
                for (mid, role), v in zip(
                    (("prim@1", "PRIMARY"), ("c1@1", "CANDIDATE"), ("c2@1", "CANDIDATE")),
                    values[i],
                    strict=True,
                ):
                    rec = {"request_id": rid, "event_time": ts, "model_id": mid, "role": role}
                    p.produce(t.predictions, enc_pred({**rec, "value": v, "latency_ms": 1.0}), key)
                break
            except BufferError:
                p.poll(0.5)
        if i % 100_000 == 0:
            print(f"filling: {i:,}/{n:,} requests", file=sys.stderr, flush=True)
    p.flush()
    return 4 * n + cfg.partitions


def main(argv: list[str] | None = None) -> int:
    return requests_main(__doc__, 1_000_000, measure, argv)


def measure(bootstrap: str, n: int) -> int:
    cfg = Config(
        bootstrap_servers=bootstrap,
        prefix=f"bench-labels-{uuid.uuid4().hex[:8]}",
        join_ttl_ms=5_000,
        label_budget=n,  # per partition: room for all of them, whatever the spread
    )
    ensure_topics(cfg)
    total = fill(cfg, n)
    joiner = Joiner(cfg)
    marks: dict[str, float] = {}

    def on_batch(stats: JoinerStats) -> None:
        if "start" not in marks and stats.consumed:
            marks["start"] = time.perf_counter()
        if stats.consumed >= total and "end" not in marks:
            marks["end"] = time.perf_counter()

    joiner.run(stop=threading.Event(), idle_exit_s=3.0, on_batch=on_batch)
    if "end" in marks:
        print(f"joiner: {total / (marks['end'] - marks['start']):,.0f} events/s")
    del joiner
    gc.collect()
    # a restart: every partition's state back from the changelog
    again = Joiner(cfg)
    before = rss_bytes()
    t0 = time.perf_counter()
    states = [again._restore(p) for p in range(cfg.partitions)]
    restore_s = time.perf_counter() - t0
    gc.collect()
    added = rss_bytes() - before
    awaiting = sum(len(st.labels.awaiting) for st in states)
    labelled = sum(1 for st in states for kept in st.labels.awaiting.items.values() if kept[3])
    # joins that finished before their partition read its first label kept nothing (a
    # partition keeps answers only once labels come): with all the data on the topics
    # already, the first few seconds of event time can go by before a label is read
    print(
        f"awaiting labels: {awaiting - labelled:,} requests (and {labelled} labelled markers; "
        f"{n - (awaiting - labelled):,} of {n:,} finished before their partition read a label)"
    )
    print(f"restore: {restore_s:.1f} s ({cfg.partitions} partitions)")
    per = added / max(awaiting, 1)
    print(
        f"rss of the restored state: {added / 2**20:,.1f} MiB, "
        f"{per:,.0f} bytes per awaiting request"
    )
    return 0 if awaiting > labelled else 1


if __name__ == "__main__":
    sys.exit(main())
