"""Every command fails fast and in one line when Kafka is not there or a setting is wrong.

No broker needed: the commands point at a closed port on 127.0.0.1, so every connection is
refused as it is when Kafka is down. Each command runs as a real subprocess (as a
supervisor would start it); a few run side by side, since each mostly waits.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.kafka import REACH_TIMEOUT_S

#: judged on timing: run alone after the parallel phase (see the Makefile)
pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 15.0
SECRET = "hunter2-s3cr3t"

COMMANDS = [
    ["topics", "create"],
    ["topics", "check"],
    ["worker", "--candidate", "ridge@2=streams.demo_models:ridge_candidate"],
    ["joiner"],
    ["evaluator"],
    ["demo-service", "--events", "10"],
    ["demo", "--events", "10"],
    ["alerts", "--once"],
    ["promote", "m@2"],
    ["status"],
    ["report", "--out", "/nonexistent-dir/report.html"],
    ["exporter", "--port", "0"],
]


def closed_port() -> str:
    """An address where nothing listens: bound once to get a free port, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("UNDERSTUDY_", "KAFKA_"))}
    out["PYTHONPATH"] = str(ROOT)
    out["UNDERSTUDY_HOME"] = "/nonexistent-understudy-home"  # never an embedded broker
    out.update(extra)
    return out


def start(args: list[str], environ: dict[str, str]) -> tuple[subprocess.Popen[str], float]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=environ,
    )
    return proc, time.monotonic()


def finish(proc: subprocess.Popen[str], started: float) -> tuple[int, float, list[str]]:
    _, err = proc.communicate(timeout=60)
    return proc.returncode, time.monotonic() - started, err.splitlines()


def assert_one_clear_line(args: list[str], rc: int, took: float, lines: list[str]) -> str:
    assert rc == 1, (args, rc, lines)
    assert took < LIMIT_S, (args, took)
    assert len(lines) == 1 and lines[0].strip(), (args, lines)
    assert "Traceback" not in lines[0]
    assert lines[0].startswith("understudy: error: ")
    return lines[0]


def test_every_command_fails_within_15_s_in_one_line_without_a_broker() -> None:
    bootstrap = closed_port()
    environ = env(KAFKA_BOOTSTRAP_SERVERS=bootstrap)
    for wave in (COMMANDS[:4], COMMANDS[4:]):  # side by side, but not all on two cores
        running = [(args, *start(args, environ)) for args in wave]
        try:
            for args, proc, started in running:
                rc, took, lines = finish(proc, started)
                line = assert_one_clear_line(args, rc, took, lines)
                assert f"cannot reach Kafka at {bootstrap} within {REACH_TIMEOUT_S:.0f} s" in line
                assert "Connection refused" in line
        finally:
            for _, proc, _ in running:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()


@pytest.mark.parametrize(
    ("variables", "named", "closest"),
    [
        ({"UNDERSTUDY_KAFKA_SASL_MECHANISMZ": "PLAIN"}, "sasl.mechanismz", None),
        ({"UNDERSTUDY_KAFKA_SECURITY_PROTOCOL": "PLAINTXT"}, "security.protocol", None),
        ({"UNDERSTUDY_PARTITONS": "3"}, "UNDERSTUDY_PARTITONS", "UNDERSTUDY_PARTITIONS"),
        (
            {"UNDERSTUDY_KAFAK_SASL_PASSWORD": SECRET},
            "UNDERSTUDY_KAFAK_SASL_PASSWORD",
            "UNDERSTUDY_KAFKA_SASL_PASSWORD",
        ),
        ({"UNDERSTUDY_SCHEMA_REGISTRY_URL": "http://r:8081"}, "not supported", None),
    ],
)
def test_a_wrong_setting_is_refused_at_once_naming_it(
    variables: dict[str, str], named: str, closest: str | None
) -> None:
    environ = env(
        KAFKA_BOOTSTRAP_SERVERS=closed_port(), UNDERSTUDY_KAFKA_SASL_PASSWORD=SECRET, **variables
    )
    args = ["topics", "check"]
    rc, took, lines = finish(*start(args, environ))
    line = assert_one_clear_line(args, rc, took, lines)
    assert took < REACH_TIMEOUT_S  # refused before any connection attempt
    assert named in line
    if closest:
        assert f"did you mean {closest}?" in line
    assert SECRET not in line


def test_a_bad_rules_file_stops_the_evaluator_at_once_naming_the_rule(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: slow\n    metric: latency.candidate_p99_ms\n"
        "    comparison: '>'\n    treshold: 500\n    severity: warning\n"
    )
    args = ["evaluator", "--rules", str(rules)]
    rc, took, lines = finish(*start(args, env(KAFKA_BOOTSTRAP_SERVERS=closed_port())))
    line = assert_one_clear_line(args, rc, took, lines)
    assert took < REACH_TIMEOUT_S  # before any connection attempt
    assert str(rules) in line and "'slow'" in line and "treshold" in line
    assert "did you mean 'threshold'?" in line


def test_a_missing_baseline_stops_the_evaluator_at_once(tmp_path: Path) -> None:
    args = ["evaluator", "--baseline", str(tmp_path / "nope.avro")]
    rc, took, lines = finish(*start(args, env(KAFKA_BOOTSTRAP_SERVERS=closed_port())))
    line = assert_one_clear_line(args, rc, took, lines)
    assert took < REACH_TIMEOUT_S
    assert "nope.avro" in line


@pytest.mark.parametrize(
    "args",
    [
        ["evaluator", "--rules", "{file}"],
        ["evaluator", "--config", "{file}"],
        ["joiner", "--config", "{file}"],
    ],
)
def test_a_file_that_is_not_utf8_text_is_one_clear_line(tmp_path: Path, args: list[str]) -> None:
    """A binary file given as rules or config (a wrong path) is named, not a traceback."""
    bad = tmp_path / "binary.yaml"
    bad.write_bytes(b"\x00\xff\xfe garbage")
    args = [a.format(file=bad) for a in args]
    rc, took, lines = finish(*start(args, env(KAFKA_BOOTSTRAP_SERVERS=closed_port())))
    line = assert_one_clear_line(args, rc, took, lines)
    assert took < REACH_TIMEOUT_S
    assert str(bad) in line and "not UTF-8" in line
