"""Scoring answers against their ground truth, into the candidates' windows at label time.

A labelled pair (a candidate's answer and the primary's, both without error, and the
label) is scored once, when the last of the three arrives; the losses go into the
candidate's accumulator of the window that holds the *label's* event time, so labels that
come hours after their requests land in the window they came in, not as late additions to
one long closed.
"""

from __future__ import annotations

from collections.abc import Iterable

from streams.join.table import Answer, Truth
from streams.join.windows import Windows
from streams.metrics.labelled import Loss, loss_of


def answer_loss(truth: Truth, ans: Answer | None) -> Loss | None:
    """One answer's loss, or None (no answer, an error, or not comparable with the truth)."""
    if ans is None or ans[3] is not None:
        return None
    scores = ans[4] if len(ans) > 4 else None
    return loss_of(truth[0], truth[1], ans[0], ans[1], scores)


def score_pairs(
    windows: Windows, truth: Truth, primary: Answer | None, cands: Iterable[tuple[str, Answer]]
) -> int:
    """Score each (candidate, answer) against the primary's answer; returns pairs scored."""
    p = answer_loss(truth, primary)
    if p is None:
        return 0
    ws = windows.start(truth[2])
    n = 0
    for cand, ans in cands:
        c = answer_loss(truth, ans)
        if c is not None and windows.stats((cand, ws)).labels().add(c, p):
            n += 1
    return n
