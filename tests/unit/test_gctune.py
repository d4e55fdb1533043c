"""The collector's thresholds while a stage runs, and the host program's afterwards."""

from __future__ import annotations

import gc

import pytest

from streams.gctune import THRESHOLDS, fewer_collections


@pytest.fixture(autouse=True)
def host_thresholds() -> object:
    """A host program's own thresholds, put back whatever the test does."""
    before = gc.get_threshold()
    gc.set_threshold(500, 5, 7)
    yield
    gc.set_threshold(*before)


def test_the_block_runs_with_fewer_collections_then_the_hosts_come_back() -> None:
    with fewer_collections():
        assert gc.get_threshold() == THRESHOLDS
    assert gc.get_threshold() == (500, 5, 7)


def test_the_hosts_thresholds_come_back_after_an_exception() -> None:
    with pytest.raises(RuntimeError), fewer_collections():
        raise RuntimeError("the stage failed")
    assert gc.get_threshold() == (500, 5, 7)


def test_collections_still_run_only_less_often() -> None:
    """Not disabled: a generation-0 collection after THRESHOLDS[0] net allocations."""
    runs: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            runs.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        with fewer_collections():
            assert gc.isenabled()
            kept = [[] for _ in range(THRESHOLDS[0] // 2)]
            assert runs == []  # the default 700 would have run several by now
            kept += [[] for _ in range(THRESHOLDS[0])]
            assert runs, "no collection after more than the threshold's allocations"
    finally:
        gc.callbacks.remove(count)
    assert len(kept) == THRESHOLDS[0] // 2 + THRESHOLDS[0]
