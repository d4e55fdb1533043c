"""The conservation ledger: where every request of a partition went, per candidate.

For each candidate ``c`` (and for ``*``, a candidate that has never answered), every
request consumed from the requests topic is in exactly one term::

    requests = pairs + no_candidate + no_primary + no_prediction + pending + dead_letters

* ``pairs``: the primary and ``c`` both answered it (counted as soon as both are there);
* ``no_candidate`` / ``no_primary`` / ``no_prediction``: its join finished (the watermark
  passed its deadline, or the pending cap evicted it) with ``c`` missing, the primary
  missing, or both missing;
* ``pending``: its join is still open, within the join TTL;
* ``dead_letters``: the message on the requests topic could not be used (undecodable,
  empty request_id, unbelievable event time); it went to the dead-letter topic.

Duplicates are not requests. The totals are cumulative (never windowed), so the evaluator
adds the latest ledger of each partition and checks the identity over the whole stream.
A candidate seen for the first time starts from a copy of ``*``: until then it had answered
nothing, which is exactly what ``*`` counts.

Examples
--------
>>> led = Ledger()
>>> led.request(paired=())
>>> led.add_candidate("c@1")
>>> led.pair(["c@1"])
>>> led.terms("c@1")["pairs"], led.terms("*")["pending"], led.holds()
(1, 1, True)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

BASELINE = "*"
TERMS = ("pairs", "no_candidate", "no_primary", "no_prediction", "pending", "dead_letters")


def _zero() -> dict[str, int]:
    return dict.fromkeys(("requests", *TERMS), 0)


class Ledger:
    """Cumulative per-candidate terms of one partition; see the module docstring."""

    __slots__ = ("book",)

    def __init__(self) -> None:
        self.book: dict[str, dict[str, int]] = {BASELINE: _zero()}

    def add_candidate(self, cand: str) -> None:
        if cand not in self.book:
            self.book[cand] = dict(self.book[BASELINE])

    def terms(self, cand: str) -> dict[str, int]:
        return self.book.get(cand, self.book[BASELINE])

    # -- transitions: each keeps requests == sum(terms) for every candidate ------------

    def request(self, paired: Iterable[str]) -> None:
        """A new request whose join is open; ``paired``: candidates already paired."""
        done = set(paired)
        for cand, t in self.book.items():
            t["requests"] += 1
            t["pairs" if cand in done else "pending"] += 1

    def pair(self, cands: Iterable[str]) -> None:
        """Requests pending for ``cands`` just got both answers."""
        for cand in cands:
            t = self.book[cand]
            t["pending"] -= 1
            t["pairs"] += 1

    def finish(self, primary: bool, present: Iterable[str]) -> None:
        """A pending request's join closed: classify it for every candidate not paired."""
        have = set(present)
        for cand, t in self.book.items():
            if primary and cand in have:
                continue  # paired when the second answer came
            t["pending"] -= 1
            t[_reason(primary, cand in have)] += 1

    def request_after_finish(self, primary: bool, present: Iterable[str]) -> None:
        """A request that came after its join had already closed: classified at once."""
        have = set(present)
        for cand, t in self.book.items():
            t["requests"] += 1
            t["pairs" if primary and cand in have else _reason(primary, cand in have)] += 1

    def dead_letter(self) -> None:
        for t in self.book.values():
            t["requests"] += 1
            t["dead_letters"] += 1

    # -- reading and state -------------------------------------------------------------

    def holds(self) -> bool:
        return all(t["requests"] == sum(t[k] for k in TERMS) for t in self.book.values())

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {c: dict(t) for c, t in self.book.items()}

    def dump(self) -> dict[str, Any]:
        return self.snapshot()

    @classmethod
    def load(cls, data: dict[str, Any] | None) -> Ledger:
        led = cls()
        for cand, terms in (data or {}).items():
            t = _zero()
            t.update({k: int(v) for k, v in terms.items() if k in t})
            led.book[cand] = t
        return led


def _reason(primary: bool, has_candidate: bool) -> str:
    if primary:
        return "no_candidate"
    return "no_primary" if has_candidate else "no_prediction"
