"""The evaluator: a faust-streaming app that merges partials and publishes judgements.

Low volume, rich state: it sees O(partitions x candidates) records per window whatever the
traffic. What it does with a partial (merge, close windows, late partials) is
:class:`streams.merging.WindowMerger`, which knows nothing of faust; this module gives it
changelog-backed tables and publishes what it returns.

All state is in changelog-backed faust tables and the app runs with
``processing_guarantee="exactly_once"``, so table changes, published snapshots, dead letters
and input offsets commit in one transaction: killed and restarted, it publishes nothing
twice and ends with the same cumulative numbers.

It runs only against existing topics (``understudy topics create`` makes them): faust may
create its own changelog topics, never the deployment's. SIGTERM or SIGINT stop it within
seconds with its work committed, exit code 0, as the other stages do.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import NewTopic

from streams import faust_eos
from streams.alerts.rules import SHIPPED_RULES, Rule, load_rules
from streams.clientlog import quiet_python_clients
from streams.config import Config
from streams.credentials import faust_credentials
from streams.errors import BrokerError, ConfigError, TopicLayoutError, UnderstudyError
from streams.judge import Judge
from streams.kafka import (
    Topics,
    admin,
    committed_reader,
    partition_counts,
    read_compacted,
)
from streams.merging import WindowMerger, dead_letter_record
from streams.metrics.partial import PartialStats
from streams.schemas import Codec, default_codec
from streams.verdicts.decide import Policy
from streams.verdicts.ledger import VerdictLedger

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Judging:
    """What the evaluator judges windows with, loaded (and checked) before it starts."""

    rules: tuple[Rule, ...]
    rules_source: str
    baseline: PartialStats | None
    baseline_source: str


def load_judging(cfg: Config) -> Judging:
    """The alert rules and the drift baseline of ``cfg``; a bad file is a ConfigError.

    Called before anything touches Kafka, so a typo in a rules file stops the evaluator at
    once with one line naming the file, the rule and the problem.
    """
    path = Path(cfg.rules_path) if cfg.rules_path else SHIPPED_RULES
    if not cfg.rules_path and not path.is_file():
        log.warning("no rules file (rules_path is empty and %s is missing): no alerts", path)
        rules: tuple[Rule, ...] = ()
    else:
        rules = load_rules(path)
    baseline = None
    if cfg.baseline_path:
        from streams.baseline import load_baseline

        baseline = load_baseline(Path(cfg.baseline_path))
    return Judging(rules, str(path), baseline, cfg.baseline_path)


def verdict_ledger(cfg: Config, state: Any, codec: Codec) -> VerdictLedger:
    """The promotion verdicts of ``cfg`` (docs/verdicts.md), kept in ``state``."""
    policy = Policy(
        alpha=cfg.verdict_alpha,
        planned_n=cfg.verdict_planned_n,
        latency_budget_ms=cfg.verdict_latency_budget_ms,
        error_rate_budget=cfg.verdict_error_rate_budget,
    )
    return VerdictLedger(
        state,
        policy,
        expected_candidates=cfg.verdict_candidates,
        auto_promote=cfg.auto_promote,
        old_primary=cfg.promote_old_primary.upper(),
        codec=codec,
    )


class Evaluator:
    """Builds the faust app; state lives in its tables, logic in :meth:`handle`."""

    def __init__(
        self,
        cfg: Config,
        *,
        codec: Codec | None = None,
        datadir: Path | None = None,
        judging: Judging | None = None,
    ):
        import faust  # here, not at import: faust takes seconds to import (see run_evaluator)

        if cfg.evaluator_partitions != 1:
            # the joiners' progress (``*`` partials) lands in one partition; an evaluator
            # instance on another would never see a window complete
            raise ConfigError(
                f"evaluator_partitions={cfg.evaluator_partitions}: the evaluator runs on one "
                "partials partition for now (it is O(partitions x candidates) per window)"
            )
        self.cfg = cfg
        self.topics = Topics(cfg.prefix)
        self.codec = codec or default_codec()
        app_id = f"{cfg.prefix}.evaluator"
        datadir = datadir or Path.home() / ".cache" / "understudy" / "evaluator" / cfg.prefix
        datadir.mkdir(parents=True, exist_ok=True)
        # what the evaluator publishes joins the transaction of the partial it came from
        faust_eos.install(
            {
                self.topics.metrics: self.topics.partials,
                self.topics.alerts: self.topics.partials,
                self.topics.verdicts: self.topics.partials,
                self.topics.control: self.topics.partials,
                self.topics.deadletter: self.topics.partials,
            }
        )
        self.app = faust.App(
            app_id,
            broker=[f"kafka://{h}" for h in cfg.bootstrap_servers.split(",")],
            store="memory://",
            processing_guarantee="exactly_once",
            topic_partitions=cfg.evaluator_partitions,
            topic_replication_factor=cfg.replication_factor,
            # faust creates its own topics (table changelogs, the leader topic) through this
            # one switch; the deployment's topics are checked to exist before the app starts
            # (check_topics), so a missing one is refused, never created here
            topic_allow_declare=True,
            web_enabled=False,
            datadir=str(datadir),
            autodiscover=False,
            producer_acks=-1,
            broker_credentials=faust_credentials(cfg.kafka),
        )
        app = self.app

        def raw(name: str, partitions: int) -> Any:
            return app.topic(
                name, key_serializer="raw", value_serializer="raw", partitions=partitions
            )

        self.partials = raw(self.topics.partials, cfg.evaluator_partitions)
        self.metrics = raw(self.topics.metrics, cfg.evaluator_partitions)
        self.deadletter = raw(self.topics.deadletter, 1)
        self.alerts = raw(self.topics.alerts, cfg.evaluator_partitions)
        self.verdict_topic = raw(self.topics.verdicts, cfg.evaluator_partitions)
        self.control = raw(self.topics.control, 1)
        table_opts: dict[str, Any] = {
            "on_recover": self._restore_tables,
            "default": None,
            "partitions": cfg.evaluator_partitions,
            # bytes in, bytes out. The table's own key_type/value_type pick the serializers
            # its changelog is read back with: with a schema alone they fell back to json,
            # and faust's recovery failed on every record ("Error in recovery")
            "key_type": bytes,
            "value_type": bytes,
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
        #: references, drift alarm runs, ADWIN histories, alert states (streams.judge)
        self.judge_state = app.Table("judge", **table_opts)
        #: promotion verdicts: one comparison per (candidate, primary) (streams.verdicts)
        self.verdict_state = app.Table("verdicts", **table_opts)
        judging = judging or load_judging(cfg)
        self.judge = Judge(
            self.judge_state,
            rules=judging.rules,
            reference_requests=cfg.reference_requests,
            baseline=judging.baseline,
            baseline_source=judging.baseline_source,
            top_k=cfg.slice_top_k,
            codec=self.codec,
        )
        self._gaps = GapReader(cfg, self.topics.partials)
        self.merger = WindowMerger(
            self.windows,
            self.cumulative,
            self.meta,
            self.progress,
            codec=self.codec,
            # a window closes at the latest when some partition is this far past its end
            grace_ms=cfg.evaluator_grace_ms or 2 * cfg.window_ms,
            judge=self.judge,
            verdicts=verdict_ledger(cfg, self.verdict_state, self.codec),
        )
        app.agent(self.partials, name="merge")(self._agent)

    @property
    def tables(self) -> tuple[Any, ...]:
        return (
            self.windows,
            self.cumulative,
            self.meta,
            self.progress,
            self.judge_state,
            self.verdict_state,
        )

    def ensure_internal_topics(self, timeout: float = 30.0) -> list[str]:
        """Create faust's own topics (table changelogs, leader) and wait until listed.

        faust declares them at start and its consumer could join the group before the
        broker's metadata listed them: its snapshot then said 0 partitions and every partial
        crashed the agent with PartitionsMismatch until the next metadata refresh (5 min),
        the process up all the while (seen in 2 of 5 SASL_SSL runs of test_sasl_ssl). Made
        here, before faust starts, they exist and are listed when it looks. Returns the names
        created.
        """
        rf = self.cfg.replication_factor
        specs = [
            NewTopic(
                t.changelog_topic.get_topic_name(),
                self.cfg.evaluator_partitions,
                rf,
                config={"cleanup.policy": "compact"},
            )
            for t in self.tables
        ]
        # faust's LeaderAssignor topic (faust.assignor.leader_assignor), one partition
        specs.append(NewTopic(f"{self.app.conf.id}-__assignor-__leader", 1, rf))
        names = [s.topic for s in specs]
        missing = [s for s in specs if s.topic not in partition_counts(self.cfg, names)]
        if missing:
            client = admin(self.cfg)
            for name, fut in client.create_topics(missing, operation_timeout=timeout).items():
                try:
                    fut.result(timeout=timeout)
                except KafkaException as exc:
                    if "TOPIC_ALREADY_EXISTS" not in str(exc):
                        raise BrokerError(f"cannot create topic {name}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while len(partition_counts(self.cfg, names)) < len(names):
            if time.monotonic() > deadline:
                raise BrokerError(f"topics {names} not listed by the broker after {timeout:.0f} s")
            time.sleep(0.1)
        return [s.topic for s in missing]

    async def _restore_tables(self) -> None:
        """Load every table from its changelog (read_committed) once recovery reports done.

        Observed here with faust-streaming 0.15 in exactly-once mode: after a SIGKILL the
        memory-store tables came back empty although their changelogs held the committed
        state, so the evaluator resumed from committed offsets with no memory of earlier
        partials. Reading the changelogs ourselves makes the restart exact; when faust did
        recover, this writes the same values again.
        """
        for table in self.tables:
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
            # not while a commit drains: it would wait for what this event sends too
            await faust_eos.until_committed()
            msg = event.message
            self._apply(msg.partition, msg.offset, msg.key, event.value)

    def _apply(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        """Apply one partial exactly once, in offset order, with what the stream skipped.

        The applied-offset marker (in the progress table, so it commits with the state) is
        the evaluator's real position: a replayed offset at or below it is skipped, and an
        offset beyond the next one is a gap. Most gaps are transaction markers (the joiner
        writes transactionally); but faust also drops fetched messages during a rebalance
        and acks them (see :mod:`streams.faust_eos`), so a gap is read back from the topic
        and whatever committed partials it holds are applied first.

        Synchronous on purpose: faust commits in another task, at the agent's await points,
        so with no await in here a commit holds all of this event's effects (table changes,
        snapshots, marker) or none of them.
        """
        last = self.merger.get_json(self.progress, b"o%d" % partition, None)
        if last is None:
            last = self._gaps.log_start(partition) - 1
        if offset <= last:
            return
        if offset > last + 1:
            for missed_offset, missed_key, missed in self._gaps.read(partition, last + 1, offset):
                self._fold(partition, missed_offset, missed_key, missed)
        self._fold(partition, offset, key, value)

    def _fold(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        handled = self.merger.handle(value)
        # partition = the source's: faust_eos sends it in that partition's transaction
        for cand, snapshot in handled.snapshots:
            self.metrics.send_soon(key=cand, value=snapshot, partition=partition)
        for alert_key, alert in handled.alerts:
            self.alerts.send_soon(key=alert_key, value=alert, partition=partition)
        for verdict_key, verdict in handled.verdicts:
            self.verdict_topic.send_soon(key=verdict_key, value=verdict, partition=partition)
        for control_key, control in handled.controls:
            # control has one partition, and so has partials for now (as for dead letters)
            self.control.send_soon(key=control_key, value=control, partition=partition)
        if handled.error is not None:
            log.warning(
                "dead-lettering %s[%d]@%d: %s",
                self.topics.partials,
                partition,
                offset,
                handled.error,
            )
            record = dead_letter_record(
                handled.error,
                topic=self.topics.partials,
                partition=partition,
                offset=offset,
                key=key,
                value=value,
                now=int(time.time() * 1000),
            )
            # the dead-letter topic has one partition, and so has partials for now
            # (evaluator_partitions == 1): partition 0 is both the source and the target
            self.deadletter.send_soon(
                key=key, value=self.codec.encode("DeadLetter", record), partition=partition
            )
        self.merger.put_json(self.progress, b"o%d" % partition, offset)


class GapReader:
    """Reads the committed records of an offset range of the partials topic, on demand.

    Nearly every gap is one transaction marker (each joiner batch commits one), so this is
    asked once per joiner batch, and must answer in about the time a fetch takes. It
    keeps its assignment and reads forward: the records it read past a range's end wait
    in a small buffer for the next range, and only a range before what it has read
    (another partition, a restart) re-assigns it. It polls record by record: a batch
    ``consume`` returns only when its batch is full or its timeout is over.

    The old way (assign each range's start, batch-consume with a 0.2 s timeout) stalled
    the evaluator's event loop at every joiner commit: ``bench/gaps.py``, 60 transactions
    0.2 s apart on the embedded broker, measured p50 201 ms and p99 802 ms a gap, against
    1.2 ms and 6.7 ms for this reader.
    """

    def __init__(self, cfg: Config, topic: str, timeout_s: float = 60.0) -> None:
        self.cfg = cfg
        self.topic = topic
        self.timeout_s = timeout_s
        self._consumer: Consumer | None = None
        self._partition: int | None = None
        #: everything from this offset on has been read (None: not assigned)
        self._read_from: int | None = None
        self._ahead: list[tuple[int, bytes | None, bytes | None]] = []

    def _reader(self) -> Consumer:
        if self._consumer is None:
            # it stays assigned: its prefetch, which it drains only at gaps, is kept small
            self._consumer = committed_reader(
                self.cfg,
                f"{self.cfg.prefix}.evaluator-gaps",
                **{"queued.max.messages.kbytes": 4096},
            )
        return self._consumer

    def log_start(self, partition: int) -> int:
        low, _ = self._reader().get_watermark_offsets(
            TopicPartition(self.topic, partition), timeout=30
        )
        return int(low)

    def read(
        self, partition: int, start: int, end: int
    ) -> list[tuple[int, bytes | None, bytes | None]]:
        """(offset, key, value) of every committed record with start <= offset < end."""
        tp = TopicPartition(self.topic, partition)
        if self._partition != partition or self._read_from is None or start < self._read_from:
            if self._partition is not None and self._consumer is not None:
                # a consumer that was assigned before can report its old position for a
                # while after a new assign (seen in CI: a step back read nothing), so a
                # range before what was read gets a fresh consumer; it is rare (another
                # partition, a replay), the forward path is the common one
                self._consumer.close()
                self._consumer = None
            self._reader().assign([TopicPartition(self.topic, partition, start)])
            self._partition, self._read_from, self._ahead = partition, start, []
        reader = self._reader()
        deadline = time.monotonic() + self.timeout_s
        while not self._ahead or self._ahead[-1][0] < end:
            position = reader.position([tp])[0].offset
            if position >= end:  # past the range's markers and aborted records
                break
            m = reader.poll(0.2)
            if m is not None and m.error() is None and m.offset() is not None:
                self._ahead.append((m.offset() or 0, m.key(), m.value()))
            if time.monotonic() > deadline:
                raise UnderstudyError(
                    f"reading {self.topic}[{partition}] did not reach offset {end} in "
                    f"{self.timeout_s:.0f} s"
                )
        found = [r for r in self._ahead if start <= r[0] < end]
        self._ahead = [r for r in self._ahead if r[0] >= end]
        self._read_from = end
        if found:
            log.warning(
                "applying %d partial(s) the stream skipped: %s[%d] offsets %s",
                len(found),
                self.topic,
                partition,
                [o for o, _, _ in found],
            )
        return found


def check_topics(cfg: Config) -> None:
    """Refuse to start without the deployment's topics (faust would create them itself)."""
    t = Topics(cfg.prefix)
    names = [t.partials, t.metrics, t.alerts, t.verdicts, t.control, t.deadletter]
    counts = partition_counts(cfg, names)
    missing = [n for n in names if n not in counts]
    if missing:
        raise TopicLayoutError(
            f"missing topics {', '.join(missing)}: run `understudy topics create` "
            f"(prefix {cfg.prefix!r})"
        )
    if counts[t.partials] != cfg.evaluator_partitions:
        raise TopicLayoutError(
            f"{t.partials} has {counts[t.partials]} partitions, the evaluator expects "
            f"evaluator_partitions={cfg.evaluator_partitions}"
        )


#: after SIGTERM/SIGINT, the process exits at the latest this much later (rc 1 if forced)
STOP_DEADLINE_S = 8.0


def _worker_class() -> type:
    import faust

    class _Worker(faust.Worker):
        """faust's worker, with a stop that always ends.

        - A SIGTERM/SIGINT that came before mode installed its handlers (once the app has
          started) used to kill the process with the default action (rc -15): it is kept
          (see run_evaluator) and honoured once the handlers are in.
        - A stop that has not finished :data:`STOP_DEADLINE_S` after the signal ends the
          process with rc 1 and says so: everything committed stays committed, the rest is
          redone by the next run (exactly-once), and a supervisor sees a failed stop.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # faust's start-up spinner writes cursor escapes (ESC[?25l ...) whatever stdout
            # is: into a supervisor's log file they are noise
            isatty = getattr(self.stdout, "isatty", None)
            if isatty is None or not isatty():
                self.spinner = None

        def install_signal_handlers(self) -> None:
            super().install_signal_handlers()
            if _Early.signum is not None:
                self._schedule_shutdown(_Early.signum)

        def _schedule_shutdown(self, signum: signal.Signals) -> None:
            _start_deadline(signum)
            super()._schedule_shutdown(signum)

    return _Worker


class _Early:
    """A stop signal that came before faust's handlers were installed."""

    signum: signal.Signals | None = None


_deadline_started = threading.Event()


def _start_deadline(signum: signal.Signals) -> None:
    """From the first stop signal on, the process has STOP_DEADLINE_S to end."""
    if not _deadline_started.is_set():
        _deadline_started.set()
        threading.Thread(
            target=_deadline, args=(signum,), name="stop-deadline", daemon=True
        ).start()


def _deadline(signum: signal.Signals) -> None:
    time.sleep(STOP_DEADLINE_S)
    log.error(
        "evaluator: not stopped %.0f s after %s; exiting now (what was not committed is "
        "redone by the next run)",
        STOP_DEADLINE_S,
        signum.name,
    )
    _exit_now(1)


def _exit_now(code: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def run_evaluator(
    cfg: Config,
    *,
    loglevel: str = "warn",
    datadir: Path | None = None,
    judging: Judging | None = None,
) -> None:
    """Run the evaluator until SIGINT/SIGTERM (the CLI's ``understudy evaluator``).

    Returns once stopped with its work committed. Raises UnderstudyError when the closing
    commit failed (the next run redoes that work).
    """

    def early(signum: int, _frame: object) -> None:
        _Early.signum = signal.Signals(signum)
        _start_deadline(_Early.signum)

    # before faust is imported (seconds): a stop signal from here on stops, never kills
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, early)
    judging = judging or load_judging(cfg)  # a bad rules or baseline file: before Kafka
    check_topics(cfg)
    ev = Evaluator(cfg, datadir=datadir, judging=judging)
    quiet_python_clients()  # aiokafka (imported now) logs a lost broker many times a second
    ev.ensure_internal_topics()
    worker = _worker_class()(ev.app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    code = 1
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        # a faust service that failed to stop can leave a non-daemon thread (the consumer's)
        # that Python would wait for at exit, for ever
        lingering = [
            t
            for t in threading.enumerate()
            if t is not threading.main_thread() and t.is_alive() and not t.daemon
        ]
        if lingering:
            log.warning("faust left threads running (%s); exiting without them", lingering)
            failed = faust_eos.closing_commit_failed()
            _exit_now(code or (1 if failed else 0))
    failed = faust_eos.closing_commit_failed()
    if failed is not None:
        raise UnderstudyError(
            f"the evaluator's closing commit failed ({failed!r}); the next run redoes the "
            "work since its last commit"
        )
    if code:
        raise UnderstudyError(f"the evaluator stopped with exit code {code}")
