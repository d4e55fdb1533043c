"""The benches run to the end on a small load and print their ratio or report lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("worker", "joiner", "evaluator")


@pytest.mark.parametrize(
    ("script", "args", "ratio"),
    [
        ("joiner.py", ["--requests", "3000", "--rounds", "2"], r"^ratio raw/joiner: \d+\.\d\d$"),
        ("tap.py", ["--calls", "2000", "--warmup", "200"], r"^ratio tap/raw: mean \d+\.\d\dx"),
        (
            "labels.py",
            ["--requests", "2000"],
            r"^awaiting labels: 2,000 requests .*\nrestore: [\d.]+ s",
        ),
        (
            "worker.py",
            ["--requests", "3000"],
            r"^passthrough: [\d,]+ requests/s\nworker: [\d,]+ requests/s\n"
            r"worker/passthrough: \d+\.\d\d \(higher is better; goal >= 0\.6\)$",
        ),
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


def test_soak_prints_its_report_lines(kafka_bootstrap: str) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    args = ["--minutes", "0.3", "--rate", "50", "--lag-every", "5", "--drain-s", "60"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    for line in (
        *(rf"^rss {s}: [\d.]+ MiB -> [\d.]+ MiB growth [+-][\d.]+%" for s in STAGES),
        *(rf"^cpu {s}: \d+%$" for s in STAGES),
        r"^lag t=\d+s worker=-?\d+ joiner=-?\d+$",
        r"^lag joiner: at end -?\d+",
        r"^freshness: (p50 [\d.]+ s, p99 [\d.]+ s|n/a)",
        *(rf"^{name}: [\d,.]+ events/s$" for name in ("tap", "worker", "joiner", "partials")),
        r"^tap dropped: \d+ ",
        r"^drained: ",
    ):
        assert re.search(line, done.stdout, re.MULTILINE), (line, done.stdout)


def test_statistics_bench_prints_its_lines() -> None:
    """No broker: profiles, merges and drift alone (bench/statistics.py)."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "statistics.py"),
            "--pairs",
            "3000",
            "--window",
            "1000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in (
        r"^statistics: [\d,]+ pairs/s ",
        r"^numpy baseline: [\d,]+ values/s ",
        r"^ratio statistics/baseline time: \d+\.\d \(lower is better\)$",
    ):
        assert re.search(line, done.stdout, re.MULTILINE), done.stdout
