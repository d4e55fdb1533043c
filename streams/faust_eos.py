"""What faust-streaming's exactly-once mode needs from us to be exact.

Found here with faust-streaming 0.15 and aiokafka 0.14 by killing an evaluator with SIGKILL
mid-run and comparing what it published with an uninterrupted run's (tests/integration/
test_recovery.py), then reading faust's source for why:

1. ``TransactionManager.commit`` sends the input offsets and commits without draining the
   producer buffer that table changelog writes (``send_soon``) go through, so offsets could
   commit before the table changes of the events they cover. Its own buffer flush gives up
   after 0.1 s, and a message taken off the buffer but not yet handed to the client is not
   counted anywhere. :class:`ExactTransactions` drains both before every commit.
2. A message to a topic the app does not consume (our metrics) is sent *outside* any
   transaction: faust picks the transaction from the destination topic's partition group,
   which only consumed topics have. So a snapshot published by work that was then rolled
   back stayed visible, and the replay published it again. :class:`ExactTransactions` sends
   registered output topics in the transaction of the source partition given as their
   partition.
3. During a rebalance faust drops messages it had already fetched, and *acks* them, so their
   offsets can be committed although nothing processed them (faust-streaming issues #216,
   #221 describe the family). That part cannot be fixed from outside the stream; the
   evaluator keeps its own applied-offset marker and fills gaps itself (see
   :mod:`streams.evaluator`).

These are installed process-wide (they patch faust classes), once, by :func:`install`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

log = logging.getLogger(__name__)

_in_flight = 0


class _Installed:
    done = False


def _transactions_class() -> type:
    from faust.transport.consumer import TransactionManager

    class ExactTransactions(TransactionManager):
        """faust's transaction manager with a complete commit and routed output topics."""

        #: output topic -> the consumed topic whose partition's transaction it joins
        routes: ClassVar[dict[str, str]] = {}

        async def send(
            self,
            topic: str,
            key: bytes | None,
            value: bytes | None,
            partition: int | None,
            timestamp: float | None,
            headers: Any,
            *,
            transactional_id: str | None = None,
        ) -> Any:
            source = self.routes.get(topic)
            if source is None or partition is None:
                # faust picks the transaction itself (it ignores a transactional_id passed in)
                return await super().send(topic, key, value, partition, timestamp, headers)
            tid = f"{self.app.conf.id}-{self.app.assignor.group_for_topic(source)}-{partition}"
            return await self.producer.send(
                topic, key, value, partition, timestamp, headers, transactional_id=tid
            )

        async def commit(self, offsets: Any, start_new_transaction: bool = True) -> bool:
            producer = self.app.producer
            buffer = producer.buffer
            started, warned = time.monotonic(), False
            while buffer.size or _in_flight:
                await buffer.flush()
                await asyncio.sleep(0.001)
                if not warned and time.monotonic() - started > 30:
                    warned = True
                    log.warning("commit waiting for %d buffered sends (broker slow?)", buffer.size)
            await producer.flush()
            result: bool = await super().commit(
                offsets, start_new_transaction=start_new_transaction
            )
            return result

    return ExactTransactions


def install(routes: dict[str, str]) -> None:
    """Patch faust (once per process) and route ``routes``' output topics into transactions."""
    from faust.transport.drivers.aiokafka import Transport
    from faust.transport.producer import ProducerBuffer

    if not _Installed.done:
        original_send_pending = ProducerBuffer._send_pending

        async def send_pending(self: Any, fut: Any) -> None:
            global _in_flight
            _in_flight += 1
            try:
                await original_send_pending(self, fut)
            finally:
                _in_flight -= 1

        ProducerBuffer._send_pending = send_pending  # type: ignore[method-assign]
        # faust pauses the stream and logs a warning whenever more than 100 sends wait in
        # the buffer; closing a window queues a few per candidate, so at 100 its log filled
        # with warnings about a normal burst. Each commit drains the buffer anyway.
        ProducerBuffer.max_messages = 10_000
        Transport.TransactionManager = _transactions_class()
        _Installed.done = True
    Transport.TransactionManager.routes.update(routes)  # type: ignore[attr-defined]
