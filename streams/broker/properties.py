"""What the embedded broker is told: its ``server.properties`` and its log4j2 configuration.

Both files are rewritten on every start from these functions, so a broker home never
drifts from the code.
"""

from __future__ import annotations

from pathlib import Path

from streams.broker.node import SINGLE_NODE_SETTINGS
from streams.broker.security import BrokerSecurity


def server_properties(
    port: int,
    controller_port: int,
    log_dir: Path,
    *,
    security: BrokerSecurity | None = None,
    internal_port: int | None = None,
) -> str:
    """Render the combined broker+controller configuration of a one-node KRaft cluster.

    Plain: one PLAINTEXT listener on ``port`` serves clients and the broker itself. With
    ``security``, clients get a SASL_SSL listener on ``port`` and the broker's own traffic
    (transaction markers, the start-up probe, SCRAM user set-up) a PLAINTEXT one on
    ``internal_port``; both bind 127.0.0.1 only.
    """
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
    if security is not None:
        if internal_port is None:
            raise ValueError("a secured broker needs an internal port for its own traffic")
        settings.update(security.listener_settings(port, internal_port, controller_port))
    lines = ["# Written by understudy (streams.broker) on every start; edits are lost."]
    lines += [f"{key}={escape_property(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def escape_property(value: str) -> str:
    r"""Escape a value for ``java.util.Properties``: backslashes and line breaks.

    >>> escape_property("C:\\kafka")
    'C:\\\\kafka'
    >>> escape_property("line one\nline two")
    'line one\\nline two'
    """
    return value.replace("\\", "\\\\").replace("\r", "").replace("\n", "\\n")


LOG4J2 = """\
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
"""log4j2 configuration of the embedded broker: INFO to stdout, Kafka's chatter at WARN."""
