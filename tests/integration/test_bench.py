"""The benches run to the end on a small load and print their ratio lines (no timing checks)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("script", "args", "ratio"),
    [
        ("joiner.py", ["--requests", "3000"], r"^ratio raw/joiner: \d+\.\d\d$"),
        ("tap.py", ["--calls", "2000", "--warmup", "200"], r"^ratio tap/raw: mean \d+\.\d\dx"),
    ],
)
def test_bench_prints_its_ratio(
    kafka_bootstrap: str, script: str, args: list[str], ratio: str
) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(ratio, done.stdout, re.MULTILINE), done.stdout
