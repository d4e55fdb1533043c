"""The pipeline on a broker that wants SASL_SSL (SCRAM-SHA-512), with a CA made here.

A second embedded broker, in a temporary home on free ports, serves clients on a SASL_SSL
listener only (its own traffic stays PLAINTEXT on another 127.0.0.1 port). Every stage runs
as a real ``understudy -v`` process (debug logging: the most output a stage gives),
configured as a user would: librdkafka options through ``UNDERSTUDY_KAFKA_*``.

- With the right password the whole flow (tap, worker, joiner, evaluator) publishes
  metric snapshots.
- With a wrong one every stage exits non-zero within 30 s and says why.
- The password is in no output of any of those runs, no log file, no repr, no exception.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from support import kill, terminate

from streams import broker
from streams.broker import BrokerSecurity, ScramUser
from streams.config import Config
from streams.credentials import faust_credentials
from streams.demo_models import CANDIDATE_SPECS
from streams.errors import BrokerError
from streams.kafka import Topics, client_config, ensure_topics
from streams.schemas import default_codec

log = logging.getLogger(__name__)

USER = "understudy-svc"
# Random, so finding it anywhere can only mean it leaked (never a coincidence in a log).
PASSWORD = "pw-" + secrets.token_hex(16)
WRONG = "wrong-" + secrets.token_hex(16)
EVENTS = 400
CANDIDATES = tuple(spec.split("=", 1)[0] for spec in CANDIDATE_SPECS)
FAIL_WITHIN_S = 30.0


class _Captured(logging.Handler):
    """Every log record of the test process, formatted, for the password check."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Secured:
    """The SASL_SSL broker of this module, and everything its runs wrote."""

    info: broker.BrokerInfo
    security: BrokerSecurity
    ca: Path
    workdir: Path
    captured: _Captured
    texts: list[str] = field(default_factory=list)  # outputs not in a file (reprs, errors)
    timings: dict[str, float] = field(default_factory=dict)

    def config(self, password: str, prefix: str) -> Config:
        return Config(
            bootstrap_servers=self.info.bootstrap,
            prefix=prefix,
            window_ms=2000,
            lateness_ms=1000,
            idle_flush_ms=1500,
            kafka={
                "security.protocol": "SASL_SSL",
                "sasl.mechanisms": "SCRAM-SHA-512",
                "sasl.username": USER,
                "sasl.password": password,
                "ssl.ca.location": str(self.ca),
            },
        )


def make_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a broker certificate for 127.0.0.1 signed by it (openssl CLI).

    Returns (CA certificate, broker certificate, broker PKCS#8 key), all PEM. The broker's
    certificate names 127.0.0.1 and localhost: librdkafka and Python's ssl check the host.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise AssertionError("this test makes its certificates with the `openssl` command")
    ca_key, ca_crt = directory / "ca.key", directory / "ca.pem"
    key, csr, crt = directory / "broker.key", directory / "broker.csr", directory / "broker.pem"
    ext = directory / "broker.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    curve = ["-pkeyopt", "ec_paramgen_curve:P-256"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run("genpkey", "-algorithm", "EC", *curve, "-out", str(ca_key))
    run(
        *("req", "-x509", "-key", str(ca_key), "-out", str(ca_crt), "-days", "2"),
        *("-subj", "/CN=understudy test CA"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )
    run("genpkey", "-algorithm", "EC", *curve, "-out", str(key))
    run("req", "-new", "-key", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run(
        *("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key)),
        *("-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext)),
    )
    return ca_crt, crt, key


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    captured = _Captured()
    captured.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(captured)
    root.setLevel(logging.DEBUG)
    workdir = tmp_path_factory.mktemp("sasl-ssl")
    home = workdir / "broker"
    started = time.monotonic()
    ca, certificate, key = make_pki(workdir)
    pki_s = time.monotonic() - started
    security = BrokerSecurity(
        certificate=certificate, private_key=key, users=(ScramUser(USER, PASSWORD),)
    )
    try:
        info = broker.start(home=home, security=security, progress=log.info)
        secured = Secured(info, security, ca, workdir, captured)
        secured.timings["certificates"] = pki_s
        secured.timings["broker start"] = time.monotonic() - started - pki_s
        yield secured
    finally:
        stopping = time.monotonic()
        broker.stop(home)
        root.removeHandler(captured)
        root.setLevel(previous_level)
        log.info("broker stop took %.1fs", time.monotonic() - stopping)
    timings = ", ".join(f"{name} {s:.1f}s" for name, s in secured.timings.items())
    print(f"\nSASL_SSL timings: {timings}", file=sys.stderr)


def _prefix() -> str:
    return f"s{uuid.uuid4().hex[:10]}"


def _cli(secured: Secured, cfg: Config, name: str, *argv: str) -> subprocess.Popen[bytes]:
    """``understudy -v <argv>`` as its own process, configured through the environment.

    ``-v`` (debug logging) on purpose: the password must stay out of the most talkative
    output our stages can give. Output goes to ``<workdir>/<name>.log``.
    """
    env = {**os.environ, **cfg.to_env()}
    with open(secured.workdir / f"{name}.log", "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "-v", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _read(cfg: Config, topic: str, idle_s: float = 1.0) -> list[bytes]:
    """Every committed value of ``topic``, read with the deployment's client options."""
    consumer = Consumer(
        client_config(
            cfg,
            **{
                "group.id": f"read-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            },
        )
    )
    try:
        partitions = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in sorted(partitions)])
        values: list[bytes] = []
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for message in consumer.consume(num_messages=10000, timeout=0.3):
                value = message.value()
                if message.error() is None and value is not None:
                    values.append(value)
                    last = time.monotonic()
        return values
    finally:
        consumer.close()


def _cumulative(cfg: Config) -> dict[str, dict[str, Any]]:
    codec = default_codec()
    last: dict[str, dict[str, Any]] = {}
    for value in _read(cfg, Topics(cfg.prefix).metrics):
        snapshot = codec.decode_as("MetricSnapshot", value)
        if snapshot["scope"] == "CUMULATIVE":
            last[snapshot["candidate"]] = snapshot
    return last


def test_the_pipeline_runs_with_the_right_credentials(secured: Secured) -> None:
    cfg = secured.config(PASSWORD, _prefix())
    topics = _cli(secured, cfg, "ok-topics", "topics", "create")
    assert topics.wait(60) == 0, (secured.workdir / "ok-topics.log").read_text()
    _warm_up_evaluator(secured, cfg)
    started = time.monotonic()
    candidates = [arg for spec in CANDIDATE_SPECS for arg in ("--candidate", spec)]
    procs = {
        "evaluator": _cli(secured, cfg, "ok-evaluator", "evaluator", "--loglevel", "debug"),
        "worker": _cli(secured, cfg, "ok-worker", "worker", *candidates),
        "joiner": _cli(secured, cfg, "ok-joiner", "joiner"),
        "tap": _cli(
            secured, cfg, "ok-tap", "demo-service", "--events", str(EVENTS), "--rate", "200"
        ),
    }
    try:
        deadline = time.monotonic() + 90
        final: dict[str, dict[str, Any]] = {}
        while not _complete(final):
            for name, proc in procs.items():
                if name != "tap" and proc.poll() is not None:
                    log_text = (secured.workdir / f"ok-{name}.log").read_text()
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{log_text}")
            if time.monotonic() > deadline:
                coverage = {c: s["coverage"] for c, s in final.items()}
                raise AssertionError(
                    f"no final snapshots after 90s: {coverage}; evaluator errors:\n"
                    + _errors(secured.workdir / "ok-evaluator.log")
                )
            time.sleep(1.0)
            final = _cumulative(cfg)
        secured.timings["tap..evaluator to final snapshots"] = time.monotonic() - started
    finally:
        _stop_all(procs, secured.timings)
    assert procs["tap"].returncode == 0, (secured.workdir / "ok-tap.log").read_text()
    for candidate, snapshot in final.items():
        assert snapshot["coverage"]["pairs"] == EVENTS, (candidate, snapshot["coverage"])


def _warm_up_evaluator(secured: Secured, cfg: Config) -> None:
    """Run the evaluator once until ready, so that its own topics exist before the real run.

    A workaround, not part of what is tested: faust creates its changelog topics at start
    and its consumer may join the group before its metadata lists them. Its snapshot then
    says 0 partitions, and every partial crashes the agent with PartitionsMismatch until
    the next metadata refresh (5 min) while the process stays up (seen in 2 of 5 SASL_SSL
    runs here; nothing in that race is specific to SASL, but it was not seen on a plain
    broker). Until ``topics create`` makes those topics or the evaluator waits for them, a
    first run creates them and the second does the work.
    """
    log_file = secured.workdir / "ok-evaluator-warmup.log"
    warmup = _cli(secured, cfg, "ok-evaluator-warmup", "evaluator", "--loglevel", "info")
    started = time.monotonic()
    try:
        while "Worker]: Ready" not in log_file.read_text(errors="replace"):
            if warmup.poll() is not None or time.monotonic() - started > 60:
                raise AssertionError(f"evaluator not ready:\n{log_file.read_text()}")
            time.sleep(0.2)
    finally:
        # SIGTERM: a killed member would hold the group (and the real run) for its session
        terminate(warmup, timeout=10)
    secured.timings["evaluator warm-up"] = time.monotonic() - started


def _stop_all(procs: dict[str, subprocess.Popen[bytes]], timings: dict[str, float]) -> None:
    """SIGTERM every stage at once; SIGKILL what still runs 10 s later (and say so)."""
    stopping = time.monotonic()
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in procs.items():
        try:
            proc.wait(max(0.1, stopping + 10 - time.monotonic()))
            timings[f"{name} stops on SIGTERM (rc {proc.returncode})"] = time.monotonic() - stopping
        except subprocess.TimeoutExpired:
            kill(proc)
            timings[f"{name} ignored SIGTERM for 10s: killed"] = time.monotonic() - stopping


def _complete(final: dict[str, dict[str, Any]]) -> bool:
    """Every candidate's cumulative snapshot counts every request of the run."""
    return sorted(final) == sorted(CANDIDATES) and all(
        s["coverage"]["requests"] == EVENTS for s in final.values()
    )


def _errors(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(line[:300] for line in lines if "ERROR" in line or "Crashed" in line)


def test_a_wrong_password_stops_every_stage_with_the_reason(secured: Secured) -> None:
    prefix = _prefix()
    ensure_topics(secured.config(PASSWORD, prefix))  # only the password is wrong below
    cfg = secured.config(WRONG, prefix)
    started = time.monotonic()
    procs = {
        "topics": _cli(secured, cfg, "bad-topics", "topics", "create"),
        "worker": _cli(secured, cfg, "bad-worker", "worker", "--candidate", CANDIDATE_SPECS[0]),
        "joiner": _cli(secured, cfg, "bad-joiner", "joiner"),
        "evaluator": _cli(secured, cfg, "bad-evaluator", "evaluator"),
    }
    took: dict[str, float] = {}
    while len(took) < len(procs) and time.monotonic() - started < FAIL_WITHIN_S:
        for name, proc in procs.items():
            if name not in took and proc.poll() is not None:
                took[name] = time.monotonic() - started
        time.sleep(0.1)
    hung = [name for name in procs if name not in took]
    for proc in procs.values():
        terminate(proc, timeout=5)
    secured.timings.update({f"wrong password: {n} exits": s for n, s in took.items()})
    assert not hung, f"still running {FAIL_WITHIN_S:.0f}s after start: {hung}"
    for name, proc in procs.items():
        output = (secured.workdir / f"bad-{name}.log").read_text()
        assert proc.returncode != 0, (name, output)
        assert "Authentication failed" in output, (name, output)
        assert "SCRAM-SHA-512" in output, (name, output)
        assert "Traceback" not in output, (name, output)


def test_the_broker_refuses_an_unusable_key(secured: Secured, tmp_path: Path) -> None:
    pkcs1 = tmp_path / "rsa.key"
    pkcs1.write_text("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
    security = BrokerSecurity(
        certificate=secured.security.certificate,
        private_key=pkcs1,
        users=(ScramUser(USER, PASSWORD),),
    )
    with pytest.raises(BrokerError, match="PKCS#8") as caught:
        broker.start(home=tmp_path / "broker", security=security, timeout=30)
    secured.texts += [str(caught.value), repr(caught.value)]
    assert broker.status(tmp_path / "broker") is None


def test_the_password_is_nowhere(secured: Secured) -> None:
    """No output, log file, repr or error of this module's runs holds the password."""
    cfg = secured.config(PASSWORD, "any")
    secured.texts += [
        repr(cfg),
        str(cfg.redacted()),
        repr(secured.security),
        str(secured.security),
        repr(secured.info),
        repr(faust_credentials(cfg.kafka)),
    ]
    checking = time.monotonic()
    status = subprocess.run(
        [sys.executable, "-m", "streams.cli", "broker", "status", "--home", str(secured.info.home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    secured.texts += [status.stdout, status.stderr]
    secured.texts += secured.captured.lines
    command = Path(f"/proc/{secured.info.pid}/cmdline")
    if command.exists():
        secured.texts.append(command.read_bytes().decode(errors="replace"))

    # Kafka's data too, but not its offset indexes: numbers only, preallocated at 10 MB each
    files = [
        p
        for p in secured.workdir.rglob("*")
        if p.is_file() and p.suffix not in (".index", ".timeindex")
    ]
    logs = [p.name for p in files if p.suffix == ".log" or ".log." in p.name]
    # the stage outputs of both runs and the broker's log: a run that wrote nothing would
    # make this test pass for nothing
    assert {"ok-evaluator.log", "bad-evaluator.log", "broker.log"} <= set(logs), logs
    for path in files:
        data = path.read_bytes()
        assert PASSWORD.encode() not in data and WRONG.encode() not in data, path
    for text in secured.texts:
        assert PASSWORD not in text and WRONG not in text, text

    # server.properties holds the broker's private key: its owner's eyes only
    properties = secured.info.home / "server.properties"
    assert stat.S_IMODE(properties.stat().st_mode) == 0o600
    assert os.access(properties, os.R_OK)
    secured.timings[f"password check over {len(files)} files"] = time.monotonic() - checking
