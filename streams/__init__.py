"""Understudy: a streaming shadow evaluator for machine-learning models on Apache Kafka.

The public API is what a production service imports: the :class:`~streams.tap.Tap` that
mirrors its requests and predictions, and the :class:`~streams.config.Config` that tells it
where Kafka is. Everything else runs as a role of the ``understudy`` command. Imports are
lazy so that the tap needs only confluent-kafka and fastavro.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Config", "Tap", "UnderstudyError"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from streams.config import Config
    from streams.errors import UnderstudyError
    from streams.tap import Tap


def __getattr__(name: str) -> Any:
    if name == "Config":
        from streams.config import Config

        return Config
    if name == "Tap":
        from streams.tap import Tap

        return Tap
    if name == "UnderstudyError":
        from streams.errors import UnderstudyError

        return UnderstudyError
    raise AttributeError(name)
