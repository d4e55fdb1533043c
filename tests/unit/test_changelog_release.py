"""A changelog written by the release before the fast joiner restores and continues.

``data/changelog_930f78a.json`` was written once by the code of commit 930f78a (the last
release whose open joins kept their context slices as a list in the changelog, and whose
requests' features were dicts), with ``data/make_release_changelog.py``: a partition with
features, contexts, answers that come before their request, labels, and bases among the
segments. Restored at every batch boundary after the cut, today's state must continue to
the partials of a run never interrupted, and the partials that release published before
the cut must be the very ones today's code publishes there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from test_joinstate import decode_acc, encode_acc, per_window
from test_joinstate_labels import feed

from streams.joinstate import Emitted, PartitionState

CHANGELOG = Path(__file__).with_name("data") / "changelog_930f78a.json"
PRIMARY, CANDIDATES = "p@1", ("a@1", "b@1")
REGIONS, TENANTS = ("eu", "us", "apac"), ("t0", "t1", "t2", "t3")


def release_events() -> list[dict[str, Any]]:
    """160 requests 10 ms apart with two numeric features, one categorical, two context
    keys; every other one answered before it arrives; nine in ten labelled 1 s later.
    Plain arithmetic, no random generator whose stream a numpy release could change."""
    timed: list[tuple[int, int, dict[str, Any]]] = []
    for i in range(160):
        t = 1_000 + 10 * i
        rid = f"r{i}"
        truth = 100.0 + (i * 37 % 23) - 11
        request = {
            "request_id": rid,
            "event_time": t,
            "numeric_features": {"size": 50.0 + i % 17, "age": float(i * 13 % 29) - 3.5},
            "categorical_features": {"kind": ("flat", "house", "loft")[i % 3]},
            "context": {"region": REGIONS[i % 3], "tenant": TENANTS[i * 7 % 4]},
        }
        late = i % 2  # the request after its answers: open joins written twice
        timed.append((t, 3 * late, request))
        for k, m in enumerate((PRIMARY, *CANDIDATES)):
            value = truth + (k + 1) * ((i * (7 + k)) % 5 - 2) / 2
            role = "PRIMARY" if m == PRIMARY else "CANDIDATE"
            answer = {"request_id": rid, "event_time": t, "model_id": m, "role": role}
            answer.update(value=value, label=None, latency_ms=1.0 + k, error=None)
            timed.append((t, k if late else 1 + k, answer))
        if i % 10 != 9:
            label = {"request_id": rid, "event_time": t + 1_000, "value": truth, "label": None}
            timed.append((t + 1_000, 4, label))
    timed.sort(key=lambda x: (x[0], x[1]))
    warm = {"request_id": "warm-up", "event_time": 999, "value": 0.0, "label": None}
    return [warm, *(e for _, _, e in timed)]


def test_the_release_changelog_restores_and_continues() -> None:
    data = json.loads(CHANGELOG.read_text())
    events = release_events()
    window, lateness, ttl = data["window_ms"], data["lateness_ms"], data["ttl_ms"]
    log = [(bytes.fromhex(k), None if v is None else bytes.fromhex(v)) for k, v in data["records"]]
    written = [
        Emitted(cand, ws, seq, decode_acc(bytes.fromhex(p))) for cand, ws, seq, p in data["emitted"]
    ]
    assert written, "the fixture publishes partials before its cut"
    # today's code publishes the same partials before the cut
    now = PartitionState(0, window, lateness, ttl)
    mine: list[Emitted] = []
    for lo in range(0, data["cut"], data["batch"]):
        feed(now, events[lo : lo + data["batch"]])
        mine += now.advance()
        list(now.changes(encode_acc))
    assert per_window(mine) == per_window(written)
    out = list(written)
    for lo in range(data["cut"], len(events), data["batch"]):
        latest: dict[bytes, bytes | None] = {}
        for k, v in log:
            latest[k] = v
        st = PartitionState(0, window, lateness, ttl)
        for k, v in latest.items():
            st.restore(k, v, decode_acc)
        st.finish_restore()
        feed(st, events[lo : lo + data["batch"]])
        out += st.advance()
        log += list(st.changes(encode_acc))
    out += st.advance(close_all=True)
    ref = PartitionState(0, window, lateness, ttl)
    feed(ref, events)
    assert per_window(out) == per_window(ref.advance(close_all=True))
