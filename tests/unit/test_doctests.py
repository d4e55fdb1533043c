"""The Example sections of the metrics modules run and pass."""

from __future__ import annotations

import doctest
from types import ModuleType

import pytest

from streams.metrics import categories, drift, exact, profile, quantiles, sketch, slices


@pytest.mark.parametrize(
    "module",
    [exact, sketch, quantiles, categories, drift, profile, slices],
    ids=lambda m: m.__name__,
)
def test_doctests(module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
