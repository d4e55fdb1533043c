"""The README's first command, as a user runs it (on the session broker)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import streams.status as status_module
from streams.config import Config
from streams.demo_models import CANDIDATE_SPECS

#: what HouseMarket's drift moves (streams/demo_models.py); age_years stays as it was
DRIFTED = {"sqft", "bedrooms", "bathrooms", "distance_km", "lot_size", "region", "property_type"}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    """``understudy ARGS`` as a user runs it after the demo, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_demo_prints_one_final_json_line_per_candidate(
    kafka_bootstrap: str, prefix: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "demo",
            "--events",
            "2000",
            "--json",
            "--prefix",
            prefix,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    lines = done.stdout.decode().splitlines()
    snaps = [json.loads(line) for line in lines]  # nothing but JSON on stdout
    assert sorted(s["candidate"] for s in snaps) == sorted(
        spec.split("=", 1)[0] for spec in CANDIDATE_SPECS
    )
    for s in snaps:
        assert s["scope"] == "CUMULATIVE"
        assert s["coverage"]["pairs"] == 2000
        assert s["coverage"]["requests"] == 2000
        assert s["mae"] is not None and s["mae"] > 0
        law = s["conservation"]
        assert law["requests"] == 2000, law
        assert sum(law["terms"].values()) == law["requests"], law
        assert law["holds"] is True
        assert "requests" not in law["terms"]
        # the market drifts halfway: the drifted features alarm, the one it leaves alone
        # (age_years) does not; the reference is the first quarter of the requests
        assert s["reference"] == {**s["reference"], "ready": True, "source": "first 500 requests"}
        raised = {
            (a["candidate"], a["feature"]) for a in s["alerts_raised"] if a["state"] == "FIRING"
        }
        features = {f for c, f in raised if c == "*" and f not in ("primary",)}
        assert features, (s["reference"], s["window_drift"])
        assert features <= DRIFTED, features - DRIFTED
        assert {row["feature"] for row in s["window_drift"]} >= DRIFTED | {"age_years"}
        assert not any(r["alarm"] for r in s["window_drift"] if r["feature"] == "age_years")
        assert s["slices"] and s["slices"][0]["slice"].split("=")[0] in ("region", "channel")
    # `understudy alerts` shows the same transitions, from the topic
    shown = cli(env, "alerts", "--once", "--json", "--prefix", prefix)
    assert shown.returncode == 0, shown.stderr.decode()[-2000:]
    on_topic = [json.loads(line) for line in shown.stdout.decode().splitlines()]
    raised_anywhere = {
        (a["rule"], a["candidate"], a["feature"], a["state"])
        for s in snaps
        for a in s["alerts_raised"]
    }
    assert {(a["rule"], a["candidate"], a["feature"], a["state"]) for a in on_topic} == (
        raised_anywhere
    )
    human = cli(env, "alerts", "--once", "--prefix", prefix)
    assert human.returncode == 0
    assert len(human.stdout.decode().splitlines()) == len(on_topic)
    assert "FIRING" in human.stdout.decode()
    assert _processes_with_env(f"UNDERSTUDY_PREFIX={prefix}") == []  # no stage left behind
    # `understudy status` reads the same state back from the topics, after the fact
    status = cli(env, "status", "--json", "--prefix", prefix)
    assert status.returncode == 0, status.stderr.decode()[-2000:]
    state = json.loads(status.stdout)
    assert state["complete"] is True
    assert state["lag"] == {"worker": 0, "joiner": 0}  # the demo drained before it ended
    for s in snaps:
        # what the demo printed as settled; labels and verdicts may still move after it
        # (the evaluator's last transaction commits as the demo stops it)
        read = state["candidates"][s["candidate"]]
        for name in ("requests", "pairs", "no_candidate", "no_primary", "dead_letters"):
            assert read["coverage"][name] == s["coverage"][name], name
        assert read["mae"] == s["mae"]
        assert read["coverage"]["labels"] >= s["coverage"]["labels"]
        assert read["verdict"]["comparison"] == s["verdict"]["comparison"]
    latest = {(a["rule"], a["candidate"], a["feature"]): a["state"] for a in on_topic}
    firing = {k for k, v in latest.items() if v == "FIRING"}
    assert {(a["rule"], a["candidate"], a["feature"]) for a in state["firing"]} == firing
    table = cli(env, "status", "--prefix", prefix)
    assert table.returncode == 0
    text = table.stdout.decode()
    assert "lag (records not yet committed by each stage's group): worker 0, joiner 0" in text
    assert f"alerts firing: {len(firing)}" in text
    assert all(s["candidate"] in text for s in snaps)
    # `understudy report` draws the same reading over time, in one HTML file
    page = tmp_path / "report.html"
    drawn = cli(env, "report", "--prefix", prefix, "--out", str(page))
    assert drawn.returncode == 0, drawn.stderr.decode()[-2000:]
    assert f"report: {page} ({len(snaps)} candidates, " in drawn.stderr.decode()
    html = page.read_text(encoding="utf-8")
    history = status_module.read_status(
        Config(bootstrap_servers=kafka_bootstrap, prefix=prefix), history=True
    )
    for s in snaps:
        cand = s["candidate"]
        assert f"<h2>Candidate {cand}</h2>" in html
        assert f"<td>{cand}</td><td>{s['primary']}</td><td>2000</td><td>2000</td>" in html
        windows = history.view.window_history[cand]
        with_mae = sum(w["mae"] is not None for w in windows)
        section = html.split(f"<h2>Candidate {cand}</h2>", 1)[1].split("<h2>", 1)[0]
        mae_line = re.search(r'data-name="MAE" points="([^"]*)"', section)
        assert mae_line is not None and len(mae_line.group(1).split()) == with_mae
        assert "Drift against the reference" in section
        assert "Promotion evidence" in section
    # the demo's drift fired: its alarms are drawn, and its transitions listed
    assert 'class="mark"' in html
    assert f"<h2>Alerts ({len(on_topic)} transitions, {len(firing)} firing now)</h2>" in html
    # `understudy exporter` serves the same figures to Prometheus
    scraped = _scrape_exporter(env, prefix)
    for s in snaps:
        labels = {"candidate": s["candidate"], "primary": s["primary"]}
        assert scraped[("understudy_coverage_total", _k(kind="requests", **labels))] == 2000
        assert scraped[("understudy_mae", _k(**labels))] == s["mae"]
        decision = state["candidates"][s["candidate"]]["verdict"]["decision"]
        assert scraped[("understudy_verdict", _k(decision=decision, **labels))] == 1
    on = {
        (dict(lab)["rule"], dict(lab)["candidate"], dict(lab)["feature"])
        for (name, lab), v in scraped.items()
        if name == "understudy_alert_firing" and v == 1
    }
    assert on == firing
    # a long-lived deployment's metrics are read from their tail only: the latest are there
    monkeypatch.setattr(status_module, "METRICS_TAIL", 20)
    tail = status_module.read_status(Config(bootstrap_servers=kafka_bootstrap, prefix=prefix))
    assert tail.complete
    for s in snaps:
        latest = tail.view.cumulative[s["candidate"]]
        for name in ("requests", "pairs", "no_candidate", "no_primary", "dead_letters"):
            assert latest["coverage"][name] == s["coverage"][name], name
        assert latest["coverage"]["labels"] >= s["coverage"]["labels"]


def _k(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def _scrape_exporter(env: dict[str, str], prefix: str) -> dict[tuple[str, Any], float]:
    """Start ``understudy exporter`` on a free port, scrape it once its figures are in,
    stop it with SIGTERM (it must exit 0, promptly); the samples as Prometheus parses them."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "exporter", "--port", "0", "--prefix", prefix],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        url = re.search(r"serving (http://\S+/metrics)", line)
        assert url, line
        address = url.group(1).replace("0.0.0.0", "127.0.0.1")
        deadline = time.monotonic() + 30
        got: dict[tuple[str, Any], float] = {}
        last: dict[tuple[str, Any], float] = {}
        while time.monotonic() < deadline:
            with urllib.request.urlopen(address, timeout=10) as response:
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                text = response.read().decode()
            got = {
                (sample.name, _k(**sample.labels)): sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
            }
            if got == last and any(name == "understudy_verdict" for name, _ in got):
                break  # the topics hold no more: two scrapes a second apart agree
            last = got
            time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        return got
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_status_of_a_prefix_without_topics_is_a_clear_error(
    kafka_bootstrap: str, prefix: str
) -> None:
    done = cli(
        dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap), "status", "--prefix", prefix
    )
    assert done.returncode == 1
    assert done.stderr.decode().strip() == (
        f"understudy: error: no topic {prefix}.metrics: is the prefix right? (`understudy "
        "topics create` makes a deployment's topics, and the evaluator publishes there)"
    )


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "sigkill"]
)
def test_demo_leaves_no_stage_behind_when_stopped_by_a_signal(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, sig: signal.Signals
) -> None:
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap)
    err = tmp_path / "demo.err"
    with open(err, "wb") as stderr:
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streams.cli",
                "demo",
                "--duration",
                "600",
                "--json",
                "--prefix",
                prefix,
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    stages = f"UNDERSTUDY_PREFIX={prefix}"
    try:
        deadline = time.monotonic() + 180
        while b"requests sent" not in err.read_bytes():  # the live table is up
            assert demo.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "the demo never showed its table"
            time.sleep(0.5)
        assert len(_processes_with_env(stages)) == 3
        demo.send_signal(sig)
        code = demo.wait(60)
        # after SIGKILL the stages get SIGTERM from the kernel (parent-death signal)
        # and stop on their own; after the others the demo has stopped them already
        deadline = time.monotonic() + 60
        while _processes_with_env(stages) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        assert demo.stdout is not None
        demo.stdout.close()
        left = _processes_with_env(stages)
        for pid in left:  # a failed run must not leave stages running on the machine
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert left == []
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 128 + sig
        assert f"interrupted ({sig.name})" in err.read_text()


def _processes_with_env(entry: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.encode() in environ:
            found.append(int(proc.name))
    return found
