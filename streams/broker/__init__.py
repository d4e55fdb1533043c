"""A real Apache Kafka broker without a cluster to hand: embedded (a JVM) or in Docker.

Understudy talks to a real Kafka in every mode (DESIGN.md section 6). When no cluster is
configured and no Docker engine answers, the embedded broker runs the official Apache Kafka
jars (resolved from Maven Central by the small pom in ``deploy/kafka/``) as one KRaft
process that is both broker and controller, listening on 127.0.0.1 only.

One idea per module:

- :mod:`~streams.broker.jars`: Java and Maven preflight, the Kafka classpath resolved once;
- :mod:`~streams.broker.embedded`: the JVM broker process and its home (start, status, stop);
- :mod:`~streams.broker.properties`: the ``server.properties`` and log4j2 files it is given;
- :mod:`~streams.broker.security`: an optional SASL_SSL (SCRAM) client listener;
- :mod:`~streams.broker.container`: the official image through testcontainers;
- :mod:`~streams.broker.node`: what both share (single-node settings, ports, readiness);
- :mod:`~streams.broker.files`: the lock, records and log tails of a broker home.

Finding *which* broker to use (environment, Docker, embedded) is not decided here; this
package only offers the two ways to start one: :func:`start` and :func:`start_testcontainer`.
"""

from __future__ import annotations

from streams.broker.container import KAFKA_IMAGE, docker_available, start_testcontainer
from streams.broker.embedded import (
    BrokerInfo,
    bootstrap_for_run,
    borrowed,
    start,
    status,
    stop,
)
from streams.broker.jars import KAFKA_VERSION, Progress, cache_dir, jars_dir, resolve_jars
from streams.broker.node import SINGLE_NODE_SETTINGS
from streams.broker.security import BrokerSecurity, ScramUser

__all__ = [
    "KAFKA_IMAGE",
    "KAFKA_VERSION",
    "SINGLE_NODE_SETTINGS",
    "BrokerInfo",
    "BrokerSecurity",
    "Progress",
    "ScramUser",
    "bootstrap_for_run",
    "borrowed",
    "cache_dir",
    "docker_available",
    "jars_dir",
    "resolve_jars",
    "start",
    "start_testcontainer",
    "status",
    "stop",
]
