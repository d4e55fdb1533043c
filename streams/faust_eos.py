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
4. The drain of point 1 waits for a moving target while the agent keeps processing: under
   a steady input the commit ran for a minute ("Timer commit is overlapping runtime=57 s")
   and the producer buffer passed 10,000 sends. :func:`until_committed` is the agent's
   gate: a commit closes it for its duration, so the drain only waits for what was sent
   before it started.
5. On stop, faust commits with ``start_new_transaction=False`` twice (``App._stop_consumer``
   and then ``Consumer.on_stop``, both through ``wait_empty``). An event the agent applied
   in between made the second one send offsets with no transaction open: ``IllegalOperation:
   Not in the middle of a transaction``, raised out of ``Consumer.on_stop``, so the
   consumer's thread was never stopped and the process, its event loop closed, waited for
   that thread for ever (5 of 11 stops did not finish within 30 s). The closing commit of a
   stopping app (faust ends its transactions the same way on every rebalance, and begins
   new ones after) now shuts the gate for good, and a commit after it is a no-op: nothing
   was applied since, and whatever faust acked meanwhile is replayed and skipped by the
   applied-offset marker of the next run.

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


class _Gate:
    """Open (set) except while a commit drains and commits; created in the running loop."""

    event: asyncio.Event | None = None
    #: the closing commit (``start_new_transaction=False``) has started: shut for good
    closed = False
    #: what the closing commit raised, if it did (the work since the last commit is lost
    #: to this run, and replayed by the next)
    failed: BaseException | None = None

    @classmethod
    def get(cls) -> asyncio.Event:
        if cls.event is None:
            cls.event = asyncio.Event()
            cls.event.set()
        return cls.event


async def until_committed() -> None:
    """Wait while a commit is under way (the agent calls this before applying an event)."""
    gate = _Gate.get()
    if not gate.is_set():
        await gate.wait()


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
            if _Gate.closed:
                return False  # the closing commit ran; nothing was applied since
            gate = _Gate.get()
            gate.clear()
            # faust also ends its transactions this way on every rebalance (wait_empty in
            # App._on_partitions_revoked) and begins new ones on assignment: only the one
            # of a stopping app is the last
            if not start_new_transaction and self.app.should_stop:
                _Gate.closed = True
            try:
                producer = self.app.producer
                buffer = producer.buffer
                started, warned = time.monotonic(), False
                while buffer.size or _in_flight:
                    await buffer.flush()
                    await asyncio.sleep(0.001)
                    if not warned and time.monotonic() - started > 30:
                        warned = True
                        log.warning(
                            "commit waiting for %d buffered sends (broker slow?)", buffer.size
                        )
                await producer.flush()
                result: bool = await super().commit(
                    offsets, start_new_transaction=start_new_transaction
                )
                return result
            except BaseException as exc:
                if _Gate.closed:
                    _Gate.failed = exc
                raise
            finally:
                if not _Gate.closed:
                    gate.set()

    return ExactTransactions


def closing_commit_failed() -> BaseException | None:
    """What the closing commit of this process raised, or None (not failed, or not run)."""
    return _Gate.failed


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
