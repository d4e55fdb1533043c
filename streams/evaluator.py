"""The evaluator: a faust-streaming app that merges partials and publishes judgements.

Low volume, rich state: it sees O(partitions x candidates) records per window whatever the
traffic. Partials of a window are merged until every joiner partition's progress (carried by
its ``*`` partials) has passed the window's end; then one WINDOW snapshot and one CUMULATIVE
snapshot are published per candidate. A partial that arrives for a window already published
is late: it goes into the cumulative numbers and is counted.

All state is in changelog-backed faust tables and the app runs with
``processing_guarantee="exactly_once"``, so table changes, published snapshots and input
offsets commit in one transaction: killed and restarted, it publishes nothing twice and
ends with the same cumulative numbers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import faust

from streams.config import Config
from streams.credentials import faust_credentials
from streams.kafka import Topics, read_compacted
from streams.metrics.partial import SHARED, PartialStats
from streams.schemas import Codec, default_codec

log = logging.getLogger(__name__)


def _flush_before_commit() -> None:
    """Make faust's exactly-once commit include every table change it covers.

    faust-streaming sends table changelog records through a buffer (``send_soon``) and its
    ``TransactionManager.commit`` sends the input offsets and commits the transaction
    without draining that buffer, so offsets can commit before the table changes of the
    events they cover. A SIGKILL then loses those changes for good (measured here: a
    restarted evaluator published windows with half their partials). So before each
    commit: wait until the buffer is empty and no message is between the buffer and the
    client (faust's own buffer flush gives up after 0.1 s and does not see that hand-over),
    then flush the clients, transactional producers included.
    """
    from faust.transport.consumer import TransactionManager
    from faust.transport.producer import ProducerBuffer

    if getattr(TransactionManager.commit, "_understudy_flushes", False):
        return
    original_commit = TransactionManager.commit
    original_send_pending = ProducerBuffer._send_pending
    in_flight = 0

    async def send_pending(self: Any, fut: Any) -> None:
        nonlocal in_flight
        in_flight += 1
        try:
            await original_send_pending(self, fut)
        finally:
            in_flight -= 1

    async def commit(self: Any, offsets: Any, start_new_transaction: bool = True) -> bool:
        producer = self.app.producer
        buffer = producer.buffer
        started, warned = time.monotonic(), False
        while buffer.size or in_flight:
            await buffer.flush()
            await asyncio.sleep(0.001)
            if not warned and time.monotonic() - started > 30:
                warned = True
                log.warning("commit waiting for %d buffered sends (broker slow?)", buffer.size)
        await producer.flush()
        result: bool = await original_commit(
            self, offsets, start_new_transaction=start_new_transaction
        )
        return result

    commit._understudy_flushes = True  # type: ignore[attr-defined]
    ProducerBuffer._send_pending = send_pending  # type: ignore[method-assign]
    TransactionManager.commit = commit  # type: ignore[method-assign]


def snapshot_record(
    candidate: str,
    primary: str,
    scope: str,
    stats: PartialStats,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """A MetricSnapshot record from merged statistics and their bookkeeping."""
    rec: dict[str, Any] = {
        "candidate": candidate,
        "primary": primary,
        "scope": scope,
        "window_start": meta["window_start"],
        "window_end": meta["window_end"],
        "windows": meta.get("windows", 1),
        "partials": meta.get("partials", 0),
        "late_partials": meta.get("late_partials", 0),
        "emitted_at": int(time.time() * 1000),
        "coverage": dict(stats.coverage),
    }
    rec.update(stats.summary())
    return rec


class Evaluator:
    """Builds the faust app; state lives in its tables, logic in :meth:`handle`."""

    def __init__(self, cfg: Config, *, codec: Codec | None = None, datadir: Path | None = None):
        self.cfg = cfg
        self.topics = Topics(cfg.prefix)
        self.codec = codec or default_codec()
        app_id = f"{cfg.prefix}.evaluator"
        datadir = datadir or Path.home() / ".cache" / "understudy" / "evaluator" / cfg.prefix
        datadir.mkdir(parents=True, exist_ok=True)
        _flush_before_commit()
        self.app = faust.App(
            app_id,
            broker=[f"kafka://{h}" for h in cfg.bootstrap_servers.split(",")],
            store="memory://",
            processing_guarantee="exactly_once",
            topic_partitions=cfg.evaluator_partitions,
            topic_replication_factor=cfg.replication_factor,
            topic_allow_declare=True,
            web_enabled=False,
            datadir=str(datadir),
            autodiscover=False,
            producer_acks=-1,
            broker_credentials=faust_credentials(cfg.kafka),
        )
        app = self.app
        self.partials = app.topic(
            self.topics.partials,
            key_serializer="raw",
            value_serializer="raw",
            partitions=cfg.evaluator_partitions,
        )
        self.metrics = app.topic(
            self.topics.metrics,
            key_serializer="raw",
            value_serializer="raw",
            partitions=cfg.evaluator_partitions,
        )
        table_opts: dict[str, Any] = {
            "on_recover": self._restore_tables,
            "default": None,
            "partitions": cfg.evaluator_partitions,
            "schema": faust.Schema(
                key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
            ),
        }
        #: pending windows: b"cand|ws" -> Avro Partial (merged so far)
        self.windows = app.Table("windows", **table_opts)
        #: b"cand" -> Avro Partial of everything published so far
        self.cumulative = app.Table("cumulative", **table_opts)
        #: b"cand" -> JSON bookkeeping of the cumulative; b"cand|ws" -> of a pending window
        self.meta = app.Table("meta", **table_opts)
        #: b"p<partition>" -> progress; b"n" -> partition count (JSON ints)
        self.progress = app.Table("progress", **table_opts)
        app.agent(self.partials, name="merge")(self._agent)

    async def _restore_tables(self) -> None:
        """Load every table from its changelog (read_committed) once recovery reports done.

        Observed here with faust-streaming 0.15 in exactly-once mode: after a SIGKILL the
        memory-store tables came back empty although their changelogs held the committed
        state, so the evaluator resumed from committed offsets with no memory of earlier
        partials. Reading the changelogs ourselves makes the restart exact; when faust did
        recover, this writes the same values again.
        """
        for table in (self.windows, self.cumulative, self.meta, self.progress):
            topic = table.changelog_topic.get_topic_name()
            state: dict[bytes, bytes | None] = {}
            for p in range(self.cfg.evaluator_partitions):
                state.update(
                    read_compacted(self.cfg, topic, p, group=f"{self.cfg.prefix}.evaluator-restore")
                )
            for key, value in state.items():
                if value is None:
                    table.data.pop(key, None)
                else:
                    table.data[key] = value
            log.info("restored %d keys of %s", len(state), topic)

    async def _agent(self, stream: Any) -> None:
        async for event in stream.events():
            self._apply(event.message.partition, event.message.offset, event.value)

    def _apply(self, partition: int, offset: int, value: bytes) -> None:
        """Apply one partial: table changes, snapshots and the applied-offset marker.

        Synchronous on purpose: faust commits in another task, at the agent's await points,
        so with no await in here a commit holds all of this event's effects or none of them.
        (An ``await topic.send`` between table changes let a commit take the changes without
        the snapshots and the marker; the replay then applied the partial twice.) The
        marker covers the other gap: a commit can hold the effects but not yet the offset,
        and the replay after a crash must skip an event it has applied.
        """
        marker = b"o%d" % partition
        if offset <= self._get_json(self.progress, marker, -1):
            return
        for key, snapshot in self.handle(value):
            self.metrics.send_soon(key=key, value=snapshot)
        self.progress[marker] = json.dumps(offset).encode()

    # -- the logic (synchronous: tables are dicts) ----------------------------------------

    def _get_json(self, table: Any, key: bytes, default: Any) -> Any:
        raw = table.get(key)
        return default if raw is None else json.loads(raw)

    def _stats(self, table: Any, key: bytes) -> PartialStats | None:
        raw = table.get(key)
        if raw is None:
            return None
        return PartialStats.from_record(self.codec.decode_as("Partial", raw))

    def _put_stats(self, table: Any, key: bytes, stats: PartialStats) -> None:
        table[key] = self.codec.encode("Partial", stats.to_partial())

    def _global_progress(self) -> int | None:
        n = self._get_json(self.progress, b"n", None)
        if n is None:
            return None
        marks = [self._get_json(self.progress, b"p%d" % p, None) for p in range(n)]
        if any(m is None for m in marks):
            return None
        return min(marks)

    def handle(self, value: bytes) -> list[tuple[bytes, bytes]]:
        """Fold one partial; return the (key, MetricSnapshot) messages to publish."""
        try:
            rec = self.codec.decode_as("Partial", value)
            stats = PartialStats.from_record(rec)
        except Exception as exc:  # a bad partial must not stop the evaluator
            log.error("dropping undecodable partial: %s", exc)
            return []
        cand: str = rec["candidate"]
        ws, we = rec["window_start"], rec["window_end"]
        before = self._global_progress()
        out: list[tuple[bytes, bytes]] = []
        if before is not None and we <= before:
            out += self._late(cand, rec, stats)
        else:
            key = f"{cand}|{ws}".encode()
            merged = self._stats(self.windows, key) or PartialStats()
            merged.merge(stats)
            self._put_stats(self.windows, key, merged)
            wmeta = self._get_json(
                self.meta, key, {"window_start": ws, "window_end": we, "partials": 0}
            )
            wmeta["partials"] += 1
            if rec["primary"]:
                wmeta["primary"] = rec["primary"]
            self.meta[key] = json.dumps(wmeta).encode()
        if cand == SHARED:
            self.progress[b"n"] = json.dumps(rec["partition_count"]).encode()
            pkey = b"p%d" % rec["joiner_partition"]
            old = self._get_json(self.progress, pkey, None)
            if old is None or rec["watermark"] > old:
                self.progress[pkey] = json.dumps(rec["watermark"]).encode()
            after = self._global_progress()
            if after is not None and (before is None or after > before):
                out += self._close(after)
        return out

    def _close(self, progress: int) -> list[tuple[bytes, bytes]]:
        """Publish every pending window that ends at or before ``progress``, oldest first."""
        due: dict[int, list[str]] = {}
        for raw_key in list(self.windows.keys()):
            cand, ws_s = raw_key.decode().rsplit("|", 1)
            meta = self._get_json(self.meta, raw_key, None)
            if meta is not None and meta["window_end"] <= progress:
                due.setdefault(int(ws_s), []).append(cand)
        out: list[tuple[bytes, bytes]] = []
        for ws in sorted(due):
            shared_key = f"{SHARED}|{ws}".encode()
            shared = self._stats(self.windows, shared_key) or PartialStats()
            shared_meta = self._get_json(self.meta, shared_key, {"partials": 0})
            for cand in sorted(c for c in due[ws] if c != SHARED):
                key = f"{cand}|{ws}".encode()
                stats = self._stats(self.windows, key) or PartialStats()
                wmeta = self._get_json(self.meta, key, {})
                stats.merge(shared)
                wmeta["partials"] += shared_meta["partials"]
                primary = shared_meta.get("primary") or wmeta.get("primary", "")
                out.append(self._snapshot(cand, primary, "WINDOW", stats, wmeta))
                out += self._add_cumulative(cand, primary, stats, wmeta, late=0)
                del self.windows[key]
                del self.meta[key]
            if shared_key in self.windows:
                del self.windows[shared_key]
            if shared_key in self.meta:
                del self.meta[shared_key]
        return out

    def _late(
        self, cand: str, rec: dict[str, Any], stats: PartialStats
    ) -> list[tuple[bytes, bytes]]:
        meta = {"window_start": rec["window_start"], "window_end": rec["window_end"], "partials": 1}
        if cand != SHARED:
            return self._add_cumulative(cand, rec["primary"], stats, meta, late=1, new_window=False)
        out: list[tuple[bytes, bytes]] = []
        shared_key = SHARED.encode()
        kept = self._stats(self.cumulative, shared_key) or PartialStats()
        kept.merge(stats)
        self._put_stats(self.cumulative, shared_key, kept)
        for raw in list(self.cumulative.keys()):
            if raw != shared_key:
                out += self._add_cumulative(
                    raw.decode(), rec["primary"], stats, meta, late=1, new_window=False
                )
        return out

    def _add_cumulative(
        self,
        cand: str,
        primary: str,
        stats: PartialStats,
        wmeta: dict[str, Any],
        *,
        late: int,
        new_window: bool = True,
    ) -> list[tuple[bytes, bytes]]:
        key = cand.encode()
        total = self._stats(self.cumulative, key)
        if total is None:
            # shared statistics that arrived late while no candidate existed yet
            total = self._stats(self.cumulative, SHARED.encode()) or PartialStats()
        total.merge(stats)
        self._put_stats(self.cumulative, key, total)
        cmeta = self._get_json(
            self.meta,
            key,
            {
                "window_start": wmeta["window_start"],
                "window_end": wmeta["window_end"],
                "windows": 0,
                "partials": 0,
                "late_partials": 0,
            },
        )
        cmeta["window_start"] = min(cmeta["window_start"], wmeta["window_start"])
        cmeta["window_end"] = max(cmeta["window_end"], wmeta["window_end"])
        cmeta["windows"] += 1 if new_window else 0
        cmeta["partials"] += wmeta["partials"]
        cmeta["late_partials"] += late
        if primary:
            cmeta["primary"] = primary
        self.meta[key] = json.dumps(cmeta).encode()
        return [self._snapshot(cand, cmeta.get("primary", ""), "CUMULATIVE", total, cmeta)]

    def _snapshot(
        self, cand: str, primary: str, scope: str, stats: PartialStats, meta: dict[str, Any]
    ) -> tuple[bytes, bytes]:
        rec = snapshot_record(cand, primary, scope, stats, meta)
        return cand.encode(), self.codec.encode("MetricSnapshot", rec)


def run_evaluator(cfg: Config, *, loglevel: str = "warn", datadir: Path | None = None) -> None:
    """Run the evaluator until SIGINT/SIGTERM (the CLI's ``understudy evaluator``)."""
    ev = Evaluator(cfg, datadir=datadir)
    worker = faust.Worker(ev.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
