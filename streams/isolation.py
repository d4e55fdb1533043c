"""Each candidate scored on its own thread, within a time budget per batch.

The shadow worker's promise is that no candidate disturbs another: one that is slow, hangs
or raises must cost *its own* predictions, never the others'. So each candidate gets a
:class:`Lane`: one daemon thread that runs that candidate's calls, fed one batch at a time.
:meth:`Lanes.score` hands the batch to every idle lane at once, then hands each lane's
outcomes to the caller *as soon as that lane answers*, so a fast candidate's predictions can
be published while a slow one is still working.

A lane that has not answered when the budget (counted from the hand-off) runs out gets
timeout outcomes for the whole batch: ``"timeout after N ms"``. Python cannot stop a
thread, so the hung call goes on running in its lane, which stays *busy*: while it is,
every later batch of that candidate times out at once (``"timeout: busy ..."``, counted in
:attr:`LaneStats.busy_batches`) instead of queueing behind it, and when the call returns
at last its outcomes are thrown away (counted in :attr:`LaneStats.late_returns`: their
batch was answered with timeouts already) and the lane takes the next batch again. A call
that never returns keeps its lane busy, and its candidate timing out, until the worker
stops; the thread is a daemon, so it does not hold the process at exit.

Nothing here knows Kafka: the worker produces what :meth:`Lanes.score` hands it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from streams.cpuhome import CpuHome
from streams.errors import ModelLoadError
from streams.models import Candidate, Features, Outcome, sample_points

__all__ = ["DEFAULT_BUDGET_S", "WARM_UP_TIMEOUT_S", "LaneCall", "LaneStats", "Lanes"]

log = logging.getLogger(__name__)

#: A candidate's time budget per batch, by default: generous for a micro-batch of a few
#: hundred requests, short enough that a hung model's requests still join within the TTL.
DEFAULT_BUDGET_S = 5.0

#: How long a warm-up call may take (loading weights, compiling) before it counts as hung.
WARM_UP_TIMEOUT_S = 60.0


@dataclass
class LaneStats:
    """What happened to one candidate's batches on its lane."""

    #: Batches answered in time (with answers, or with error outcomes the model caused).
    answered: int = 0
    #: Batches that ran past the budget: their outcomes are timeouts.
    timed_out: int = 0
    #: Batches not even started because an earlier call was still running.
    busy_batches: int = 0
    #: Calls that returned after their batch had been answered with timeouts.
    late_returns: int = 0
    #: Batches whose call raised out of the candidate (a bug in the adapter, not the model).
    crashed: int = 0


@dataclass(frozen=True)
class LaneCall:
    """What became of a job run on a lane with :meth:`Lanes.call`."""

    #: False: the lane was busy, the job was not started.
    ran: bool
    #: The job did not return within its timeout (it runs on; the lane stays busy).
    timed_out: bool = False
    result: Any = None
    failure: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.ran and not self.timed_out and self.failure is None


class Lane:
    """One candidate's thread: takes a job, runs it, reports it on the shared done queue."""

    def __init__(
        self,
        index: int,
        candidate: Candidate,
        done: queue.SimpleQueue[Any],
        home: CpuHome | None = None,
    ) -> None:
        self.index = index
        self.candidate = candidate
        self.stats = LaneStats()
        self.busy = False
        self.busy_since = 0.0
        self._done = done
        self._home = home
        #: the CPU this lane's thread is pinned to (None: not pinned; see streams.cpuhome)
        self.where: int | None = None
        # SimpleQueue: a lock in C, where Queue is a Condition in Python (its notify was 4%
        # of the worker's GIL time in py-spy, two hand-offs per candidate per batch); the
        # busy flag keeps at most one job queued
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name=f"candidate-{candidate.model_id}", daemon=True
        )
        self._thread.start()

    def submit(self, token: int, job: Callable[[], Any]) -> None:
        self.busy = True
        self.busy_since = time.monotonic()
        self._jobs.put_nowait((token, job))

    def close(self) -> None:
        if not self.busy:
            self._jobs.put_nowait(None)

    def let_go(self) -> None:
        """Unpin this lane's thread while its call runs past the budget: a call that hangs
        in C without the GIL must not take the worker's CPU (its next job pins it again)."""
        if self._home is not None and self.where is not None:
            self._home.let_go(self._thread.native_id)
            self.where = None

    def _run(self) -> None:
        home = self._home
        while True:
            item = self._jobs.get()
            if item is None:
                return
            if home is not None:
                self.where = home.follow(self.where)  # onto the worker's CPU: streams.cpuhome
            token, job = item
            try:
                result: Any = job()
                failure: BaseException | None = None
            except BaseException as exc:  # a lane must outlive anything its candidate does
                result, failure = None, exc
            # Not busy before the report, so the batch after this one finds the lane free.
            self.busy = False
            self._done.put((self.index, token, result, failure))


class Lanes:
    """The candidates' lanes and the budget; :meth:`score` one batch across all of them."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        budget_s: float = DEFAULT_BUDGET_S,
        home: CpuHome | None = None,
    ):
        """``home``: the CPU each lane moves to before a job (None: wherever Linux runs it)."""
        if budget_s <= 0:
            raise ValueError(f"the time budget must be > 0 s, got {budget_s}")
        self.budget_s = budget_s
        self.budget_ms = round(budget_s * 1000.0)
        self._done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.lanes = [Lane(i, c, self._done, home) for i, c in enumerate(candidates)]
        self._token = 0

    @property
    def stats(self) -> dict[str, LaneStats]:
        return {lane.candidate.model_id: lane.stats for lane in self.lanes}

    def close(self) -> None:
        """End the idle lanes' threads; a busy (hung) one is a daemon and left to run,
        unpinned (the worker's CPU is the caller's again)."""
        for lane in self.lanes:
            if lane.busy:
                lane.let_go()
            lane.close()

    def warm_up(self, example: Features) -> None:
        """First call of every candidate not warmed up at load, on a real request.

        Untimed and outside the budget, so a first call's one-off cost (lazy loading,
        compiling) is not any request's latency. A failure is logged, not fatal: the
        request may be what is wrong (the worker scores it, and publishes the error, next);
        a call that does not return within :data:`WARM_UP_TIMEOUT_S` is.
        """
        waiting = [lane for lane in self.lanes if not lane.candidate.warmed]
        if not waiting:
            return
        token = self._next_token()
        for lane in waiting:
            lane.submit(token, partial(lane.candidate.warm_up, example))
        deadline = time.monotonic() + WARM_UP_TIMEOUT_S
        pending = {lane.index for lane in waiting}
        while pending:
            try:
                index, got, _, failure = self._done.get(timeout=deadline - time.monotonic())
            except (queue.Empty, ValueError):
                names = ", ".join(self.lanes[i].candidate.model_id for i in sorted(pending))
                raise ModelLoadError(
                    f"candidate {names} did not answer its warm-up call within "
                    f"{WARM_UP_TIMEOUT_S:.0f} s"
                ) from None
            if got != token:
                continue
            pending.discard(index)
            candidate = self.lanes[index].candidate
            candidate.warmed = True
            if failure is not None:
                log.warning(
                    "candidate %s failed its warm-up call on the first request: %s",
                    candidate.model_id,
                    failure,
                )

    def score(
        self,
        features: list[Features],
        keys: Sequence[str],
        deliver: Callable[[int, list[Outcome]], None],
        skip: Collection[int] = (),
    ) -> None:
        """Score one batch on every lane; ``deliver(candidate_index, outcomes)`` once each.

        ``skip``: candidate indexes not to score at all (nothing delivered): a candidate
        promoted to primary answers users now, and its answers come from the service.

        ``deliver`` runs on the caller's thread, in the order the lanes answer, then for the
        lanes past the budget (timeouts) and the busy ones. Returns when every candidate has
        been delivered, at most :attr:`budget_s` after the call.
        """
        n = len(features)
        points = sample_points(keys)
        token = self._next_token()
        start = time.monotonic()
        pending: set[int] = set()
        busy: list[Lane] = []
        for lane in self.lanes:
            if lane.index in skip:
                continue
            if lane.busy:
                busy.append(lane)
                continue
            lane.submit(token, partial(lane.candidate.predict_batch, features, keys, points))
            pending.add(lane.index)
        for lane in busy:
            lane.let_go()
            lane.stats.busy_batches += 1
            running_s = time.monotonic() - lane.busy_since
            text = (
                f"timeout: busy with a call past its {self.budget_ms} ms budget "
                f"(running for {running_s:.1f} s)"
            )
            deliver(lane.index, [Outcome(latency_ms=float(self.budget_ms), error=text)] * n)
        deadline = start + self.budget_s
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                index, got, result, failure = self._done.get(timeout=remaining)
            except queue.Empty:
                break
            lane = self.lanes[index]
            if got != token:
                lane.stats.late_returns += 1  # a hung call came back: its batch is answered
                continue
            pending.discard(index)
            if failure is not None:
                lane.stats.crashed += 1
                text = f"{type(failure).__name__}: {failure}"[:500]
                elapsed = (time.monotonic() - start) * 1000.0
                result = [Outcome(latency_ms=elapsed, error=text)] * n
            else:
                lane.stats.answered += 1
            deliver(index, result)
        if pending:
            timeout = [
                Outcome(
                    latency_ms=float(self.budget_ms), error=f"timeout after {self.budget_ms} ms"
                )
            ] * n
            for index in sorted(pending):
                self.lanes[index].let_go()
                self.lanes[index].stats.timed_out += 1
                deliver(index, timeout)

    def call(self, index: int, job: Callable[[], Any], timeout: float) -> LaneCall:
        """Run ``job`` on candidate ``index``'s lane, between batches, within ``timeout``.

        For work that must not race the candidate's own calls: an online learner's
        ``learn_one`` and the pickling of its checkpoint run on the thread that scores it,
        so a model is never read and changed at once. A lane still busy (a hung call) runs
        nothing; a job past ``timeout`` keeps the lane busy, exactly as a hung prediction
        would (the candidate's next batches time out until it returns).
        """
        lane = self.lanes[index]
        if lane.busy:
            return LaneCall(ran=False)
        token = self._next_token()
        lane.submit(token, job)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                got_index, got, result, failure = self._done.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                return LaneCall(ran=True, timed_out=True)
            if got != token or got_index != index:
                self.lanes[got_index].stats.late_returns += 1
                continue
            return LaneCall(ran=True, result=result, failure=failure)

    def _next_token(self) -> int:
        self._token += 1
        return self._token
