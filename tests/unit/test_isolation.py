"""Each candidate on its own lane within a budget (no broker)."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

import streams.isolation as isolation
from streams.cpuhome import CpuHome
from streams.errors import ModelLoadError
from streams.isolation import Lanes
from streams.models import Candidate, Outcome


class Fast:
    def predict_many(self, xs: list[dict[str, Any]]) -> list[float]:
        return [float(x["a"]) for x in xs]


class Hangs:
    """Blocks on ``release`` in the calls it is told to (by the batch's first value)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def predict_many(self, xs: list[dict[str, Any]]) -> list[float]:
        self.calls += 1
        if xs[0]["a"] < 0:
            self.release.wait(10)
        return [1.0] * len(xs)


def collect(lanes: Lanes, xs: list[dict[str, Any]]) -> tuple[list[tuple[int, float]], dict]:
    """Score; return (candidate index, seconds since the call) per delivery, and outcomes."""
    start = time.monotonic()
    order: list[tuple[int, float]] = []
    outs: dict[int, list[Outcome]] = {}

    def deliver(index: int, outcomes: list[Outcome]) -> None:
        order.append((index, time.monotonic() - start))
        outs[index] = outcomes

    lanes.score(xs, [f"r{i}" for i in range(len(xs))], deliver)
    return order, outs


def test_a_hung_candidate_does_not_delay_the_others() -> None:
    hangs = Hangs()
    lanes = Lanes([Candidate("hang@1", hangs), Candidate("fast@1", Fast())], budget_s=0.3)
    try:
        order, outs = collect(lanes, [{"a": -1.0}, {"a": 2.0}])
        (first, t_fast), (second, t_slow) = order
        assert (first, second) == (1, 0)
        assert t_fast < 0.2 <= 0.3 <= t_slow < 0.6
        assert [o.value for o in outs[1]] == [-1.0, 2.0]
        assert [o.error for o in outs[0]] == ["timeout after 300 ms"] * 2
        assert all(o.latency_ms == 300.0 for o in outs[0])

        # still hung: its next batch times out at once, the other is answered
        order, outs = collect(lanes, [{"a": 5.0}])
        assert all(t < 0.2 for _, t in order)
        (busy,) = outs[0]
        assert busy.error is not None and busy.error.startswith(
            "timeout: busy with a call past its 300 ms budget"
        )
        assert outs[1][0].value == 5.0
        assert hangs.calls == 1  # the busy batch never reached the model

        hangs.release.set()  # the hung call returns; its outcomes are stale
        deadline = time.monotonic() + 5
        while lanes.lanes[0].busy and time.monotonic() < deadline:
            time.sleep(0.01)
        order, outs = collect(lanes, [{"a": 7.0}])
        assert outs[0][0].value == 1.0 and outs[0][0].ok
        stats = lanes.stats["hang@1"]
        assert (stats.timed_out, stats.busy_batches, stats.late_returns, stats.answered) == (
            1,
            1,
            1,
            1,
        )
        assert lanes.stats["fast@1"].answered == 3
    finally:
        hangs.release.set()
        lanes.close()


def test_an_exception_out_of_one_candidate_fails_only_its_outcomes() -> None:
    broken = Candidate("broken@1", Fast())

    def crash(features: Any, keys: Any = None, points: Any = None) -> list[Outcome]:
        raise RuntimeError("adapter bug")

    broken.predict_batch = crash  # type: ignore[method-assign]
    lanes = Lanes([broken, Candidate("fast@1", Fast())], budget_s=2.0)
    try:
        _, outs = collect(lanes, [{"a": 1.0}, {"a": 2.0}])
        assert [o.error for o in outs[0]] == ["RuntimeError: adapter bug"] * 2
        assert [o.value for o in outs[1]] == [1.0, 2.0]
        assert lanes.stats["broken@1"].crashed == 1
    finally:
        lanes.close()


def test_warm_up_on_the_first_request(monkeypatch: pytest.MonkeyPatch) -> None:
    class Counts:
        def __init__(self) -> None:
            self.seen: list[dict[str, Any]] = []

        def predict_one(self, x: dict[str, Any]) -> float:
            self.seen.append(x)
            return 1.0

    model = Counts()
    picky = Candidate("picky@1", Fast())  # KeyError on the request below: logged, not fatal
    lanes = Lanes([Candidate("counts@1", model), picky], budget_s=1.0)
    try:
        lanes.warm_up({"b": 1.0})
        assert model.seen == [{"b": 1.0}]
        assert all(lane.candidate.warmed for lane in lanes.lanes)
        lanes.warm_up({"b": 2.0})  # once only
        assert len(model.seen) == 1
    finally:
        lanes.close()

    hangs = Hangs()
    monkeypatch.setattr(isolation, "WARM_UP_TIMEOUT_S", 0.2)
    lanes = Lanes([Candidate("hang@1", hangs)], budget_s=1.0)
    try:
        with pytest.raises(ModelLoadError, match="hang@1 did not answer its warm-up call"):
            lanes.warm_up({"a": -1.0})
    finally:
        hangs.release.set()
        lanes.close()


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="budget"):
        Lanes([Candidate("fast@1", Fast())], budget_s=0)


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux and at least two allowed CPUs",
)
def test_lanes_run_on_the_pollers_cpu_and_a_hung_one_is_let_go() -> None:
    """streams/cpuhome.py: each lane moves to the poll thread's CPU for a job; one past its
    budget is unpinned (a call hung without the GIL must not share that CPU), and pinned
    again at its next job."""
    allowed = os.sched_getaffinity(0)
    seen: dict[str, Any] = {}

    def poll_thread() -> None:
        home = CpuHome()
        hangs = Hangs()
        lanes = Lanes(
            [Candidate("hang@1", hangs), Candidate("fast@1", Fast())], budget_s=0.3, home=home
        )
        home.settle()
        hung, fast = (lane._thread.native_id for lane in lanes.lanes)
        assert hung is not None and fast is not None
        try:
            collect(lanes, [{"a": -1.0}])  # the first lane hangs past its budget
            seen["home"] = home.cpu
            seen["fast"] = os.sched_getaffinity(fast)
            seen["hung"] = os.sched_getaffinity(hung)
            hangs.release.set()
            deadline = time.monotonic() + 5
            while lanes.lanes[0].busy and time.monotonic() < deadline:
                time.sleep(0.01)
            collect(lanes, [{"a": 1.0}])
            seen["again"] = os.sched_getaffinity(hung)
        finally:
            hangs.release.set()
            lanes.close()
            home.release()

    t = threading.Thread(target=poll_thread)
    t.start()
    t.join(20)
    assert seen["home"] is not None
    assert seen["fast"] == {seen["home"]}
    assert seen["hung"] == allowed
    assert seen["again"] == {seen["home"]}
