"""Labelled losses against numpy and scikit-learn on the same data, and exact merging."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, log_loss

from streams.metrics.labelled import LabelStats, loss_of


def test_regression_losses_and_paired_difference_match_numpy() -> None:
    rng = np.random.default_rng(3)
    truth = rng.normal(300.0, 50.0, 5_000)
    prim = truth + rng.normal(0.0, 10.0, truth.size)
    cand = truth + rng.normal(1.0, 8.0, truth.size)
    ls = LabelStats()
    for t, p, c in zip(truth.tolist(), prim.tolist(), cand.tolist(), strict=True):
        assert ls.add(loss_of(t, None, c, None, None), loss_of(t, None, p, None, None))  # type: ignore[arg-type]
    s = ls.summary()
    d = np.abs(cand - truth) - np.abs(prim - truth)
    assert s["n"] == s["diff_n"] == truth.size
    assert s["mae"] == pytest.approx(np.mean(np.abs(cand - truth)), rel=1e-9)
    assert s["rmse"] == pytest.approx(np.sqrt(np.mean((cand - truth) ** 2)), rel=1e-9)
    assert s["primary_mae"] == pytest.approx(np.mean(np.abs(prim - truth)), rel=1e-9)
    assert s["primary_rmse"] == pytest.approx(np.sqrt(np.mean((prim - truth) ** 2)), rel=1e-9)
    assert s["diff_mean"] == pytest.approx(np.mean(d), rel=1e-9, abs=1e-12)
    assert s["diff_sd"] == pytest.approx(np.std(d, ddof=1), rel=1e-9)


def test_classification_accuracy_and_log_loss_match_scikit_learn() -> None:
    rng = np.random.default_rng(4)
    classes = ["a", "b", "c"]
    n = 2_000
    truth = rng.choice(classes, n)
    scores = {m: rng.dirichlet([1.0, 1.0, 1.0], n) for m in ("prim", "cand")}
    labels = {m: [classes[i] for i in np.argmax(scores[m], axis=1)] for m in scores}
    ls = LabelStats()
    for i in range(n):
        cand, prim = (
            loss_of(
                None, truth[i], None, labels[m][i], dict(zip(classes, scores[m][i], strict=True))
            )
            for m in ("cand", "prim")
        )
        assert ls.add(cand, prim)  # type: ignore[arg-type]
    s = ls.summary()
    assert s["class_n"] == n
    assert s["accuracy"] == pytest.approx(accuracy_score(truth, labels["cand"]), abs=1e-12)
    assert s["primary_accuracy"] == pytest.approx(accuracy_score(truth, labels["prim"]), abs=1e-12)
    assert s["log_loss"] == pytest.approx(log_loss(truth, scores["cand"], labels=classes), rel=1e-9)
    assert s["primary_log_loss"] == pytest.approx(
        log_loss(truth, scores["prim"], labels=classes), rel=1e-9
    )


def test_any_split_merges_to_the_same_bytes() -> None:
    rng = np.random.default_rng(5)
    pairs = [
        ((abs(x), x * x, None), (abs(y), y * y, None))
        for x, y in rng.normal(size=(300, 2)).tolist()
    ]
    whole = LabelStats()
    for m, p in pairs:
        whole.add(m, p)  # type: ignore[arg-type]
    parts = [LabelStats() for _ in range(4)]
    for m, p in pairs:
        parts[int(rng.integers(4))].add(m, p)  # type: ignore[arg-type]
    merged = LabelStats()
    for part in reversed(parts):
        merged.merge(part)
    assert merged.to_record() == whole.to_record()
    assert LabelStats.from_record(whole.to_record()).to_record() == whole.to_record()


def test_losses_that_cannot_be_compared_are_refused() -> None:
    assert loss_of(1.0, None, None, "x", None) is None  # a class label for a regression truth
    assert loss_of(1.0, None, float("nan"), None, None) is None
    assert loss_of(None, "a", None, "a", {"a": 0.0})[2] == pytest.approx(-np.log(1e-15))  # type: ignore[index]
    ls = LabelStats()
    assert not ls.add((1.0, 1.0, None), (0.0, None, None))  # regression beside a class label
    assert ls.is_empty()
