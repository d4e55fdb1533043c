"""The worker's compiled functions (``streams/_speedups.c``), or None where it was not built.

The extension is optional (pyproject.toml): a machine without a C compiler installs
without it, and each caller then runs its own Python path, which the tests hold to the
same results. One import, so every caller agrees on whether it is there.
"""

from __future__ import annotations

try:
    from streams import _speedups
except ImportError:  # installed without a C compiler
    _speedups = None  # type: ignore[assignment]

__all__ = ["encode_answers", "float_outcomes", "read_request", "sample_points"]

read_request = _speedups.read_request if _speedups is not None else None
encode_answers = _speedups.encode_answers if _speedups is not None else None
sample_points = _speedups.sample_points if _speedups is not None else None
float_outcomes = _speedups.float_outcomes if _speedups is not None else None
