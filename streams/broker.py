"""The embedded Apache Kafka broker: one real single-node cluster without Docker.

Understudy talks to a real Kafka in every mode (DESIGN.md section 6). When no cluster is
configured and no Docker engine answers, this module runs the official Apache Kafka jars
(resolved from Maven Central by the small pom in ``deploy/kafka/``) as one KRaft process
that is both broker and controller, listening on 127.0.0.1 only.

Layout of a broker home (default ``<cache>/broker``)::

    server.properties  log4j2.properties   rewritten on every start
    cluster.json       cluster id and the last ports, kept across restarts
    broker.json        the running broker (pid, bootstrap); removed by stop()
    broker.log         stdout and stderr of the JVM (the previous run in broker.log.1)
    data/              the Kafka log directory (topics, metadata log)
    .lock              serialises start() and stop() between processes

The broker outlives the Python process that started it (it runs in its own session), so
``understudy broker start`` returns and later commands reuse the same broker.

Finding *which* broker to use (environment, Docker, embedded) is not decided here; this
module only offers the two ways to start one: :func:`start` and :func:`start_testcontainer`.
"""

from __future__ import annotations

import atexit
import base64
import fcntl
import gc
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.errors import BrokerError, MissingToolError

__all__ = [
    "KAFKA_IMAGE",
    "KAFKA_VERSION",
    "SINGLE_NODE_SETTINGS",
    "BrokerInfo",
    "cache_dir",
    "docker_available",
    "jars_dir",
    "resolve_jars",
    "start",
    "start_testcontainer",
    "status",
    "stop",
]

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

KAFKA_VERSION = "4.4.0"
"""Apache Kafka version of the embedded broker; must match ``deploy/kafka/pom.xml``."""
LOG4J_VERSION = "2.26.1"
SLF4J_VERSION = "2.0.17"
MIN_JAVA = 17
"""Kafka 4.x brokers refuse to run on older Java."""

KAFKA_IMAGE = "apache/kafka:4.1.0"
"""Official Apache Kafka image used when a Docker engine is available."""

INSTALL_HINT = (
    "Install them, e.g. `sudo apt-get install openjdk-17-jre-headless maven` (Debian/Ubuntu) "
    "or `brew install openjdk@17 maven` (macOS), or set KAFKA_BOOTSTRAP_SERVERS to use an "
    "existing Kafka cluster instead of the embedded broker."
)

SINGLE_NODE_SETTINGS: dict[str, str] = {
    # Internal topics default to 3 replicas (and min.isr 2): one node could never create
    # them, so consumer groups and transactions would hang. One replica is all we have.
    "offsets.topic.replication.factor": "1",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # Tests and the demo start consumers and expect an assignment now, not in 3 s.
    "group.initial.rebalance.delay.ms": "0",
    # Topics are created by the topic admin code with the right partition counts; a typo'd
    # topic name must fail instead of silently creating a 1-partition topic.
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
}
"""Broker settings every single-node cluster we start needs (embedded or container)."""

_POM = Path(__file__).resolve().parent.parent / "deploy" / "kafka" / "pom.xml"
_MARKER = ".complete"
_RECORD = "broker.json"
_CLUSTER = "cluster.json"
_CONTAINER_CONTROLLER_PORT = 9093

# Brokers this process launched: their exit status is collected through Popen (no zombie
# that still looks alive to kill(pid, 0), no "still running" warning for a stopped one).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@atexit.register
def _detach_children() -> None:
    """Leave running brokers running at exit, without Popen's "still running" warning.

    Outliving the process that started it (``understudy broker start``) is the point of
    the broker; the warning is meant for children someone forgot. Marking the handle done
    changes nothing for the process itself.
    """
    for child in _CHILDREN.values():
        if child.poll() is None:
            child.returncode = 0
    _CHILDREN.clear()


@dataclass(frozen=True)
class BrokerInfo:
    """A running broker: where clients connect and where to look when something is wrong."""

    bootstrap: str
    pid: int
    home: Path
    log_file: Path


# ---------------------------------------------------------------------------------------
# Locations and tools


def cache_dir() -> Path:
    """Return where downloaded jars and the default broker home live.

    ``$UNDERSTUDY_HOME`` wins (CI caches and tests point it elsewhere), then
    ``$XDG_CACHE_HOME/understudy``, then ``~/.cache/understudy``: outside the git tree, so a
    checkout stays clean and several checkouts share one download.
    """
    explicit = os.environ.get("UNDERSTUDY_HOME")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "understudy"


def jars_dir() -> Path:
    """Return the directory that holds the Kafka runtime classpath once resolved."""
    return cache_dir() / f"kafka-{KAFKA_VERSION}" / "jars"


def _default_home() -> Path:
    return cache_dir() / "broker"


def _java_path() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java")


def _java_major(version_output: str) -> int | None:
    """Parse ``java -version`` output: ``"17.0.15"`` -> 17, old style ``"1.8.0_292"`` -> 8."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        major = int(match.group(2))
    return major


def _require_tools(*, need_mvn: bool) -> str:
    """Check for Java 17+ (and Maven when jars must be resolved); return the java path.

    Everything missing is reported in one error, with the command that installs it, so a
    user fixes their machine once instead of discovering the tools one by one.
    """
    problems: list[str] = []
    java = _java_path()
    if java is None:
        problems.append(f"Java {MIN_JAVA}+ (`java` not found on PATH or in JAVA_HOME)")
    else:
        try:
            result = subprocess.run(
                [java, "-version"], capture_output=True, text=True, timeout=30, check=False
            )
            output = result.stderr + result.stdout
        except (OSError, subprocess.SubprocessError) as exc:
            output = str(exc)
        major = _java_major(output)
        if major is None:
            problems.append(f"Java {MIN_JAVA}+ (`{java} -version` printed no version)")
        elif major < MIN_JAVA:
            problems.append(f"Java {MIN_JAVA}+ (found Java {major} at {java})")
    if need_mvn and shutil.which("mvn") is None:
        problems.append("Maven (`mvn` not found on PATH; it downloads the Kafka jars once)")
    if problems:
        raise MissingToolError(
            "The embedded Kafka broker needs " + " and ".join(problems) + ". " + INSTALL_HINT
        )
    assert java is not None
    return java


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` so two processes never start one broker twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------
# Jars


def _jars_complete(directory: Path) -> bool:
    marker = directory / _MARKER
    try:
        names = json.loads(marker.read_text())["jars"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(names) and all((directory / name).is_file() for name in names)


def _fallback_pom() -> str:
    """The pom used when ``deploy/kafka/pom.xml`` is not shipped (a non-editable install)."""
    deps = [
        ("org.apache.kafka", "kafka_2.13", KAFKA_VERSION),
        ("org.slf4j", "slf4j-api", SLF4J_VERSION),
        ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j2-impl", LOG4J_VERSION),
    ]
    body = "".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>\n"
        for g, a, v in deps
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>dev.understudy</groupId><artifactId>embedded-kafka</artifactId>\n"
        "  <version>1</version><packaging>pom</packaging>\n"
        f"  <dependencies>\n{body}  </dependencies>\n"
        "</project>\n"
    )


def resolve_jars(progress: Progress | None = None) -> Path:
    """Download the Kafka broker's runtime classpath once and return its directory.

    Maven resolves ``deploy/kafka/pom.xml`` into a temporary directory next to the cache;
    only after it succeeded is a marker written and the directory renamed into place, so a
    run killed half-way never leaves a cache that looks complete. Later calls return at once.
    """
    target = jars_dir()
    if _jars_complete(target):
        return target
    _require_tools(need_mvn=True)
    mvn = shutil.which("mvn")
    assert mvn is not None
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with _locked(parent / ".lock"):
        if _jars_complete(target):
            return target
        # Leftovers of runs that were killed: nobody else works here while we hold the lock.
        for stale in parent.glob("resolve-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="resolve-", dir=parent))
        try:
            pom = work / "pom.xml"
            # Copy the pom so Maven never writes next to the source tree (it may be read-only).
            if _POM.is_file():
                shutil.copyfile(_POM, pom)
            else:
                pom.write_text(_fallback_pom())
            out = work / "jars"
            if progress is not None:
                progress(
                    f"Resolving Apache Kafka {KAFKA_VERSION} jars with Maven into {target} "
                    "(first run only; this can take a minute)"
                )
            log.info("resolving Kafka %s jars with %s", KAFKA_VERSION, mvn)
            started = time.monotonic()
            cmd = [
                mvn,
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={out}",
                "-DincludeScope=runtime",
            ]
            try:
                result = subprocess.run(
                    cmd, cwd=work, capture_output=True, text=True, timeout=1800, check=False
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise BrokerError(f"Maven could not resolve the Kafka jars: {exc}") from exc
            jars = sorted(p.name for p in out.glob("*.jar")) if out.is_dir() else []
            if result.returncode != 0 or not jars:
                tail = _tail_text(result.stdout + result.stderr, 30)
                raise BrokerError(
                    f"Maven could not resolve the Kafka {KAFKA_VERSION} jars "
                    f"(exit code {result.returncode}); is Maven Central reachable?\n{tail}"
                )
            (out / _MARKER).write_text(json.dumps({"kafka": KAFKA_VERSION, "jars": jars}))
            if target.exists():  # an incomplete directory from an older layout
                shutil.rmtree(target)
            os.replace(out, target)
            log.info("resolved %d jars in %.1fs", len(jars), time.monotonic() - started)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------
# Configuration files


def _server_properties(port: int, controller_port: int, log_dir: Path) -> str:
    """Render the combined broker+controller configuration of a one-node KRaft cluster."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(log_dir),
        **SINGLE_NODE_SETTINGS,
    }
    lines = ["# Written by understudy (streams.broker) on every start; edits are lost."]
    lines += [f"{key}={_escape_property(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _escape_property(value: str) -> str:
    # java.util.Properties reads a backslash as an escape; keep one in a path literal.
    return value.replace("\\", "\\\\")


_LOG4J2 = """\
# Written by understudy: Kafka logs to stdout, which the launcher sends to broker.log.
status = warn
name = understudy-broker
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
# Per-request and per-partition chatter, and the ~700-line config dump of every broker
# and internal client: useful only when debugging Kafka itself.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.runtime.name = org.apache.kafka.coordinator.common.runtime.CoordinatorRuntime
logger.runtime.level = WARN
logger.txnstate.name = kafka.coordinator.transaction.TransactionStateManager
logger.txnstate.level = WARN
logger.partitionchange.name = org.apache.kafka.controller.PartitionChangeBuilder
logger.partitionchange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.log.name = org.apache.kafka.storage.internals.log
logger.log.level = WARN
logger.unifiedlog.name = kafka.log
logger.unifiedlog.level = WARN
logger.partition.name = kafka.cluster
logger.partition.level = WARN
logger.replica.name = kafka.server.ReplicaFetcherManager
logger.replica.level = WARN
"""


def _new_cluster_id() -> str:
    """Return a random base64url Kafka cluster id (what ``kafka-storage random-uuid`` does)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):  # an id like "-abc" reads as an option on a command line
            return text


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically so a reader never sees half a record."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------
# Ports, processes, readiness


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Java servers bind with SO_REUSEADDR too, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _answers(bootstrap: str, timeout: float) -> bool:
    """True when a metadata request to ``bootstrap`` is answered with at least one broker."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # A logger keeps librdkafka's connection-refused lines off stderr while we poll.
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": log}
    admin = AdminClient(config)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def _command_line(pid: int) -> str | None:
    proc = Path(f"/proc/{pid}/cmdline")
    if proc.parent.is_dir():
        try:
            return proc.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""
    try:  # macOS and other systems without /proc
        result = subprocess.run(
            ["ps", "-p", str(pid), "-o", "command="],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout


def _is_our_broker(pid: int, home: Path) -> bool:
    """True if ``pid`` is alive and is the Kafka started from ``home`` (not a reused pid)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        # Launched by this process: its exit status is the truth, and collecting it keeps
        # the dead broker from lingering as a zombie that still answers kill(pid, 0).
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    with suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # a child of ours whose Popen is gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's process: not the broker we started
        return False
    command = _command_line(pid)
    if command is None:  # cannot tell: trust the record
        return True
    # A zombie has an empty command line, a reused pid another one.
    return "kafka.Kafka" in command and str(home / "server.properties") in command


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return _tail_text(text, lines) or "(empty log)"


def _signal(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, home: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _is_our_broker(pid, home):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _terminate(pid: int, home: Path, timeout: float) -> None:
    """SIGTERM lets Kafka flush and close its logs; SIGKILL only if it does not in time."""
    _signal(pid, signal.SIGTERM)
    if _wait_gone(pid, home, timeout):
        return
    log.warning("Kafka pid %d did not stop within %.0fs; killing it", pid, timeout)
    _signal(pid, signal.SIGKILL)
    if not _wait_gone(pid, home, 10.0):
        raise BrokerError(f"Kafka pid {pid} survived SIGKILL")


def _record_info(home: Path, record: dict[str, Any]) -> BrokerInfo | None:
    try:
        return BrokerInfo(
            bootstrap=str(record["bootstrap"]),
            pid=int(record["pid"]),
            home=home,
            log_file=Path(record.get("log_file") or home / "broker.log"),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _resolve_home(home: Path | None) -> Path:
    return (home if home is not None else _default_home()).expanduser().resolve()


# ---------------------------------------------------------------------------------------
# Public lifecycle


def status(home: Path | None = None, timeout: float = 5.0) -> BrokerInfo | None:
    """Return the broker recorded in ``home`` if its process is alive and answers metadata.

    A record whose process died (a reboot, a kill) or whose pid now belongs to another
    program reads as "no broker", so callers never hand out a dead bootstrap address.
    """
    home = _resolve_home(home)
    record = _read_json(home / _RECORD)
    info = _record_info(home, record) if record is not None else None
    if info is None or not _is_our_broker(info.pid, home):
        return None
    return info if _answers(info.bootstrap, timeout) else None


def start(
    port: int | None = None,
    home: Path | None = None,
    heap: str = "512M",
    progress: Progress | None = None,
    timeout: float = 90.0,
) -> BrokerInfo:
    """Start the embedded single-node Kafka (or reuse the one already running) and return it.

    Idempotent: a broker recorded in ``<home>/broker.json`` that is alive and answers is
    returned as is, so every CLI command and test session may call this. A flock on
    ``<home>/.lock`` makes concurrent callers wait for one start instead of racing two JVMs
    onto one data directory. Without ``port`` the previous port is reused when free (stable
    bootstrap address across restarts), else any free port. Raises MissingToolError when
    Java 17+ (or Maven, on the first run) is missing, BrokerError when Kafka exits or does
    not answer within ``timeout`` seconds (with the end of its log).
    """
    home = _resolve_home(home)
    home.mkdir(parents=True, exist_ok=True)
    say = progress if progress is not None else (lambda _message: None)
    deadline = time.monotonic() + timeout
    with _locked(home / ".lock"):
        record = _read_json(home / _RECORD)
        running = _record_info(home, record) if record is not None else None
        if running is not None and _is_our_broker(running.pid, home):
            recorded_port = int(record.get("port", 0)) if record is not None else 0
            if port is not None and recorded_port != port:
                raise BrokerError(
                    f"a Kafka broker from {home} already runs at {running.bootstrap} "
                    f"(pid {running.pid}); stop it before starting one on port {port}"
                )
            if _answers(running.bootstrap, max(1.0, deadline - time.monotonic())):
                log.info("reusing Kafka pid %d at %s", running.pid, running.bootstrap)
                say(f"Kafka already running at {running.bootstrap} (pid {running.pid})")
                return running
            raise BrokerError(
                f"Kafka pid {running.pid} from {home} is running but does not answer at "
                f"{running.bootstrap}; stop it (`understudy broker stop`) and start again. "
                f"Last lines of {running.log_file}:\n{_tail(running.log_file)}"
            )
        (home / _RECORD).unlink(missing_ok=True)
        java = _require_tools(need_mvn=not _jars_complete(jars_dir()))
        jars = resolve_jars(progress)
        return _launch(java, jars, home, port, heap, say, deadline)


def _launch(
    java: str,
    jars: Path,
    home: Path,
    port: int | None,
    heap: str,
    say: Progress,
    deadline: float,
) -> BrokerInfo:
    cluster = _read_json(home / _CLUSTER) or {}
    cluster_id = str(cluster.get("cluster_id") or _new_cluster_id())
    if port is None:
        previous = int(cluster.get("port") or 0)
        port = previous if previous and _port_free(previous) else _free_port()
    elif not _port_free(port):
        raise BrokerError(f"port {port} on 127.0.0.1 is already in use; pick another port")
    previous_controller = int(cluster.get("controller_port") or 0)
    if previous_controller and previous_controller != port and _port_free(previous_controller):
        controller_port = previous_controller
    else:
        controller_port = _free_port()
        while controller_port == port:
            controller_port = _free_port()
    _write_json(
        home / _CLUSTER,
        {"cluster_id": cluster_id, "port": port, "controller_port": controller_port},
    )

    data = home / "data"
    data.mkdir(exist_ok=True)
    properties = home / "server.properties"
    properties.write_text(_server_properties(port, controller_port, data))
    log4j = home / "log4j2.properties"
    log4j.write_text(_LOG4J2)
    classpath = str(jars / "*")  # the JVM expands the wildcard itself
    log_config = f"-Dlog4j2.configurationFile={log4j}"

    # The storage is keyed by node and cluster id, not by port: format once, then reuse.
    if not (data / "meta.properties").is_file():
        say(f"Formatting Kafka storage in {data}")
        fmt = [java, "-Xmx256M", "-cp", classpath, log_config, "kafka.tools.StorageTool"]
        fmt += ["format", "-t", cluster_id, "-c", str(properties), "--ignore-formatted"]
        try:
            result = subprocess.run(
                fmt, cwd=home, capture_output=True, text=True, timeout=120, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise BrokerError(f"formatting Kafka storage failed: {exc}") from exc
        if result.returncode != 0:
            raise BrokerError(
                f"formatting Kafka storage in {data} failed (exit code {result.returncode}):\n"
                + _tail_text(result.stdout + result.stderr, 20)
            )

    log_file = home / "broker.log"
    if log_file.exists():
        os.replace(log_file, home / "broker.log.1")
    bootstrap = f"127.0.0.1:{port}"
    command = [
        java,
        f"-Xmx{heap}",
        "-Djava.awt.headless=true",
        log_config,
        "-cp",
        classpath,
        "kafka.Kafka",
        str(properties),
    ]
    say(f"Starting Apache Kafka {KAFKA_VERSION} (KRaft) at {bootstrap}; log: {log_file}")
    log.info("starting Kafka: %s", " ".join(command))
    started = time.monotonic()
    with open(log_file, "ab") as out:
        # Its own session: Ctrl-C in the terminal that started it does not stop the broker,
        # and it lives on after this process exits. close_fds keeps our lock fd out of it.
        proc = subprocess.Popen(
            command,
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _CHILDREN[proc.pid] = proc
    try:
        _wait_ready(proc, bootstrap, port, deadline, log_file)
    except BaseException:
        if proc.poll() is None:
            _terminate(proc.pid, home, 10.0)
        raise
    info = BrokerInfo(bootstrap=bootstrap, pid=proc.pid, home=home, log_file=log_file)
    _write_json(
        home / _RECORD,
        {
            "pid": proc.pid,
            "bootstrap": bootstrap,
            "port": port,
            "controller_port": controller_port,
            "cluster_id": cluster_id,
            "kafka_version": KAFKA_VERSION,
            "log_file": str(log_file),
            "started_at": time.time(),
        },
    )
    elapsed = time.monotonic() - started
    log.info("Kafka pid %d ready at %s in %.1fs", proc.pid, bootstrap, elapsed)
    say(f"Kafka ready at {bootstrap} (pid {proc.pid}, {elapsed:.1f}s)")
    return info


def _wait_ready(
    proc: subprocess.Popen[bytes], bootstrap: str, port: int, deadline: float, log_file: Path
) -> None:
    """Poll until Kafka answers a metadata request; fail fast if the JVM exits first."""
    while True:
        code = proc.poll()
        if code is not None:
            raise BrokerError(
                f"Kafka exited with code {code} before it was ready. "
                f"Last lines of {log_file}:\n{_tail(log_file)}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"Kafka did not answer at {bootstrap} in time. "
                f"Last lines of {log_file}:\n{_tail(log_file)}"
            )
        # A cheap TCP probe first: no client, no log noise, while the JVM boots.
        if _accepts(port) and _answers(bootstrap, min(2.0, max(0.5, remaining))):
            return
        time.sleep(0.2)


@contextmanager
def borrowed(
    *, keep: bool = False, home: Path | None = None, progress: Progress | None = None
) -> Iterator[BrokerInfo]:
    """The running embedded broker, or one started for the block and stopped after it.

    For tools that need a broker for a while (the benches): a broker the user started is
    left alone, and one started here does not outlive the tool unless ``keep``.
    """
    running = status(home)
    info = running or start(home=home, progress=progress)
    try:
        yield info
    finally:
        if running is None and not keep:
            stop(home)
            if progress is not None:
                progress("embedded broker stopped")


@contextmanager
def bootstrap_for_run(*, keep: bool = False, progress: Progress | None = None) -> Iterator[str]:
    """``KAFKA_BOOTSTRAP_SERVERS`` when set, else a :func:`borrowed` embedded broker's address."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        yield configured
        return
    with borrowed(keep=keep, progress=progress) as info:
        yield info.bootstrap


def stop(home: Path | None = None, timeout: float = 30.0) -> bool:
    """Stop the broker recorded in ``home``; return whether one was running.

    SIGTERM first so Kafka shuts down cleanly (the next start skips log recovery), SIGKILL
    after ``timeout`` seconds. The data directory is kept: topics survive a restart.
    """
    home = _resolve_home(home)
    if not home.is_dir():
        return False
    with _locked(home / ".lock"):
        record = _read_json(home / _RECORD)
        info = _record_info(home, record) if record is not None else None
        if info is None:
            (home / _RECORD).unlink(missing_ok=True)
            return False
        running = _is_our_broker(info.pid, home)
        if running:
            log.info("stopping Kafka pid %d (%s)", info.pid, home)
            _terminate(info.pid, home, timeout)
        (home / _RECORD).unlink(missing_ok=True)
        return running


# ---------------------------------------------------------------------------------------
# Docker


def docker_available() -> bool:
    """True only if a Docker engine answers a ping, within a few seconds; never raises.

    Used to choose between testcontainers and the embedded broker, so any failure (no
    ``docker`` package, no socket, no permission, a hung engine) simply means "no".
    """
    host = os.environ.get("DOCKER_HOST", "")
    if not host and not Path("/var/run/docker.sock").exists():
        return False  # docker-py's default socket is absent: nothing to ask
    # docker-py leaks the socket of a failed connect; collect it here, silently, rather
    # than let its ResourceWarning surface later in whatever code runs next.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker

            client = docker.from_env(timeout=3)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()


def _container_env(port: int, host: str, cluster_id: str) -> dict[str, str]:
    """Settings for the official ``apache/kafka`` image, which maps KAFKA_X_Y to x.y."""
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@localhost:{_CONTAINER_CONTROLLER_PORT}",
        "listeners": f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://0.0.0.0:"
        f"{_CONTAINER_CONTROLLER_PORT}",
        "advertised.listeners": f"PLAINTEXT://{host}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        **SINGLE_NODE_SETTINGS,
    }
    env = {"KAFKA_" + key.upper().replace(".", "_"): value for key, value in settings.items()}
    env["CLUSTER_ID"] = cluster_id
    return env


def start_testcontainer(image: str = KAFKA_IMAGE, timeout: float = 120.0) -> tuple[str, object]:
    """Start the official Apache Kafka image (KRaft) with testcontainers; return (bootstrap, c).

    testcontainers-python's ``KafkaContainer`` only drives Confluent ``cp-kafka`` images (its
    ``with_kraft()`` rejects tags below 7.0 and its start script calls Confluent paths), so
    the official image is run as a generic container. The advertised listener must carry the
    port the client sees, which a random mapping only reveals after start; so a free host
    port is chosen first and the broker listens on that same port inside the container.
    The caller stops the container (``container.stop()``); Ryuk removes it if we crash.
    """
    try:
        from testcontainers.core.container import DockerContainer
    except ImportError as exc:
        raise BrokerError(
            "testcontainers is not installed (pip install 'understudy[dev]')"
        ) from exc
    port = _free_port()
    try:
        container = DockerContainer(image)
        client = container.get_docker_client()
        host = client.host() if hasattr(client, "host") else "localhost"
    except Exception as exc:
        raise BrokerError(f"cannot reach a Docker engine: {exc}") from exc
    for key, value in _container_env(port, host, _new_cluster_id()).items():
        container.with_env(key, value)
    container.with_bind_ports(port, port)
    bootstrap = f"{host}:{port}"
    deadline = time.monotonic() + timeout
    try:
        container.start()
        while not _answers(bootstrap, 2.0):
            if time.monotonic() >= deadline:
                stdout, stderr = container.get_logs()
                logs = (stdout + stderr).decode(errors="replace")
                raise BrokerError(
                    f"Kafka container {image} did not answer at {bootstrap} within "
                    f"{timeout:.0f}s:\n{_tail_text(logs, 20)}"
                )
            time.sleep(0.5)
    except BaseException as exc:
        with suppress(Exception):
            container.stop()
        if isinstance(exc, Exception) and not isinstance(exc, BrokerError):
            raise BrokerError(f"starting Kafka container {image} failed: {exc}") from exc
        raise
    log.info("Kafka container %s ready at %s", image, bootstrap)
    return bootstrap, container
