"""The Kafka runtime classpath: Java and Maven preflight, and the jars resolved once.

The official Apache Kafka jars come from Maven Central through the small pom in
``deploy/kafka/`` (or a copy of it built in, for installs that do not ship ``deploy/``).
They are cached outside the git tree (:func:`cache_dir`) and shared by every broker home.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from streams.broker.files import locked, tail_text
from streams.errors import BrokerError, MissingToolError

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

KAFKA_VERSION = "4.4.0"
"""Apache Kafka version of the embedded broker; must match ``deploy/kafka/pom.xml``."""
LOG4J_VERSION = "2.26.1"
SLF4J_VERSION = "2.0.17"
MIN_JAVA = 17
"""Kafka 4.x brokers refuse to run on older Java."""

INSTALL_HINT = (
    "Install them, e.g. `sudo apt-get install openjdk-17-jre-headless maven` (Debian/Ubuntu) "
    "or `brew install openjdk@17 maven` (macOS), or set KAFKA_BOOTSTRAP_SERVERS to use an "
    "existing Kafka cluster instead of the embedded broker."
)

POM = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"
_MARKER = ".complete"


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


def _java_path() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java")


def java_major(version_output: str) -> int | None:
    """Parse ``java -version`` output: ``"17.0.15"`` -> 17, old style ``"1.8.0_292"`` -> 8."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    major = int(match.group(1))
    if major == 1 and match.group(2) is not None:
        major = int(match.group(2))
    return major


def require_tools(*, need_mvn: bool) -> str:
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
        major = java_major(output)
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


def jars_complete(directory: Path) -> bool:
    """True when ``directory`` holds every jar its marker lists (a finished resolution)."""
    marker = directory / _MARKER
    try:
        names = json.loads(marker.read_text())["jars"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(names) and all((directory / name).is_file() for name in names)


def fallback_pom() -> str:
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
    if jars_complete(target):
        return target
    require_tools(need_mvn=True)
    mvn = shutil.which("mvn")
    assert mvn is not None
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    with locked(parent / ".lock"):
        if jars_complete(target):
            return target
        # Leftovers of runs that were killed: nobody else works here while we hold the lock.
        for stale in parent.glob("resolve-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix="resolve-", dir=parent))
        try:
            pom = work / "pom.xml"
            # Copy the pom so Maven never writes next to the source tree (it may be read-only).
            if POM.is_file():
                shutil.copyfile(POM, pom)
            else:
                pom.write_text(fallback_pom())
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
                tail = tail_text(result.stdout + result.stderr, 30)
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
