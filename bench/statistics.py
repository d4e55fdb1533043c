"""Profiles, merges and drift statistics alone (no Kafka), against a numpy baseline in the same run.

What the joiner and the evaluator compute over the same traffic, without the join or the
wire: N pairs (a request with 20 numeric features, 3 categorical features and 3 context
keys, the primary's answer and one candidate's) cut into event-time windows of W pairs;
each window spread over 6 partitions, each partition folding its share batch by batch into
a ``*`` and a candidate :class:`~streams.metrics.partial.PartialStats` exactly as the
joiner does (:class:`streams.join.windows.Windows`: column buffers folded with numpy, slices
by context); then, per window, the 6 partitions' partials merged (as
:mod:`streams.merging` does) and drift computed for every feature and both outputs against
the first window (PSI and KS with :func:`~streams.metrics.drift.numeric_drift`,
Jensen-Shannon with :func:`~streams.metrics.drift.categorical_drift`, as
:mod:`streams.judge` does).

Only the statistics are timed: generating the traffic (and the joiner's per-event appends
into the column buffers) is not. Each batch's numeric feature maps are what the joiner's
decoder makes of Avro Requests (:class:`~streams.join.feature_rows.FeatureRow`: the
message's bytes, read by the fold), made just before the batch is folded. Prints
``statistics: N pairs/s``, the time of each phase,
``numpy baseline: N values/s`` (``np.sort`` of every numeric feature column of the same
windows, once) and the ratio of the two times (statistics / baseline: how many times
longer than sorting the numeric values once; lower is better), for the round (of
``--rounds``, 3 by default, on the same traffic) whose statistics took the median time;
each round's figures go to stderr. One process, one core.
Usage: ``python bench/statistics.py [--pairs N] [--window W] [--batch B] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import numpy as np

from streams.join.decode import FastDecoder
from streams.join.windows import Windows
from streams.metrics.drift import categorical_drift, numeric_drift
from streams.metrics.partial import SHARED, PartialStats
from streams.metrics.slices import slice_names
from streams.schemas import default_codec

NUMERIC = 20
CATEGORICAL = 3
PARTITIONS = 6
CANDIDATE = "c1@1"
CONTEXT = {
    "region": ["eu", "us", "apac", "latam"],
    "tenant": [f"t{k}" for k in range(10)],
    "device": ["web", "ios", "android"],
}
LEVELS = {f"c{j}": [f"v{k}" for k in range(3 + 4 * j)] for j in range(CATEGORICAL)}
NAMES = [f"f{j}" for j in range(NUMERIC)]
CODEC = default_codec()


@dataclass
class Window:
    """One window of traffic, as the joiner's column buffers would hold it."""

    numeric: np.ndarray  # (pairs, NUMERIC)
    requests: list[bytes]  # Avro Requests with the numeric features; fill() decodes them
    cat_rows: list[list[str]]
    ctx: list[tuple[str, ...]]
    prim: list[float]
    cand: list[float]
    lat_p: list[float]
    lat_c: list[float]


def make_window(rng: np.random.Generator, n: int, shift: float) -> Window:
    numeric = rng.normal(shift, 1.0, (n, NUMERIC)) * np.arange(1, NUMERIC + 1) + 100.0
    cats = {c: rng.integers(0, len(v), n) for c, v in LEVELS.items()}
    ctx_ix = {c: rng.integers(0, len(v), n) for c, v in CONTEXT.items()}
    prim = rng.normal(300.0, 50.0, n)
    return Window(
        numeric=numeric,
        requests=[
            CODEC.encode(
                "Request",
                {
                    "request_id": "",
                    "event_time": 0,
                    "numeric_features": dict(zip(NAMES, r, strict=True)),
                },
            )
            for r in numeric.tolist()
        ],
        cat_rows=[[LEVELS[c][cats[c][i]] for c in LEVELS] for i in range(n)],
        ctx=[slice_names({c: CONTEXT[c][ctx_ix[c][i]] for c in CONTEXT}) for i in range(n)],
        prim=prim.tolist(),
        cand=(prim + rng.normal(1.0, 5.0, n)).tolist(),
        lat_p=rng.lognormal(1.0, 0.5, n).tolist(),
        lat_c=rng.lognormal(1.5, 0.5, n).tolist(),
    )


def fill(w: Windows, win: Window, rows: list[int]) -> None:
    """The joiner's per-event appends for ``rows`` (not timed)."""
    shared = w.columns((SHARED, 0))
    cand = w.columns((CANDIDATE, 0))
    decode = FastDecoder(CODEC).decode
    for i in rows:
        ctx = win.ctx[i]
        shared.num_rows.append(decode(win.requests[i])[1]["numeric_features"])
        shared.cat_rows.append(dict(zip(LEVELS, win.cat_rows[i], strict=True)))
        shared.slices.request(ctx)
        shared.out.append(win.prim[i])
        shared.latency.append(win.lat_p[i])
        shared.slices.output(ctx, win.prim[i])
        cand.out.append(win.cand[i])
        cand.latency.append(win.lat_c[i])
        cand.reg_p.append(win.prim[i])
        cand.reg_c.append(win.cand[i])
        cand.slices.output(ctx, win.cand[i])
        cand.slices.regression(ctx, win.prim[i], win.cand[i])


def drift(ref: PartialStats, cur: PartialStats) -> int:
    """Every feature's and output's drift, as the judge computes it; returns how many."""
    n = 0
    for name, sketch in cur.profile.numeric.items():
        numeric_drift(ref.profile.numeric[name], sketch)
        n += 1
    for name, counts in cur.profile.categorical.items():
        categorical_drift(ref.profile.categorical[name], counts)
        n += 1
    for primary in (True, False):
        r, c = ref.profile.output(primary), cur.profile.output(primary)
        if r is not None and c is not None:
            numeric_drift(r, c)
            n += 1
    return n


def measure(pairs: int, window: int, batch: int, seed: int = 1) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    timed = {"fold": 0.0, "merge": 0.0, "drift": 0.0, "sort": 0.0}
    reference: PartialStats | None = None
    done = 0
    drifts = 0
    # one Windows per partition for the whole run, as each joiner partition keeps one
    partitions = [Windows(10**12) for _ in range(PARTITIONS)]
    while done < pairs:
        n = min(window, pairs - done)
        win = make_window(rng, n, shift=0.0 if done < pairs // 2 else 0.3)
        part_of = rng.integers(0, PARTITIONS, n)
        merged = {SHARED: PartialStats(), CANDIDATE: PartialStats()}
        for p in range(PARTITIONS):
            rows = np.flatnonzero(part_of == p)
            w = partitions[p]
            for lo in range(0, rows.size, batch):
                fill(w, win, rows[lo : lo + batch].tolist())
                t0 = time.process_time()
                w.fold()
                timed["fold"] += time.process_time() - t0
            t0 = time.process_time()
            for key, stats in w.acc.items():
                merged[key[0]].merge(stats)
            w.acc.clear()  # the window is published
            timed["merge"] += time.process_time() - t0
        t0 = time.process_time()
        if reference is None:
            reference = merged[SHARED]
            reference.merge(merged[CANDIDATE])  # both outputs, as a baseline holds them
        current = merged[SHARED]
        current.merge(merged[CANDIDATE])
        drifts += drift(reference, current)
        timed["drift"] += time.process_time() - t0
        t0 = time.process_time()
        for j in range(NUMERIC):
            np.sort(win.numeric[:, j])
        timed["sort"] += time.process_time() - t0
        done += n
    timed["drifts"] = drifts
    return timed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--pairs", type=int, default=200_000)
    ap.add_argument("--window", type=int, default=10_000, help="pairs per window")
    ap.add_argument("--batch", type=int, default=1_000, help="pairs per partition per fold")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds on the same traffic; the round of median statistics time is reported",
    )
    args = ap.parse_args(argv)
    rounds = []
    for r in range(max(1, args.rounds)):
        t = measure(args.pairs, args.window, args.batch)
        spent = t["fold"] + t["merge"] + t["drift"]
        rounds.append(t)
        print(
            f"round {r + 1}: {args.pairs / spent:,.0f} pairs/s, "
            f"ratio statistics/baseline time {spent / t['sort']:.1f}",
            file=sys.stderr,
        )
    # the machine's speed drifts from one second to the next (other tenants): the median
    # round says more than any single one
    rounds.sort(key=lambda t: t["fold"] + t["merge"] + t["drift"])
    t = rounds[len(rounds) // 2]
    stats_s = t["fold"] + t["merge"] + t["drift"]
    windows = -(-args.pairs // args.window)
    print(
        f"statistics: {args.pairs / stats_s:,.0f} pairs/s  ({args.pairs:,} pairs, {NUMERIC} "
        f"numeric + {CATEGORICAL} categorical features, {len(CONTEXT)} context keys, "
        f"{PARTITIONS} partitions, {windows} windows, {int(t['drifts'])} drift statistics)"
    )
    print(
        f"  fold {t['fold']:.3f} s, merge {t['merge']:.3f} s, drift {t['drift']:.3f} s "
        "(CPU time of this process)"
    )
    values = args.pairs * NUMERIC
    print(f"numpy baseline: {values / t['sort']:,.0f} values/s  (np.sort of every numeric column)")
    print(f"ratio statistics/baseline time: {stats_s / t['sort']:.1f} (lower is better)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
