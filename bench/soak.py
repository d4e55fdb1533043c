"""Soak: every stage at a steady rate for minutes; memory, lag and freshness over time.

The simulated house-price service (``streams.simulation``) runs in this process and mirrors
``--rate`` requests/s (default 1,000) through the public ``Tap``; the shadow worker (two
demo candidates), the joiner and the evaluator run as their own processes, exactly as
``understudy worker/joiner/evaluator`` would. For ``--minutes`` (default 10) it prints:

* the RSS of each stage (its whole process group) after the warm-up and at the end, with
  the growth in % (goal: < 10%), and each stage's CPU % (of one core) over the measured
  span, and this process's;
* the consumer lag of the worker's and the joiner's group every ``--lag-every`` seconds
  (sum over partitions of end offset - committed offset; goal: not growing);
* freshness of WINDOW snapshots on ``<prefix>.metrics``: emitted_at - window_end, p50 and
  p99 (goal: p99 within lateness + 1 s), over windows that ended after the warm-up and
  before the traffic stopped, split into the joiner's part (until the window's last
  partial was produced) and the rest (transaction commit, evaluator);
* rates as ``name: N events/s`` lines, and whether the tap dropped anything;
* after the traffic stops, whether the pipeline drained to a cumulative snapshot per
  candidate that counts every request sent, with the conservation law holding.

The joiner's memory grows by design while its state fills: open joins for the join TTL
(about 0.9 KB each as Python objects, so ~50 MB at 1,000 requests/s and 60 s), and finished
ones for max_age to recognise late duplicates (14 bytes a slot, ~15 MB for 10 minutes at
1,000/s). The default warm-up is therefore the join TTL + 15 s (at most half the run), and
the growth measured after it is the finished-join table's fill plus anything that leaks.

Not a CI test (tests/integration/test_bench.py runs it once at a tiny load). Usage:
``python bench/soak.py [--minutes 10] [--rate 1000]``; uses KAFKA_BOOTSTRAP_SERVERS, else
the running embedded broker, else one started for the run and stopped after it
(``--keep-broker`` keeps it). Stage logs go to a temporary directory it names.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from streams import broker
from streams.config import Config
from streams.demo_models import CANDIDATE_SPECS
from streams.kafka import Topics, ensure_topics
from streams.schemas import default_codec
from streams.simulation import run_service
from streams.tap import Tap

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _out(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------------------
# Stages as processes, measured through /proc (whole process group: the stage and any
# child it starts).


@dataclass
class Stage:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def _group_stats(self) -> tuple[int, float]:
        """(RSS bytes, CPU seconds) summed over the stage's process group."""
        rss = 0
        cpu = 0.0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{entry}/statm") as f:
                    statm = f.read().split()
            except OSError:
                continue
            fields_ = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            if int(fields_[2]) != self.proc.pid:  # pgrp: the stage runs in its own session
                continue
            rss += int(statm[1]) * _PAGE
            cpu += (int(fields_[11]) + int(fields_[12])) / _TICK  # utime + stime
        return rss, cpu

    def rss(self) -> int:
        return self._group_stats()[0]

    def cpu_s(self) -> float:
        return self._group_stats()[1]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _err(f"{self.name} did not stop within {timeout:.0f} s of SIGTERM; killing it")
                os.killpg(self.proc.pid, 9)
                self.proc.wait(30)


def start_stage(cfg: Config, name: str, argv: list[str], logdir: Path) -> Stage:
    env = {**os.environ, **cfg.to_env()}
    log = logdir / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", name, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    return Stage(name, proc, log)


# ---------------------------------------------------------------------------------------
# Kafka-side readings: group lag, topic end offsets, the metrics topic.


class Offsets:
    """End and committed offsets, through one long-lived consumer per group."""

    def __init__(self, cfg: Config, groups: dict[str, list[str]]) -> None:
        self.cfg = cfg
        self.groups = groups
        self._consumers = {
            g: Consumer(
                {
                    "bootstrap.servers": cfg.bootstrap_servers,
                    "group.id": g,
                    "enable.auto.commit": False,
                    # stable-offset lookups of read_committed can wait on a pending
                    # transaction; the broker returns committed offsets either way
                    "isolation.level": "read_uncommitted",
                }
            )
            for g in groups
        }
        self._probe = Consumer(
            {"bootstrap.servers": cfg.bootstrap_servers, "group.id": "soak-probe"}
        )
        self._counts: dict[str, list[int]] = {}

    def _partitions(self, topic: str) -> list[int]:
        if topic not in self._counts:
            meta = self._probe.list_topics(topic, timeout=10).topics[topic]
            self._counts[topic] = sorted(meta.partitions)
        return self._counts[topic]

    def ends(self, topics: list[str]) -> dict[tuple[str, int], tuple[int, int]]:
        """(low, high) watermark offsets of every partition of ``topics``."""
        return {
            (t, p): self._probe.get_watermark_offsets(TopicPartition(t, p), timeout=10)
            for t in topics
            for p in self._partitions(t)
        }

    def end_total(self, topics: list[str]) -> int:
        return sum(hi for _, hi in self.ends(topics).values())

    def committed_total(self, group: str) -> int:
        tps = [TopicPartition(t, p) for t in self.groups[group] for p in self._partitions(t)]
        ends = self.ends(self.groups[group])
        total = 0
        for tp in self._consumers[group].committed(tps, timeout=10):
            lo, _ = ends[(tp.topic, tp.partition)]
            total += tp.offset if tp.offset >= 0 else lo
        return total

    def lag(self, group: str) -> int:
        return self.end_total(self.groups[group]) - self.committed_total(group)

    def close(self) -> None:
        for c in self._consumers.values():
            c.close()
        self._probe.close()


@dataclass
class MetricsWatch:
    """Reads ``<prefix>.metrics`` and ``<prefix>.partials`` in a thread.

    From the metrics: each window snapshot's (window_end, emitted_at) and the last
    cumulative per candidate. From the partials: when the last partial of each window was
    produced (its Kafka timestamp), which splits a snapshot's delay into the joiner's part
    and the part after it (transaction commit, evaluator consume, merge and publish).
    """

    cfg: Config
    windows: list[tuple[int, int]] = field(default_factory=list)  # (window_end, emitted_at)
    cumulative: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_partial: dict[int, int] = field(default_factory=dict)  # window_end -> produced ms
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        t = Topics(self.cfg.prefix)
        decode = default_codec().decode_as
        c = Consumer(
            {
                "bootstrap.servers": self.cfg.bootstrap_servers,
                "group.id": f"soak-metrics-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        tps = []
        for topic in (t.metrics, t.partials):
            parts = c.list_topics(topic, timeout=30).topics[topic].partitions
            tps += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(parts)]
        c.assign(tps)
        try:
            while not self.stop.is_set():
                for m in c.consume(num_messages=1000, timeout=0.5):
                    if m.error() is not None:
                        continue
                    try:
                        if m.topic() == t.partials:
                            end = decode("Partial", m.value())["window_end"]
                            ts = m.timestamp()[1]
                            self.last_partial[end] = max(ts, self.last_partial.get(end, ts))
                            continue
                        s = decode("MetricSnapshot", m.value())
                    except Exception:
                        self.errors += 1
                        continue
                    if s["scope"] == "WINDOW":
                        self.windows.append((s["window_end"], s["emitted_at"]))
                    else:
                        self.cumulative[s["candidate"]] = s
        finally:
            c.close()


def _percentiles(values: list[int]) -> str:
    a = np.array(values, dtype=float) / 1000.0
    p50, p99 = np.percentile(a, [50, 99])
    return f"p50 {p50:.2f} s, p99 {p99:.2f} s, max {a.max():.2f} s"


def _wait_groups_stable(cfg: Config, groups: list[str], timeout: float) -> list[str]:
    """Wait until each group is STABLE with a member; return the ones that are not."""
    admin = AdminClient({"bootstrap.servers": cfg.bootstrap_servers})
    deadline = time.monotonic() + timeout
    pending = list(groups)
    while pending and time.monotonic() < deadline:
        futures = admin.describe_consumer_groups(pending, request_timeout=10)
        still = []
        for g, fut in futures.items():
            try:
                d = fut.result()
                ok = d.state.name == "STABLE" and len(d.members) > 0
            except Exception:
                ok = False
            if not ok:
                still.append(g)
        pending = still
        if pending:
            time.sleep(1.0)
    return pending


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# ---------------------------------------------------------------------------------------


def soak(bootstrap: str, args: argparse.Namespace) -> int:
    duration = args.minutes * 60.0
    cfg = Config(
        bootstrap_servers=bootstrap,
        prefix=f"soak-{uuid.uuid4().hex[:8]}",
        window_ms=args.window_ms,
        lateness_ms=args.lateness_ms,
        idle_flush_ms=args.idle_flush_ms,
        **{
            k: v
            for k, v in (("max_age_ms", args.max_age_ms), ("join_ttl_ms", args.join_ttl_ms))
            if v
        },
    )
    if args.warmup is not None:
        warmup = args.warmup
    else:
        warmup = min(cfg.join_ttl_ms / 1000 + 15.0, duration / 2)
    ensure_topics(cfg)
    t = Topics(cfg.prefix)
    logdir = Path(tempfile.mkdtemp(prefix="understudy-soak-"))
    _out(
        f"soak: {args.minutes:g} min at {args.rate:g} requests/s, 2 candidates, prefix "
        f"{cfg.prefix}, window {cfg.window_ms} ms, lateness {cfg.lateness_ms} ms, "
        f"idle_flush {cfg.idle_flush_ms} ms, join_ttl {cfg.join_ttl_ms} ms, max_age "
        f"{cfg.max_age_ms} ms, warm-up {warmup:.0f} s, stage logs in {logdir}"
    )

    cand_args = [a for spec in CANDIDATE_SPECS for a in ("--candidate", spec)]
    stages = [
        start_stage(cfg, "worker", cand_args, logdir),
        start_stage(cfg, "joiner", [], logdir),
        start_stage(cfg, "evaluator", [], logdir),
    ]
    groups = {
        f"{cfg.prefix}.worker": [t.requests],
        f"{cfg.prefix}.joiner": [t.requests, t.predictions],
    }
    offsets = Offsets(cfg, groups)
    watch = MetricsWatch(cfg)
    watcher = threading.Thread(target=watch.run, name="soak-metrics", daemon=True)
    tap: Tap | None = None
    service: threading.Thread | None = None
    stop_traffic = threading.Event()
    try:
        not_ready = _wait_groups_stable(cfg, [*groups, f"{cfg.prefix}.evaluator"], timeout=90)
        if not_ready:
            _err(f"groups not stable after 90 s (going on anyway): {', '.join(not_ready)}")
        watcher.start()

        tap = Tap(cfg)
        service = threading.Thread(
            target=run_service,
            args=(cfg,),
            kwargs={"events": None, "rate": args.rate, "stop": stop_traffic, "tap": tap},
            name="soak-service",
            daemon=True,
        )
        started = time.monotonic()
        started_ms = int(time.time() * 1000)
        service.start()

        # warm-up, then the measured span
        time.sleep(warmup)
        warm = {
            "t": time.monotonic(),
            "ms": int(time.time() * 1000),
            "tap_sent": tap.stats().sent,
            "requests_end": offsets.end_total([t.requests]),
            "predictions_end": offsets.end_total([t.predictions]),
            "partials_end": offsets.end_total([t.partials]),
            **{f"{g}_committed": offsets.committed_total(g) for g in groups},
        }
        rss_warm = {s.name: s.rss() for s in stages}
        cpu_warm = {s.name: s.cpu_s() for s in stages}
        cpu_self_warm = sum(os.times()[:2])
        for s in stages:
            _out(f"rss after warm-up {s.name}: {_mib(rss_warm[s.name])}")

        lags: dict[str, list[int]] = {g: [] for g in groups}

        def read_lag() -> None:
            readings = {g: offsets.lag(g) for g in groups}
            for g, v in readings.items():
                lags[g].append(v)
            _out(
                f"lag t={time.monotonic() - started:.0f}s "
                + " ".join(f"{g.rsplit('.', 1)[1]}={v}" for g, v in readings.items())
            )

        read_lag()  # the baseline, right after the warm-up
        next_lag = started + args.lag_every
        while next_lag <= time.monotonic():  # then every lag_every s from the start
            next_lag += args.lag_every
        end_at = started + duration
        while True:
            now = time.monotonic()
            if now >= end_at:
                break
            dead = [s.name for s in stages if not s.alive()]
            if dead:
                _err(f"stage(s) exited early: {', '.join(dead)}; see {logdir}")
                return 1
            if now >= next_lag:
                read_lag()
                next_lag += args.lag_every
            time.sleep(min(1.0, max(0.0, min(end_at, next_lag) - time.monotonic())))

        # the end of the measured span, before the traffic stops
        span = time.monotonic() - warm["t"]
        end_ms = int(time.time() * 1000)
        rss_end = {s.name: s.rss() for s in stages}
        cpu_end = {s.name: s.cpu_s() for s in stages}
        cpu_self = sum(os.times()[:2]) - cpu_self_warm
        tap_sent = tap.stats().sent
        requests_end = offsets.end_total([t.requests])
        predictions_end = offsets.end_total([t.predictions])
        partials_end = offsets.end_total([t.partials])
        committed = {g: offsets.committed_total(g) for g in groups}
        final_lag = {g: offsets.lag(g) for g in groups}
        stop_traffic.set()
        service.join(30)

        for s in stages:
            growth = 100.0 * (rss_end[s.name] - rss_warm[s.name]) / max(rss_warm[s.name], 1)
            _out(
                f"rss {s.name}: {_mib(rss_warm[s.name])} -> {_mib(rss_end[s.name])} "
                f"growth {growth:+.1f}% (goal < 10%)"
            )
        for s in stages:
            cpu = 100.0 * (cpu_end[s.name] - cpu_warm[s.name]) / span
            _out(f"cpu {s.name}: {cpu:.0f}%")
        _out(f"cpu bench (service + tap + these readers): {100.0 * cpu_self / span:.0f}%")
        for g, series in lags.items():
            name = g.rsplit(".", 1)[1]
            trend = "n/a (fewer than 2 readings)"
            if len(series) >= 2:
                half = len(series) // 2
                first, second = np.mean(series[:half]), np.mean(series[half:])
                trend = f"first half mean {first:.0f}, second half mean {second:.0f}"
            _out(f"lag {name}: at end {final_lag[g]}; {trend}")

        _out(f"tap: {(tap_sent - warm['tap_sent']) / span:,.0f} events/s")
        _out(f"requests: {(requests_end - warm['requests_end']) / span:,.0f} events/s")
        _out(f"predictions: {(predictions_end - warm['predictions_end']) / span:,.0f} events/s")
        for g in groups:
            rate = (committed[g] - warm[f"{g}_committed"]) / span
            _out(f"{g.rsplit('.', 1)[1]}: {rate:,.0f} events/s")
        _out(f"partials: {(partials_end - warm['partials_end']) / span:,.1f} events/s")

        # freshness of windows that ended after the warm-up and before the traffic stopped
        measured = [(w, e) for w, e in list(watch.windows) if warm["ms"] <= w <= end_ms]
        goal = cfg.lateness_ms + 1000
        if measured:
            _out(
                f"freshness: {_percentiles([e - w for w, e in measured])} over "
                f"{len(measured)} window snapshots (goal p99 <= {goal / 1000:.1f} s)"
            )
            produced = dict(watch.last_partial)
            # a window's last partial produced after its snapshot is a late one: not a split
            split = [(produced[w] - w, e - produced[w]) for w, e in measured if w in produced]
            split = [(j, a) for j, a in split if a >= 0]
            if split:
                joiner, after = [j for j, _ in split], [v for _, v in split]
                _out(f"freshness joiner (last partial produced): {_percentiles(joiner)}")
                _out(f"freshness after it (commit, evaluator): {_percentiles(after)}")
        else:
            _out("freshness: n/a (no window snapshot in the measured span)")
        before = [e - w for w, e in list(watch.windows) if started_ms <= w < warm["ms"]]
        if before:
            _out(f"freshness during warm-up: max {max(before) / 1000:.2f} s over {len(before)}")

        tap.close(timeout=30)
        stats = tap.stats()
        tap = None
        _out(
            f"tap dropped: {stats.dropped} (accepted {stats.accepted}, sent {stats.sent}, "
            f"failed {stats.failed}, encode errors {stats.encode_errors})"
        )
        requests_sent = stats.sent // 2  # one request and one primary prediction each

        # drain: every request reaches each candidate's cumulative, the law holds
        deadline = time.monotonic() + args.drain_s
        done = False
        while time.monotonic() < deadline and not done:
            time.sleep(1.0)
            cums = dict(watch.cumulative)
            done = len(cums) >= len(CANDIDATE_SPECS) and all(
                c["coverage"]["requests"] >= requests_sent for c in cums.values()
            )
        for cand, snap in sorted(watch.cumulative.items()):
            law = snap.get("conservation") or {}
            _out(
                f"cumulative {cand}: requests {snap['coverage']['requests']} of {requests_sent} "
                f"sent, pairs {snap['coverage']['pairs']}, conservation holds {law.get('holds')}, "
                f"late partials {snap['late_partials']} of {snap['partials']}"
            )
        _out(f"drained: {'yes' if done else f'no (after {args.drain_s:.0f} s)'}")
        return 0
    finally:
        stop_traffic.set()
        if tap is not None:
            tap.close(timeout=10)
        watch.stop.set()
        for s in reversed(stages):
            s.stop()
        if watcher.is_alive():
            watcher.join(10)
        offsets.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="traffic duration")
    ap.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    ap.add_argument(
        "--warmup", type=float, default=None, help="seconds (default: join TTL + 15 s, <= 1/2)"
    )
    ap.add_argument("--lag-every", type=float, default=30.0, help="seconds between lag readings")
    ap.add_argument("--window-ms", type=int, default=2000)
    ap.add_argument("--lateness-ms", type=int, default=1000)
    ap.add_argument("--idle-flush-ms", type=int, default=1500)
    ap.add_argument(
        "--max-age-ms",
        type=int,
        default=None,
        help="how long the joiner remembers finished joins (default: the config's)",
    )
    ap.add_argument("--join-ttl-ms", type=int, default=None, help="default: the config's")
    ap.add_argument("--drain-s", type=float, default=120.0, help="wait for the final counts")
    ap.add_argument("--keep-broker", action="store_true", help="leave a broker it started up")
    args = ap.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0:
        ap.error("--minutes and --rate must be > 0")
    with broker.bootstrap_for_run(keep=args.keep_broker, progress=_err) as bootstrap:
        return soak(bootstrap, args)


if __name__ == "__main__":
    sys.exit(main())
