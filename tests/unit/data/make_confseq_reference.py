"""Writes confseq_reference.json: the two-sided normal mixture boundary from ``confseq``.

``confseq`` (Howard et al.'s package, PyPI 0.0.11) builds a C++ extension that needs the
Boost headers and a pybind11 newer than the one its build pins (2.6.2 does not compile on
Python 3.11), so it cannot be a dev dependency that installs everywhere. The reference
values are therefore computed once with it and checked in. To regenerate:

    apt-get install libboost-dev
    .venv/bin/pip install 'pybind11>=2.10' scikit-build cmake ninja
    .venv/bin/pip install --no-build-isolation confseq==0.0.11
    .venv/bin/python tests/unit/data/make_confseq_reference.py

Each row: n, sigma, alpha, planned n, and confseq's
``normal_mixture_bound(v=n sigma^2, alpha, v_opt=n* sigma^2, alpha_opt=alpha,
is_one_sided=False) / n``, the half-width of the confidence sequence for the mean.
"""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import numpy as np
from confseq.boundaries import normal_mixture_bound


def main() -> None:
    rows = []
    for alpha in (0.05, 0.025, 0.0125, 0.01):
        for planned in (1_000, 10_000, 100_000):
            for sigma in (0.3, 1.0, 4.2):
                for n in (2, 10, 100, 1_000, 10_000, 123_456, 1_000_000):
                    v, v_opt = n * sigma**2, planned * sigma**2
                    bound = float(normal_mixture_bound(v, alpha, v_opt, alpha, False)) / n
                    rows.append([n, sigma, alpha, planned, bound])
    head = {"confseq": version("confseq"), "numpy": np.__version__}
    lines = ",\n".join(json.dumps(r) for r in rows)
    path = Path(__file__).with_name("confseq_reference.json")
    path.write_text(json.dumps(head)[:-1] + ', "rows": [\n' + lines + "\n]}\n")
    print(f"{len(rows)} rows -> {path}")


if __name__ == "__main__":
    main()
