"""The worker's Python threads on one CPU that can move (streams/cpuhome.py), on real
threads of this process: each test runs in a thread of its own, as affinity is per
thread, so pytest's own thread is never pinned."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pytest

from streams import cpuhome
from streams.cpuhome import CpuHome, current_cpu

ALLOWED = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
pytestmark = pytest.mark.skipif(
    len(ALLOWED) < 2 or current_cpu() is None,
    reason="needs Linux, /proc/thread-self and at least two allowed CPUs",
)


def on_a_thread(body: Callable[[], Any]) -> Any:
    """``body()`` on a fresh thread; its result, or its exception raised here."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = body()
        except BaseException as exc:  # handed to the test's thread
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if "error" in out:
        raise out["error"]
    return out.get("result")


def test_current_cpu_is_where_the_thread_is_pinned() -> None:
    def body() -> list[tuple[int, int | None]]:
        seen = []
        for cpu in sorted(ALLOWED)[:2]:
            os.sched_setaffinity(0, {cpu})
            seen.append((cpu, current_cpu()))
        return seen

    for cpu, got in on_a_thread(body):
        assert got == cpu


def test_the_poll_thread_stays_where_it_runs_and_a_lane_follows_it() -> None:
    def body() -> tuple[set[int], int | None, int | None, set[int], set[int]]:
        home = CpuHome()
        assert home.enabled
        home.settle()
        mine = set(os.sched_getaffinity(0))
        lane: dict[str, Any] = {}

        def lane_job() -> None:
            lane["where"] = home.follow(None)
            lane["mask"] = set(os.sched_getaffinity(0))

        t = threading.Thread(target=lane_job)
        t.start()
        t.join(10)
        home.release()
        return mine, home.cpu, lane["where"], lane["mask"], set(os.sched_getaffinity(0))

    mine, after_release, where, lane_mask, restored = on_a_thread(body)
    assert len(mine) == 1 and mine <= ALLOWED
    assert lane_mask == mine and where == next(iter(mine))
    assert after_release is None
    assert restored == ALLOWED  # the thread's CPUs as they were


def test_every_rehome_interval_the_pin_is_lifted_for_one_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cpuhome, "REHOME_S", 0.0)

    def body() -> list[set[int]]:
        home = CpuHome()
        masks = []
        for _ in range(4):
            home.settle()
            masks.append(set(os.sched_getaffinity(0)))
        home.release()
        return masks

    pinned, lifted, again, lifted_again = on_a_thread(body)
    assert len(pinned) == 1 and len(again) == 1
    assert lifted == ALLOWED == lifted_again


def test_a_lane_is_unpinned_once_the_worker_stopped() -> None:
    def body() -> set[int]:
        home = CpuHome()
        home.settle()
        where = home.follow(None)
        assert where is not None and set(os.sched_getaffinity(0)) == {where}
        home.release()
        assert home.follow(where) is None
        return set(os.sched_getaffinity(0))

    assert on_a_thread(body) == ALLOWED


def test_nothing_is_pinned_when_turned_off_or_with_one_cpu() -> None:
    def body() -> tuple[set[int], set[int]]:
        off = CpuHome(enabled=False)
        off.settle()
        assert not off.enabled and off.cpu is None and off.follow(None) is None
        free = set(os.sched_getaffinity(0))
        one = min(ALLOWED)
        os.sched_setaffinity(0, {one})
        single = CpuHome()
        single.settle()
        assert not single.enabled and single.cpu is None
        return free, set(os.sched_getaffinity(0))

    free, single = on_a_thread(body)
    assert free == ALLOWED and single == {min(ALLOWED)}


def test_a_refused_pin_turns_it_off_without_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(pid: int, cpus: object) -> None:
        raise OSError(22, "Invalid argument")

    def body() -> tuple[bool, int | None, set[int]]:
        home = CpuHome()
        monkeypatch.setattr(cpuhome, "_setaffinity", refuse)
        home.settle()
        home.settle()
        return home.enabled, home.cpu, set(os.sched_getaffinity(0))

    enabled, cpu, mask = on_a_thread(body)
    assert (enabled, cpu, mask) == (False, None, ALLOWED)
