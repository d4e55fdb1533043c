"""The compact store of finished joins against a plain dict that does the same thing."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.join.finished import BUCKET_S, Finished, FinishedStore, digest

MODELS = ("a@1", "b@2", "c@3")


def alive(ref: dict[int, Finished], wm: int | None) -> dict[int, Finished]:
    """The reference semantics: an entry reads as absent once ``wm`` reached forget_s."""
    return {h: f for h, f in ref.items() if wm is None or f.forget_s * 1000 > wm}


def canon(f: Finished) -> Finished:
    return f._replace(models=tuple(sorted(f.models)))


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("put"),
            st.integers(1, 400),  # few distinct keys: overwrites happen
            st.integers(0, 120),  # forget second
            st.booleans(),
            st.booleans(),
            st.sets(st.sampled_from(MODELS)),
        ),
        st.tuples(st.just("forget"), st.integers(0, 20_000)),
        st.tuples(st.just("log")),
    ),
    max_size=400,
)


def apply(store: FinishedStore, ref: dict[int, Finished], op: tuple[Any, ...]) -> int | None:
    if op[0] == "put":
        _, k, fs, r, p, m = op
        h = digest(f"req-{k}")
        if h in ref:  # a join finishes again only later (its forget time never decreases)
            fs = max(fs, ref[h].forget_s)
        f = Finished(fs, r, p, tuple(m))
        store.put(h, f)
        ref[h] = canon(f)
    elif op[0] == "forget":
        wm = max(store.wm or 0, op[1] * 10)  # watermarks only move forward
        store.forget(wm)
        return wm
    return None


@settings(max_examples=150, deadline=None)
@given(ops)
def test_reads_like_a_dict_with_forgetting(ops: list[tuple[Any, ...]]) -> None:
    store = FinishedStore(capacity=8)  # tiny: every few puts rebuild or grow it
    ref: dict[int, Finished] = {}
    for op in ops:
        apply(store, ref, op)
        now = alive(ref, store.wm)
        for h in ref:
            assert store.get(h) == now.get(h)
    assert store.snapshot() == alive(ref, store.wm)
    assert len(store) == len(alive(ref, store.wm))
    assert store.get(digest("never-seen")) is None


@settings(max_examples=150, deadline=None)
@given(ops)
def test_changelog_restores_what_is_alive(ops: list[tuple[Any, ...]]) -> None:
    """Whatever is compacted away, the records left rebuild every entry not yet forgotten."""
    store = FinishedStore(capacity=8)
    ref: dict[int, Finished] = {}
    log: dict[bytes, bytes | None] = {}  # a compacted topic: the last value per key
    order: list[bytes] = []

    def write() -> None:
        for key, value in store.changes(b"f"):
            if key in log:
                order.remove(key)
            order.append(key)
            log[key] = value

    for op in ops:
        apply(store, ref, op)
        if op[0] == "log":
            write()
    write()
    mirror = FinishedStore()
    for key in order:
        if key[:1] == b"f":
            mirror.restore_segment(key[1:], log[key])
    mirror.finish_restore(store.wm)
    assert mirror.snapshot() == alive(ref, store.wm)
    # tombstoned buckets: only buckets the watermark has not passed keep records
    if store.wm is not None:
        for key in order:
            if log[key] is not None:
                bucket = int.from_bytes(key[1:9], "big", signed=True)
                assert (bucket * BUCKET_S + BUCKET_S - 1) * 1000 > store.wm


def test_memory_per_remembered_request() -> None:
    """600,000 requests (10 min at 1,000/s): the flat arrays, 14 bytes a slot, at most
    0.7 full after growth; measured here rather than claimed."""
    store = FinishedStore()
    f = Finished(1_000, True, True, ("a@1", "b@2"))
    for i in range(600_000):
        store.put(digest(str(i)), f)
    per = store.nbytes() / 600_000
    assert len(store) == 600_000
    assert per <= 14 / 0.25 + 1  # capacity at most 4x the entries
    print(f"finished store: {per:.1f} bytes per remembered request")


def test_digest_is_stable_and_never_zero() -> None:
    # the changelog names entries by digest: a restart (another process, another hash
    # seed) must agree, which Python's own hash() would not
    code = "from streams.join.finished import digest; print(digest('r-1'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "123"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(out.stdout) == digest("r-1")
    hs = {digest(f"x{i}") for i in range(10_000)}
    assert len(hs) == 10_000 and 0 not in hs
    assert np.uint64(max(hs)) == max(hs)


def test_finished_records_of_the_previous_release_move_to_segments() -> None:
    """Release 0.2 wrote one changelog record per finished request_id ({"f", "r", "p",
    "c"}): a restart reads them, rewrites them as segments and tombstones the old keys, so
    the next restart (and the compacted topic) no longer needs them."""
    from streams.join.table import JoinTable

    table = JoinTable(ttl_ms=1_000, remember_ms=60_000, max_pending=10)
    table.restore("old-1", {"f": 61_500, "r": True, "p": True, "c": ["b@2", "a@1"]})
    table.restore("old-2", {"f": 70_000, "r": True, "p": False, "c": []})
    table.restore("old-2", None)  # forgotten later in the old log
    table.finish_restore(wm=5_000)
    assert table.done.get(digest("old-1")) == Finished(62, True, True, ("a@1", "b@2"))
    assert table.done.get(digest("old-2")) is None
    out = list(table.changes(b"e", b"f"))
    assert (b"eold-1", None) in out
    segments = [(k, v) for k, v in out if k[:1] == b"f"]
    assert len(segments) == 1
    again = FinishedStore()
    again.restore_segment(segments[0][0][1:], segments[0][1])
    again.finish_restore(5_000)
    assert again.snapshot() == {digest("old-1"): Finished(62, True, True, ("a@1", "b@2"))}
