"""How often the promotion verdict decides, and how soon: issue 8's simulation settings.

500 simulated comparisons per setting (``streams.verdicts.simulation``): absolute errors
|N(0, 1)| for the primary and |N(0, (1 - e)^2)| for the candidate, the verdict read after
every 100 pairs up to 20,000, alpha 0.05, the default planned n (10,000). Prints one line
per gain ``e``. No broker: pure statistics.

Run: ``python bench/verdicts.py [--runs 500] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runnable from a checkout

from streams.verdicts.simulation import simulate


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    for e, within in ((0.0, 20_000), (0.02, 20_000), (0.03, 20_000), (0.05, 10_000)):
        started = time.perf_counter()
        r = simulate(e, runs=args.runs, seed=args.seed, within=within)
        took = time.perf_counter() - started
        print(f"e={e:.2f}: {r} ({args.runs} runs, {took:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
