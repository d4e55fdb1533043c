"""Writes changelog_930f78a.json: a joiner partition's changelog as release 930f78a wrote it.

Made once with the code of commit 930f78a, the release before the fast joiner (its open
joins kept their context slices as lists), so that ``test_changelog_release`` can check
that such a changelog still restores and continues with the same partials. Regenerating
it with later code tests less: keep the checked-in file. To make it, run the script with
that release's package first on the path (a worktree of the commit)::

    PYTHONPATH=<worktree of 930f78a> .venv/bin/python tests/unit/data/make_release_changelog.py

The file holds the state's parameters, the changelog records of the events before the
cut in log order (hex; ``null`` for a tombstone), and the partials emitted before the cut
(Avro ``Partial`` records, hex).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the unit tests' helpers

from test_changelog_release import CHANGELOG, release_events  # noqa: E402
from test_joinstate import encode_acc  # noqa: E402
from test_joinstate_labels import W, feed  # noqa: E402

import streams  # noqa: E402
from streams.join import segments  # noqa: E402
from streams.joinstate import PartitionState  # noqa: E402

LATENESS = 100
TTL = 500
BATCH = 60


def main() -> None:
    # bases now and then, so that the log holds tombstoned segments too
    segments.BASE_MIN_BYTES = 0
    segments.BASE_RATIO = 4
    evs = release_events()
    cut = (len(evs) * 3 // 5) // BATCH * BATCH
    st = PartitionState(0, W, LATENESS, TTL)
    records: list[list[str | None]] = []
    emitted: list[list[object]] = []
    for lo in range(0, cut, BATCH):
        feed(st, evs[lo : lo + BATCH])
        for e in st.advance():
            key = (e.candidate, e.window_start)
            emitted.append([e.candidate, e.window_start, e.seq, encode_acc(key, e.stats).hex()])
        records += [[k.hex(), None if v is None else v.hex()] for k, v in st.changes(encode_acc)]
    source = Path(streams.__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    out = {
        "made_by": f"tests/unit/data/make_release_changelog.py with the code of {commit}",
        "window_ms": W,
        "lateness_ms": LATENESS,
        "ttl_ms": TTL,
        "batch": BATCH,
        "cut": cut,
        "records": records,
        "emitted": emitted,
    }
    CHANGELOG.write_text(json.dumps(out, indent=0) + "\n")


if __name__ == "__main__":
    main()
