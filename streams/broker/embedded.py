"""The embedded broker's process: a real single-node Kafka (KRaft) in a JVM we start.

Layout of a broker home (default ``<cache>/broker``)::

    server.properties  log4j2.properties   rewritten on every start (server.properties 0600)
    cluster.json       cluster id and the last ports, kept across restarts
    broker.json        the running broker (pid, bootstrap); removed by stop()
    broker.log         stdout and stderr of the JVM (the previous run in broker.log.1)
    data/              the Kafka log directory (topics, metadata log)
    .lock              serialises start() and stop() between processes

The broker outlives the Python process that started it (it runs in its own session), so
``understudy broker start`` returns and later commands reuse the same broker.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.broker.files import locked, read_json, tail, tail_text, write_json, write_private
from streams.broker.jars import (
    KAFKA_VERSION,
    Progress,
    cache_dir,
    jars_complete,
    jars_dir,
    require_tools,
    resolve_jars,
)
from streams.broker.node import accepts, answers, free_ports, new_cluster_id, port_free
from streams.broker.properties import LOG4J2, server_properties
from streams.broker.security import BrokerSecurity
from streams.errors import BrokerError

log = logging.getLogger(__name__)

_RECORD = "broker.json"
_CLUSTER = "cluster.json"

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
    """A running broker: where clients connect and where to look when something is wrong.

    ``protocol`` is the client listener's security protocol: ``PLAINTEXT``, or
    ``SASL_SSL`` for a broker started with a :class:`BrokerSecurity`.
    """

    bootstrap: str
    pid: int
    home: Path
    log_file: Path
    protocol: str = "PLAINTEXT"


def _default_home() -> Path:
    return cache_dir() / "broker"


def _resolve_home(home: Path | None) -> Path:
    return (home if home is not None else _default_home()).expanduser().resolve()


def _protocol(security: BrokerSecurity | None) -> str:
    return "PLAINTEXT" if security is None else "SASL_SSL"


def status(home: Path | None = None, timeout: float = 5.0) -> BrokerInfo | None:
    """Return the broker recorded in ``home`` if its process is alive and answers metadata.

    A record whose process died (a reboot, a kill) or whose pid now belongs to another
    program reads as "no broker", so callers never hand out a dead bootstrap address.
    """
    home = _resolve_home(home)
    record = read_json(home / _RECORD)
    info = _record_info(home, record) if record is not None else None
    if record is None or info is None or not _is_our_broker(info.pid, home):
        return None
    return info if answers(_probe_address(record, info), timeout) else None


DEFAULT_HEAP = "1G"
"""The JVM's -Xmx, as Apache Kafka's own start script. Topics pile up in a reused broker
home (every demo run and test makes a fresh prefix), and broker heap grows with partitions:
a 512M broker whose home had piled up 12,303 partition directories ran out of heap under a
benchmark's load (java.lang.OutOfMemoryError in its log, metadata requests failing)."""


def start(
    port: int | None = None,
    home: Path | None = None,
    heap: str = DEFAULT_HEAP,
    progress: Progress | None = None,
    timeout: float = 90.0,
    security: BrokerSecurity | None = None,
) -> BrokerInfo:
    """Start the embedded single-node Kafka (or reuse the one already running) and return it.

    Idempotent: a broker recorded in ``<home>/broker.json`` that is alive and answers is
    returned as is, so every CLI command and test session may call this. A flock on
    ``<home>/.lock`` makes concurrent callers wait for one start instead of racing two JVMs
    onto one data directory. Without ``port`` the previous port is reused when free (stable
    bootstrap address across restarts), else any free port. With ``security`` the client
    listener speaks SASL_SSL (see :class:`BrokerSecurity`). Raises MissingToolError when
    Java 17+ (or Maven, on the first run) is missing, BrokerError when Kafka exits or does
    not answer within ``timeout`` seconds (with the end of its log).
    """
    home = _resolve_home(home)
    home.mkdir(parents=True, exist_ok=True)
    say = progress if progress is not None else (lambda _message: None)
    deadline = time.monotonic() + timeout
    with locked(home / ".lock"):
        record = read_json(home / _RECORD)
        running = _record_info(home, record) if record is not None else None
        if record is not None and running is not None and _is_our_broker(running.pid, home):
            return _reuse(record, running, port, security, say, deadline)
        (home / _RECORD).unlink(missing_ok=True)
        java = require_tools(need_mvn=not jars_complete(jars_dir()))
        jars = resolve_jars(progress)
        return _launch(java, jars, home, port, heap, say, deadline, security)


def _reuse(
    record: dict[str, Any],
    running: BrokerInfo,
    port: int | None,
    security: BrokerSecurity | None,
    say: Progress,
    deadline: float,
) -> BrokerInfo:
    """The broker already running in this home, if it is the one asked for."""
    home = running.home
    recorded_port = int(record.get("port", 0))
    if port is not None and recorded_port != port:
        raise BrokerError(
            f"a Kafka broker from {home} already runs at {running.bootstrap} "
            f"(pid {running.pid}); stop it before starting one on port {port}"
        )
    if running.protocol != _protocol(security):
        raise BrokerError(
            f"a {running.protocol} Kafka broker from {home} already runs at "
            f"{running.bootstrap} (pid {running.pid}); stop it before starting a "
            f"{_protocol(security)} one"
        )
    probe = _probe_address(record, running)
    if answers(probe, max(1.0, deadline - time.monotonic())):
        if security is not None:
            security.create_users(probe, max(1.0, deadline - time.monotonic()))
        log.info("reusing Kafka pid %d at %s", running.pid, running.bootstrap)
        say(f"Kafka already running at {running.bootstrap} (pid {running.pid})")
        return running
    raise BrokerError(
        f"Kafka pid {running.pid} from {home} is running but does not answer at "
        f"{running.bootstrap}; stop it (`understudy broker stop`) and start again. "
        f"Last lines of {running.log_file}:\n{tail(running.log_file)}"
    )


def _choose_ports(
    cluster: dict[str, Any], port: int | None, secured: bool
) -> tuple[int, int, int | None]:
    """Client, controller and (when secured) internal ports: the previous ones when free."""
    if port is None:
        previous = int(cluster.get("port") or 0)
        port = previous if previous and port_free(previous) else free_ports(1)[0]
    elif not port_free(port):
        raise BrokerError(f"port {port} on 127.0.0.1 is already in use; pick another port")
    taken = [port]
    chosen: list[int] = []
    for name in ("controller_port", "internal_port")[: 2 if secured else 1]:
        previous = int(cluster.get(name) or 0)
        if previous and previous not in taken and port_free(previous):
            chosen.append(previous)
        else:
            chosen.append(free_ports(1, avoid=tuple(taken))[0])
        taken.append(chosen[-1])
    return port, chosen[0], (chosen[1] if secured else None)


def _launch(
    java: str,
    jars: Path,
    home: Path,
    port: int | None,
    heap: str,
    say: Progress,
    deadline: float,
    security: BrokerSecurity | None,
) -> BrokerInfo:
    cluster = read_json(home / _CLUSTER) or {}
    cluster_id = str(cluster.get("cluster_id") or new_cluster_id())
    port, controller_port, internal_port = _choose_ports(cluster, port, security is not None)
    ports = {"port": port, "controller_port": controller_port}
    if internal_port is not None:
        ports["internal_port"] = internal_port
    write_json(home / _CLUSTER, {**cluster, "cluster_id": cluster_id, **ports})

    data = home / "data"
    data.mkdir(exist_ok=True)
    properties = home / "server.properties"
    # 0600 always: with security it holds the broker's private key.
    write_private(
        properties,
        server_properties(
            port, controller_port, data, security=security, internal_port=internal_port
        ),
    )
    log4j = home / "log4j2.properties"
    log4j.write_text(LOG4J2)
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
                + tail_text(result.stdout + result.stderr, 20)
            )

    log_file = home / "broker.log"
    if log_file.exists():
        os.replace(log_file, home / "broker.log.1")
    bootstrap = f"127.0.0.1:{port}"
    probe = f"127.0.0.1:{internal_port}" if internal_port is not None else bootstrap
    protocol = _protocol(security)
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
    say(
        f"Starting Apache Kafka {KAFKA_VERSION} (KRaft, {protocol}) at {bootstrap}; log: {log_file}"
    )
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
        _wait_ready(proc, probe, deadline, log_file)
        if security is not None:
            security.create_users(probe, max(1.0, deadline - time.monotonic()))
            _wait_accepts(proc, port, deadline, log_file)
    except BaseException:
        if proc.poll() is None:
            _terminate(proc.pid, home, 10.0)
        raise
    info = BrokerInfo(
        bootstrap=bootstrap, pid=proc.pid, home=home, log_file=log_file, protocol=protocol
    )
    write_json(
        home / _RECORD,
        {
            "pid": proc.pid,
            "bootstrap": bootstrap,
            "protocol": protocol,
            "probe": probe,
            **ports,
            "cluster_id": cluster_id,
            "kafka_version": KAFKA_VERSION,
            "log_file": str(log_file),
            "started_at": time.time(),
        },
    )
    elapsed = time.monotonic() - started
    log.info("Kafka pid %d ready at %s (%s) in %.1fs", proc.pid, bootstrap, protocol, elapsed)
    say(f"Kafka ready at {bootstrap} ({protocol}, pid {proc.pid}, {elapsed:.1f}s)")
    return info


def _exited(proc: subprocess.Popen[bytes], log_file: Path) -> None:
    code = proc.poll()
    if code is not None:
        raise BrokerError(
            f"Kafka exited with code {code} before it was ready. "
            f"Last lines of {log_file}:\n{tail(log_file)}"
        )


def _wait_ready(
    proc: subprocess.Popen[bytes], bootstrap: str, deadline: float, log_file: Path
) -> None:
    """Poll until Kafka answers a metadata request; fail fast if the JVM exits first."""
    port = int(bootstrap.rsplit(":", 1)[1])
    while True:
        _exited(proc, log_file)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"Kafka did not answer at {bootstrap} in time. "
                f"Last lines of {log_file}:\n{tail(log_file)}"
            )
        # A cheap TCP probe first: no client, no log noise, while the JVM boots.
        if accepts(port) and answers(bootstrap, min(2.0, max(0.5, remaining))):
            return
        time.sleep(0.2)


def _wait_accepts(
    proc: subprocess.Popen[bytes], port: int, deadline: float, log_file: Path
) -> None:
    """Wait until the client listener accepts connections (it opens with the others)."""
    while not accepts(port):
        _exited(proc, log_file)
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"Kafka's client listener on port {port} did not open in time. "
                f"Last lines of {log_file}:\n{tail(log_file)}"
            )
        time.sleep(0.1)


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
    with locked(home / ".lock"):
        record = read_json(home / _RECORD)
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
# Records and processes


def _record_info(home: Path, record: dict[str, Any]) -> BrokerInfo | None:
    try:
        return BrokerInfo(
            bootstrap=str(record["bootstrap"]),
            pid=int(record["pid"]),
            home=home,
            log_file=Path(record.get("log_file") or home / "broker.log"),
            protocol=str(record.get("protocol") or "PLAINTEXT"),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _probe_address(record: dict[str, Any], info: BrokerInfo) -> str:
    """Where a plain metadata request reaches the broker: the internal listener if secured."""
    return str(record.get("probe") or info.bootstrap)


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
