"""One exception tree for the package.

    UnderstudyError
    ├── ConfigError          bad or unknown configuration
    ├── BrokerError          the embedded broker cannot be resolved, started or reached
    │   └── MissingToolError Java or Maven is not installed
    ├── TopicLayoutError     topics missing or not co-partitioned
    ├── SchemaError          a message cannot be encoded or decoded
    ├── ModelLoadError       a candidate model spec cannot be loaded
    └── CheckpointError      an online learner's checkpoint cannot be written or read

Library errors are wrapped with ``raise ... from exc`` so the cause stays visible.
"""

from __future__ import annotations


class UnderstudyError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(UnderstudyError):
    """Configuration is invalid: unknown key, bad value or missing setting."""


class BrokerError(UnderstudyError):
    """The Kafka broker cannot be resolved, started or reached."""


class MissingToolError(BrokerError):
    """A tool the embedded broker needs (java, mvn) is not installed."""


class TopicLayoutError(UnderstudyError):
    """Topics are missing or not co-partitioned as the joiner requires."""


class SchemaError(UnderstudyError):
    """A message cannot be encoded or decoded against the Avro schemas."""


class ModelLoadError(UnderstudyError):
    """A candidate model spec cannot be imported or loaded."""


class CheckpointError(UnderstudyError):
    """An online learner's checkpoint cannot be written, or read back as its own."""
