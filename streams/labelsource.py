"""The simulated market's sale prices, published as labels some requests after their quote.

A real label source is its own system (a sales database, a chargeback feed), not the
service: it publishes on ``<prefix>.labels`` when the truth becomes known, keyed by the
request_id, with the Java client's partitioner, like the tap, so that each label lands in
its request's partition (see docs/labels.md). Here the truth of request ``i`` becomes
known ``lag`` requests later and is stamped with the event time of that later moment.

Never blocks the service that feeds it: a full client queue drops the label and counts it.
"""

from __future__ import annotations

from collections import deque

from confluent_kafka import KafkaError, Message, Producer

from streams.config import Config
from streams.kafka import Topics, client_config
from streams.schemas import default_codec

__all__ = ["LabelSource"]


class LabelSource:
    """Holds each request's truth for ``lag`` requests, then publishes it as a Label."""

    def __init__(self, cfg: Config, lag: int) -> None:
        if lag < 0:
            raise ValueError(f"lag must be >= 0, got {lag}")
        self.lag = lag
        self.topic = Topics(cfg.prefix).labels
        self._encode = default_codec().encoder("Label")
        self._producer = Producer(
            client_config(cfg, partitioner="murmur2_random", **{"linger.ms": 5})
        )
        self._pending: deque[tuple[str, float]] = deque()
        self.sent = 0
        self.dropped = 0
        self.failed = 0

    def add(self, request_id: str, truth: float, now_ms: int) -> None:
        """The truth of a request just served; labels ``lag`` requests old go out now."""
        self._pending.append((request_id, truth))
        while len(self._pending) > self.lag:
            self._send(*self._pending.popleft(), now_ms)
        self._producer.poll(0)

    def close(self, now_ms: int, timeout: float) -> None:
        """The rest of the truths become known now; wait up to ``timeout`` s for delivery."""
        while self._pending:
            self._send(*self._pending.popleft(), now_ms)
        self.failed += self._producer.flush(timeout)

    def _send(self, request_id: str, truth: float, now_ms: int) -> None:
        value = self._encode({"request_id": request_id, "event_time": now_ms, "value": truth})
        try:
            self._producer.produce(
                self.topic, value, request_id.encode(), on_delivery=self._delivered
            )
        except BufferError:
            self.dropped += 1

    def _delivered(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.sent += 1
        else:
            self.failed += 1
