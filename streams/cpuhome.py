"""The shadow worker's Python threads kept on one CPU, a CPU that can still change.

Why: the worker scores each candidate on a thread of its own (:mod:`streams.isolation`),
so every batch crosses threads twice: the poll thread builds the batch's feature dicts,
a candidate's lane reads them and builds its outcomes, the poll thread reads those. Only
one of these threads runs Python at a time (the GIL), yet Linux wakes each on whichever
CPU is idle, and then the batch's memory moves between the CPUs' caches. Measured on this
2-core machine, the batch path of bench/worker.py's two demo candidates run without Kafka
(decode, score on the lanes, encode; 50,000 requests, 3 runs each):

- threads free: 4.0 to 6.5 us of CPU a request;
- the same code with the candidates called on the poll thread itself: 3.6 to 3.9 us;
- the whole process pinned to one CPU (``taskset``), lanes as usual: 3.8 to 4.7 us.

So the poll thread stays on the CPU it runs on, and each lane moves itself to that CPU
before it runs a job. librdkafka's threads are not pinned: they run beside Python, on the
other CPUs. Every :data:`REHOME_S` the poll thread lifts its pin for one batch, so the
kernel can move it off a CPU that other work made busy (another worker, the broker), and
the lanes follow it to where it lands. A lane whose call overruns its budget is let go
of that CPU until its next job: a call hung in C without the GIL must not share the poll
thread's CPU.

Nothing is pinned with a single allowed CPU, off Linux, or where the kernel refuses
(a cpuset that changed, a sandbox): the worker then runs as before, with one debug line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

__all__ = ["REHOME_S", "CpuHome", "current_cpu"]

log = logging.getLogger(__name__)

#: Seconds between the moments the poll thread lets the kernel move it.
REHOME_S = 2.0

_setaffinity = getattr(os, "sched_setaffinity", None)
_getaffinity = getattr(os, "sched_getaffinity", None)


def current_cpu() -> int | None:
    """The CPU the calling thread runs on (field 39 of /proc/thread-self/stat), or None
    where that file is not there."""
    try:
        with open("/proc/thread-self/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count from its end
    fields = stat[stat.rindex(b")") + 2 :].split()
    try:
        return int(fields[36])
    except (IndexError, ValueError):
        return None


class CpuHome:
    """Where the worker's Python threads run: :meth:`settle` on the poll thread before
    each batch, :meth:`follow` on a lane before each job, :meth:`release` at the end."""

    def __init__(self, enabled: bool = True) -> None:
        self._allowed: set[int] = set()
        if enabled and _setaffinity is not None and _getaffinity is not None:
            self._allowed = set(_getaffinity(0))
        self.enabled = len(self._allowed) >= 2
        #: the poll thread's CPU while it is pinned there (the lanes follow it), else None
        self.cpu: int | None = None
        self._pinned = False
        self._rehome_at = 0.0

    def settle(self) -> None:
        """Pin the poll thread where it runs; every :data:`REHOME_S`, unpin it for a batch."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self._pinned:
            if now < self._rehome_at:
                return
            self._pin(self._allowed)  # the kernel may move it during this batch
            self._pinned = False
            return
        cpu = current_cpu()
        if cpu is None or cpu not in self._allowed or not self._pin({cpu}):
            return
        self.cpu, self._pinned, self._rehome_at = cpu, True, now + REHOME_S

    def follow(self, where: int | None) -> int | None:
        """On a lane's thread, pinned at ``where`` (None: nowhere yet): onto the poll
        thread's CPU. Returns where the lane is pinned now."""
        cpu = self.cpu
        if cpu == where or _setaffinity is None:
            return where
        try:
            # None: the poll thread is not pinned any more (stopped, or refused): nor is this
            _setaffinity(0, {cpu} if cpu is not None else self._allowed)
        except OSError:
            return where
        return cpu

    def let_go(self, thread: int | None) -> None:
        """Unpin another thread (its native id): a lane whose call overran its budget."""
        if thread is None or _setaffinity is None or not self._allowed:
            return
        with contextlib.suppress(OSError):  # gone already, or refused: it stays where it is
            _setaffinity(thread, self._allowed)

    def release(self) -> None:
        """The poll thread's CPUs as they were (the worker may run inside another program)."""
        if self.enabled and self._pinned:
            self._pin(self._allowed)
        self._pinned = False
        self.cpu = None

    def _pin(self, cpus: set[int]) -> bool:
        assert _setaffinity is not None
        try:
            _setaffinity(0, cpus)
        except OSError as exc:
            log.debug("worker threads not pinned to a CPU: %s", exc)
            self.enabled = False
            self.cpu = None
            return False
        return True
