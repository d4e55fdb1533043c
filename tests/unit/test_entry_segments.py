"""The live joins' changelog: per-batch segments, bases, and the previous release's records.

Restores here read the log the way :func:`streams.kafka.read_compacted` does (the latest
value of each key, keys in the order they first appeared), after every batch, with bases
and multi-part segments forced by tiny thresholds.
"""

from __future__ import annotations

import json

import pytest
from test_joinstate import (
    LATENESS,
    TTL,
    W,
    decode_acc,
    encode_acc,
    feed,
    generate,
    per_window,
    run,
)

from streams.join import segments as segments_mod
from streams.join import table as table_mod
from streams.joinstate import KEY_ENTRY, KEY_SEGMENT, PartitionState


def new() -> PartitionState:
    return PartitionState(0, W, LATENESS, TTL)


def compacted(log: list[tuple[bytes, bytes | None]]) -> dict[bytes, bytes | None]:
    latest: dict[bytes, bytes | None] = {}
    for key, value in log:
        latest[key] = value
    return latest


def restored(log: list[tuple[bytes, bytes | None]]) -> PartitionState:
    st = new()
    for key, value in compacted(log).items():
        st.restore(key, value, decode_acc)
    st.finish_restore()
    return st


@pytest.fixture(params=[(0, 3), (0, 2_000), (1 << 20, 3)], ids=["base-always", "base", "parts"])
def thresholds(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    base_min, entries = request.param
    monkeypatch.setattr(segments_mod, "BASE_MIN_BYTES", base_min)
    monkeypatch.setattr(segments_mod, "BASE_RATIO", 0 if base_min == 0 else 4)
    monkeypatch.setattr(segments_mod, "SEGMENT_ENTRIES", entries)


@pytest.mark.usefixtures("thresholds")
@pytest.mark.parametrize("seed", range(3))
def test_compacted_changelog_holds_the_live_joins_after_every_batch(seed: int) -> None:
    _, batches = generate(seed + 300, n=300)
    st = new()
    log: list[tuple[bytes, bytes | None]] = []
    for batch in batches:
        feed(st, batch)
        st.advance()
        log += list(st.changes(encode_acc))
        again = restored(log)
        assert {r: json.dumps(e.dump()) for r, e in again.pending.items()} == {
            r: json.dumps(e.dump()) for r, e in st.pending.items()
        }
        assert again.table.seq == st.table.seq


@pytest.mark.usefixtures("thresholds")
@pytest.mark.parametrize("seed", range(3))
def test_restored_from_segments_emits_what_an_uninterrupted_state_does(seed: int) -> None:
    _, batches = generate(seed + 400, n=300)
    reference = per_window(run(batches))
    for k in (1, len(batches) // 3, len(batches) // 2, len(batches) - 1):
        assert per_window(run(batches, restore_at=k)) == reference, k


def test_bases_keep_the_compacted_log_small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segments_mod, "BASE_MIN_BYTES", 20_000)
    _, batches = generate(500, n=2_000)
    st = new()
    log: list[tuple[bytes, bytes | None]] = []
    for batch in batches:
        feed(st, batch)
        st.advance()
        log += list(st.changes(encode_acc))
    live = [k for k, v in compacted(log).items() if k[:1] == KEY_SEGMENT and v is not None]
    written = {k for k, _ in log if k[:1] == KEY_SEGMENT}
    assert len(live) < len(written) / 4
    assert not any(k[:1] == KEY_ENTRY for k, _ in log)  # no per-request records any more


def test_the_previous_releases_entry_records_restore_and_are_tombstoned() -> None:
    """Release 0.3 wrote one JSON record per open join (key ``e`` + request_id)."""
    _, batches = generate(600, n=300)
    half = len(batches) // 2
    old = new()
    out = []
    for batch in batches[:half]:
        feed(old, batch)
        out += old.advance()
    old.windows.fold()
    log: list[tuple[bytes, bytes | None]] = [
        (KEY_ENTRY + rid.encode(), json.dumps(e.dump()).encode()) for rid, e in old.pending.items()
    ]
    log += [(k, v) for k, v in old.changes(encode_acc) if k[:1] not in (KEY_ENTRY, KEY_SEGMENT)]
    st = restored(log)
    assert set(st.pending) == set(old.pending) and st.pending
    for batch in batches[half:]:
        feed(st, batch)
        out += st.advance()
        log += list(st.changes(encode_acc))
        again = restored(log)
        assert set(again.pending) == set(st.pending)
    # every old record was tombstoned once its join finished
    assert all(v is None for k, v in compacted(log).items() if k[:1] == KEY_ENTRY)
    ref = new()
    ref_out = []
    for batch in batches:
        feed(ref, batch)
        ref_out += ref.advance()
    assert per_window(out) == per_window(ref_out)


def test_json_segments_of_the_first_segment_release_still_restore() -> None:
    """Segments were JSON before they were pickles: a log with JSON segments, then pickled
    ones after a restart, restores the same live joins as an all-new log."""
    _, batches = generate(601, n=300)
    st = new()
    log: list[tuple[bytes, bytes | None]] = []
    for batch in batches[: len(batches) // 2]:
        feed(st, batch)
        st.advance()
        for key, value in st.changes(encode_acc):
            if key[:1] == KEY_SEGMENT and value is not None:
                value = json.dumps(segments_mod.load_segment(value)).encode()  # as 0.4 wrote
                assert value[:1] == b"{"
            log.append((key, value))
    again = restored(log)
    assert again.pending
    assert {r: json.dumps(e.dump()) for r, e in again.pending.items()} == {
        r: json.dumps(e.dump()) for r, e in st.pending.items()
    }


def test_a_segment_that_names_a_global_is_refused() -> None:
    """The segment reader builds plain data only: a pickle naming any class or function
    (here os.system) is refused before anything is called."""
    import os
    import pickle

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo should-never-run",))

    with pytest.raises(pickle.UnpicklingError, match=r"may not name (posix|os)\.system"):
        segments_mod.load_segment(pickle.dumps({"base": False, "put": {"x": Evil()}}, protocol=5))


def test_segments_keep_non_finite_outputs() -> None:
    """A NaN or infinite model output survives the changelog as it was (JSON did too,
    non-standardly; a stricter codec would not)."""
    t = table_mod.JoinTable(ttl_ms=1_000, remember_ms=10_000, max_pending=10)
    e = t.open("r1", 5, 1)
    e.prim = (float("nan"), None, float("inf"), None)
    e.cands = {"c@1": (float("-inf"), None, 1.0, None)}
    [(key, value)] = [(k, v) for k, v in t.changes(b"e", b"d") if k[:1] == b"s"]
    back = table_mod.JoinTable(ttl_ms=1_000, remember_ms=10_000, max_pending=10)
    back.restore_segment(key[1:], value)
    prim = back.live["r1"].prim
    assert prim is not None and prim[0] != prim[0] and prim[2] == float("inf")
    assert back.live["r1"].cands == {"c@1": (float("-inf"), None, 1.0, None)}
