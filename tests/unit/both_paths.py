"""Run a test module twice: with the C extension's function, and with the Python path alone.

Each module that compares a compiled path with its Python one (the Request decoder, the
Prediction encoder) uses :func:`compiled_and_python` as its autouse fixture. The compiled
run is skipped where the extension was not built; test_request_decoder.py's
``test_the_c_decoder_is_built`` then fails, so a missing build is never silent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest


def compiled_and_python(module: ModuleType, attribute: str) -> Callable[..., Iterator[str]]:
    """An autouse module fixture: ``module.attribute`` (the C function, or None where not
    built) as it is, then set to None, so the module's own Python path runs."""

    @pytest.fixture(autouse=True, scope="module", params=["compiled", "python"])
    def path(request: Any) -> Iterator[str]:
        if request.param == "compiled":
            if getattr(module, attribute) is None:
                pytest.skip("the C extension was not built (see test_the_c_decoder_is_built)")
            yield request.param
            return
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, attribute, None)
            yield request.param

    return path
