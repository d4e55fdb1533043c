"""``understudy``: the one entry point for every role.

Each stage runs alone (``worker``, ``joiner``, ``evaluator``) and talks to the others only
through topics, so any of them can be restarted, scaled or moved. Progress and logs go to
stderr; only what a command is asked to print (``--json``) goes to stdout.

Exit codes: 0 done, 1 an error this package reports on purpose (bad configuration, no
broker, missing topics, a fatal client error: one ``understudy: error: ...`` line on
stderr, no traceback), 2 a usage error, 130 interrupted. Every command that talks to Kafka
first checks its ``kafka:`` options and that a broker answers (within
:data:`streams.kafka.REACH_TIMEOUT_S`), so a supervisor sees a failed start at once.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException

from streams.config import Config
from streams.errors import BrokerError, UnderstudyError


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


STOP_GRACE_S = 8.0
"""How long a stage may take to stop after SIGTERM before it exits anyway."""


def _stop_on_signals(grace_s: float | None = None) -> threading.Event:
    """SIGTERM and SIGINT end the loop after the current batch, never inside a commit.

    With ``grace_s``, a stage still running that long after the signal (a Kafka call
    waiting on a broker that went away) exits with status 1 anyway. Only for stages whose
    work is transactional: what they had not committed is aborted by the broker and done
    again by the next incarnation, as after a SIGKILL.
    """
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        if grace_s is not None and not stop.is_set():
            threading.Thread(target=_exit_after, args=(grace_s,), daemon=True).start()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    return stop


HUNG_AFTER_BACK_S = 10.0
"""How long a transactional call may stay overdue while the broker answers before the
watchdog ends the process. While the broker does not answer the stage waits, however long
the outage: the call may still return once it is back."""


def _watch_transactions(
    stage: Any, role: str, answers: Callable[[], bool] | None = None, every_s: float = 1.0
) -> None:
    """End the process when its transaction's Kafka call is overdue
    (:class:`streams.transactions.Deadline`) and stays so for :data:`HUNG_AFTER_BACK_S`
    while the broker answers (``answers``: by default a metadata request of its own):
    every thread's stack to stderr first, for the log."""
    import faulthandler

    from streams.errors import BrokerError
    from streams.kafka import check_reachable

    def reachable() -> bool:
        try:
            check_reachable(stage.cfg, timeout=2.0)
        except BrokerError:
            return False
        return True

    answers = answers or reachable
    deadline = stage.deadline
    answered_since: float | None = None
    while True:
        time.sleep(every_s)
        if not deadline.overdue(time.monotonic()):
            answered_since = None
            continue
        if not answers():
            answered_since = None  # an outage: the call may return once the broker is back
            continue
        now = time.monotonic()
        answered_since = now if answered_since is None else answered_since
        if now - answered_since >= HUNG_AFTER_BACK_S and deadline.overdue(now):
            _err(
                f"understudy: error: the {role}'s {deadline.what or 'transaction'} has not "
                f"returned past its own timeout, though the broker has answered for "
                f"{HUNG_AFTER_BACK_S:.0f} s (a Kafka call that hangs); exiting so that a "
                "restart resumes from the last commit"
            )
            faulthandler.dump_traceback(all_threads=True)
            os._exit(1)


def _exit_after(grace_s: float) -> None:
    time.sleep(grace_s)
    _err(
        f"understudy: did not stop within {grace_s:.0f} s of the signal; exiting (uncommitted "
        "work is aborted by the broker and redone on restart)"
    )
    os._exit(1)


def connect(args: argparse.Namespace) -> Config:
    """:func:`resolve_config`, then refuse bad client options and an unreachable broker."""
    from streams.kafka import check_reachable, validate_client_options

    cfg = resolve_config(args)
    validate_client_options(cfg)
    check_reachable(cfg)
    return cfg


def resolve_config(args: argparse.Namespace) -> Config:
    """Config from file, environment and flags; find a broker as DESIGN section 6 says.

    Order: an explicit ``--bootstrap`` / ``KAFKA_BOOTSTRAP_SERVERS`` / config file, then an
    embedded broker that is already running (only the demo starts one itself).
    """
    overrides: dict[str, Any] = {
        "bootstrap_servers": getattr(args, "bootstrap", None),
        "prefix": getattr(args, "prefix", None),
        "rules_path": getattr(args, "rules", None),
        "baseline_path": getattr(args, "baseline", None),
        "reference_requests": getattr(args, "reference_requests", None),
        "auto_promote": getattr(args, "auto_promote", None),
        "promote_old_primary": getattr(args, "auto_old_primary", None),
    }
    cfg = Config.load(getattr(args, "config", None), **overrides)
    if cfg.bootstrap_servers:
        return cfg
    from streams import broker

    info = broker.status()
    if info is None:
        raise BrokerError(
            "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS (or bootstrap_servers in the config "
            "file), or start the embedded one with `understudy broker start`"
        )
    return cfg.replace(bootstrap_servers=info.bootstrap)


# -- broker ------------------------------------------------------------------------------


def cmd_broker(args: argparse.Namespace) -> int:
    from streams import broker

    home = Path(args.home) if args.home else None
    if args.action == "start":
        info = broker.start(port=args.port, home=home, progress=_err)
        _err(f"broker log: {info.log_file}")
        print(info.bootstrap)
        return 0
    if args.action == "status":
        running = broker.status(home=home)
        if running is None:
            _err("embedded broker: not running")
            return 1
        print(f"running pid={running.pid} bootstrap={running.bootstrap} log={running.log_file}")
        return 0
    stopped = broker.stop(home=home)
    _err("embedded broker stopped" if stopped else "embedded broker was not running")
    return 0


# -- topics ------------------------------------------------------------------------------


def cmd_topics(args: argparse.Namespace) -> int:
    from streams.kafka import check_copartitioned, ensure_topics

    cfg = connect(args)
    if args.partitions:
        cfg = cfg.replace(partitions=args.partitions)
    if args.action == "create":
        created = ensure_topics(cfg)
        for name in created:
            _err(f"created {name}")
        n = check_copartitioned(cfg)
        if args.partitions and n != args.partitions:
            _err(
                f"note: the topics already exist with {n} partitions; --partitions "
                f"{args.partitions} is not applied (changing the count would send the same "
                "request_id to another partition than its earlier events)"
            )
        _err(f"topics of prefix {cfg.prefix!r} ready on {cfg.bootstrap_servers} ({n} partitions)")
        return 0
    n = check_copartitioned(cfg)
    print(f"co-partitioned: {n} partitions")
    return 0


# -- stages ------------------------------------------------------------------------------


# Each stage checks its settings and the broker before it imports its (heavy) module, so a
# failed start is reported in about REACH_TIMEOUT_S, not that plus seconds of imports.


def cmd_worker(args: argparse.Namespace) -> int:
    if not args.candidate:
        raise UnderstudyError("give at least one --candidate ID=package.module:attr")
    if args.budget <= 0:
        raise UnderstudyError(f"--budget must be > 0 seconds, got {args.budget}")
    if not 0.0 <= args.latency_sample <= 1.0:
        raise UnderstudyError(f"--latency-sample must be in [0, 1], got {args.latency_sample}")
    from streams.models import load_candidate

    _check_learn_flags(args)
    example = _warm_up_request(args.warm_up_request)
    # Models load (and warm up) before Kafka: a bad spec is one line at once, broker or not.
    candidates = [
        load_candidate(spec, sample_rate=args.latency_sample, example=example)
        for spec in args.candidate
    ]
    ids = [c.model_id for c in candidates]
    for name in args.learn:
        if name not in ids:
            raise UnderstudyError(
                f"--learn {name}: not a --candidate (candidates: {', '.join(ids)})"
            )
        model = candidates[ids.index(name)].model
        if not callable(getattr(model, "learn_one", None)):
            raise UnderstudyError(
                f"--learn {name}: its model ({type(model).__name__}) has no learn_one(x, y); "
                "only river-style models can learn online"
            )
    cfg = connect(args)
    from streams.worker import ShadowWorker

    learning = _learn_settings(args, cfg)
    exactly_once = args.exactly_once or cfg.worker_exactly_once
    guarantee = "exactly-once" if exactly_once else "at-least-once"
    _err(
        f"worker ({guarantee}): scoring {', '.join(c.model_id for c in candidates)} on "
        f"{cfg.prefix}.requests"
    )
    worker = ShadowWorker(
        cfg,
        candidates,
        batch_size=args.batch_size,
        budget_s=args.budget,
        exactly_once=exactly_once,
        instance=args.instance,
        learning=learning,
        pin_threads=not args.no_pin_threads,
    )
    if exactly_once:
        threading.Thread(target=_watch_transactions, args=(worker, "worker"), daemon=True).start()
    stats = worker.run(
        idle_exit_s=args.idle_exit,
        # a transactional worker's unfinished batch is aborted by the broker: it may exit
        # past the grace; an at-least-once one bounds its own stop (worker.STOP_GRACE_S)
        stop=_stop_on_signals(grace_s=STOP_GRACE_S if exactly_once else None),
    )
    _err(f"worker stopped: {stats}")
    return 0


def _check_learn_flags(args: argparse.Namespace) -> None:
    """``--learn`` and its options agree (before any model loads or Kafka call)."""
    if not args.learn:
        for flag, value in (
            ("--state-dir", args.state_dir),
            ("--learn-cap", args.learn_cap),
            ("--learn-horizon", args.learn_horizon),
        ):
            if value is not None:
                raise UnderstudyError(f"{flag} applies to learning candidates: give --learn ID")
        return
    if args.state_dir is None:
        raise UnderstudyError(
            "--learn needs --state-dir DIR: where the learner's checkpoint is kept, so that a "
            "restart keeps what it learned"
        )
    if args.learn_cap is not None and args.learn_cap < 1:
        raise UnderstudyError(f"--learn-cap must be >= 1, got {args.learn_cap}")
    if args.learn_horizon is not None and args.learn_horizon < 0:
        raise UnderstudyError(f"--learn-horizon must be >= 0 seconds, got {args.learn_horizon}")
    if args.checkpoint_every <= 0:
        raise UnderstudyError(
            f"--checkpoint-every must be > 0 seconds, got {args.checkpoint_every}"
        )


def _learn_settings(args: argparse.Namespace, cfg: Config) -> Any:
    """``--learn`` and its options as :class:`streams.learning.LearnSettings` (None without)."""
    if not args.learn:
        return None
    from streams.learning import LearnSettings

    horizon_ms = (
        cfg.label_horizon_ms if args.learn_horizon is None else round(args.learn_horizon * 1000)
    )
    try:
        return LearnSettings(
            models=tuple(args.learn),
            state_dir=Path(args.state_dir),
            cap=100_000 if args.learn_cap is None else args.learn_cap,
            horizon_ms=horizon_ms,
            checkpoint_s=args.checkpoint_every,
        )
    except ValueError as exc:
        raise UnderstudyError(str(exc)) from None


def _warm_up_request(text: str | None) -> dict[str, Any] | None:
    """``--warm-up-request``: a JSON object of features, inline or ``@path/to/file.json``."""
    if text is None:
        return None
    import json

    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        example = json.loads(raw)
    except (OSError, ValueError) as exc:
        raise UnderstudyError(f"--warm-up-request: cannot read a JSON object: {exc}") from None
    if not isinstance(example, dict):
        raise UnderstudyError("--warm-up-request must be a JSON object of feature: value")
    return example


def _timeout_argument(p: argparse.ArgumentParser) -> None:
    """``--timeout`` of the commands that read a deployment's topics to their end."""
    p.add_argument(
        "--timeout", type=_seconds, default=30.0, help="longest read of the topics, s (default 30)"
    )


def _seconds(text: str) -> float:
    """An argparse type: a finite duration above 0 s, else a usage error naming the flag
    (a negative or NaN timeout used to read nothing and exit 0)."""
    x = _finite(text)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return x


def _rate(text: str) -> float:
    """An argparse type: requests per second, finite and at least 0 (0: as fast as it can)."""
    x = _finite(text)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return x


def _finite(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return x


def _positive_int(text: str) -> int:
    """An argparse type: a count of at least 1, else a usage error naming the flag."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def cmd_joiner(args: argparse.Namespace) -> int:
    cfg = connect(args)
    from streams.joiner import DEFAULT_BATCH, Joiner

    who = args.instance or "(unique instance, no static membership)"
    _err(f"joiner {who}: joining {cfg.prefix}.requests + {cfg.prefix}.predictions")
    # instance=None: the joiner picks a unique id, so joiners started without --instance
    # never fence each other (see the flag's help)
    batch = DEFAULT_BATCH if args.batch_size is None else args.batch_size
    joiner = Joiner(cfg, instance=args.instance, batch_size=batch)
    threading.Thread(target=_watch_transactions, args=(joiner, "joiner"), daemon=True).start()
    stats = joiner.run(idle_exit_s=args.idle_exit, stop=_stop_on_signals(grace_s=STOP_GRACE_S))
    _err(f"joiner stopped: {stats}")
    return 0


def cmd_evaluator(args: argparse.Namespace) -> int:
    from streams.evaluator import load_judging, run_evaluator

    judging = load_judging(resolve_config(args))  # a bad rules file: refused before Kafka
    cfg = connect(args)
    _err(
        f"evaluator: merging {cfg.prefix}.partials into {cfg.prefix}.metrics; "
        f"{len(judging.rules)} alert rules from {judging.rules_source}; drift reference: "
        + (
            f"baseline {cfg.baseline_path}"
            if cfg.baseline_path
            else f"the first {cfg.reference_requests} requests"
        )
        + f"; verdicts at alpha {cfg.verdict_alpha:g}"
        + (
            f", auto-promotion ({cfg.promote_old_primary} the old primary)"
            if cfg.auto_promote
            else ""
        )
    )
    run_evaluator(cfg, loglevel=args.loglevel, judging=judging)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    """Publish a promotion: the tap of every service process switches its primary."""
    if not args.candidate.strip():
        raise UnderstudyError(
            "give the candidate's model id, e.g. `understudy promote price-tree@1`"
        )
    cfg = connect(args)
    from streams.control import current_primary, operator, promotion_record, publish_control
    from streams.errors import TopicLayoutError
    from streams.kafka import Topics, partition_counts

    topics = Topics(cfg.prefix)
    present = partition_counts(cfg, [topics.control, topics.verdicts])
    if topics.control not in present:
        raise TopicLayoutError(
            f"missing topic {topics.control}: run `understudy topics create` "
            f"(prefix {cfg.prefix!r})"
        )

    previous = args.previous_primary
    if previous is None:
        previous = current_primary(cfg, args.candidate)
    if previous == args.candidate:
        raise UnderstudyError(f"{args.candidate} is already the primary")
    record = promotion_record(
        args.candidate,
        previous_primary=previous,
        old_primary=args.old_primary.upper(),
        reason=args.reason,
        who=operator(),
    )
    publish_control(cfg, record)
    fate = "retired" if args.old_primary == "retire" else "kept as a shadow"
    _err(
        f"promoted {args.candidate} on {cfg.prefix}.control; the previous primary "
        f"{previous or '(unknown)'} is {fate}"
    )
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    cfg = connect(args)
    from streams.alerts.follow import follow_alerts

    if not args.once:
        _err(f"alerts on {cfg.prefix}.alerts (latest state, then as they come; Ctrl-C stops)")
    follow_alerts(
        cfg,
        out=sys.stdout,
        as_json=args.json,
        once=args.once,
        stop=_stop_on_signals(),
        idle_exit_s=args.idle_exit,
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = connect(args)
    from streams.status import print_status, read_status

    status = read_status(cfg, timeout=args.timeout)
    print_status(status, sys.stdout, as_json=args.json)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    cfg = connect(args)
    from streams.report import render_report
    from streams.status import read_status

    status = read_status(cfg, timeout=args.timeout, history=True)
    out = Path(args.out)
    try:
        out.write_text(render_report(status), encoding="utf-8")
    except OSError as exc:
        raise UnderstudyError(f"cannot write the report to {out}: {exc.strerror}") from exc
    windows = sum(len(w) for w in status.view.window_history.values())
    _err(
        f"report: {out} ({len(status.view.cumulative)} candidates, {windows} window snapshots, "
        f"{len(status.view.alerts)} alert transitions)"
    )
    return 0


def cmd_exporter(args: argparse.Namespace) -> int:
    cfg = connect(args)
    from streams.exporter import Exporter

    try:
        exporter = Exporter(cfg, host=args.host, port=args.port)
    except OSError as exc:
        raise UnderstudyError(
            f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from exc
    host, port = exporter.address
    _err(f"exporter: serving http://{host}:{port}/metrics from {cfg.prefix}'s topics")
    exporter.run(_stop_on_signals())
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from streams.baseline import baseline_build

    return baseline_build(args)


def cmd_demo_service(args: argparse.Namespace) -> int:
    cfg = connect(args)
    from streams.simulation import run_service

    stats = run_service(
        cfg, events=args.events, rate=args.rate, seed=args.seed, stop=_stop_on_signals()
    )
    _err(f"service stopped: {stats}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if Config.load(args.config, bootstrap_servers=args.bootstrap).bootstrap_servers:
        connect(args)  # a broker was named: refuse at once if it does not answer
    from streams.demo import run_demo

    return run_demo(args)


# -- parser ------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (also UNDERSTUDY_CONFIG)")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (also KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--prefix", help="topic prefix (default 'understudy')")


def _baseline_arguments(p: argparse.ArgumentParser) -> None:
    from streams.baseline import add_arguments

    add_arguments(p)


def _instance_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--instance",
        default=os.environ.get("UNDERSTUDY_INSTANCE") or None,
        help="stable id of this instance: enables static membership and a fixed "
        "transactional id (where the stage uses transactions), so a restart with the same "
        "id resumes at once; omit for a unique one (also UNDERSTUDY_INSTANCE)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="understudy", description="Streaming shadow evaluation of ML models on Kafka."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="the embedded single-node Kafka (KRaft)")
    p.add_argument("action", choices=["start", "status", "stop"])
    p.add_argument("--port", type=int, help="listener port (default: a free one)")
    p.add_argument("--home", help="broker directory (default ~/.cache/understudy/broker)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="create or check the deployment's topics")
    p.add_argument("action", choices=["create", "check"])
    p.add_argument("--partitions", type=int, help="partitions of the joined topics (default 6)")
    _common(p)
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("worker", help="shadow worker: score requests with candidate models")
    p.add_argument(
        "--candidate",
        action="append",
        default=[],
        metavar="ID=SPEC",
        help="candidate model (repeatable): ID=package.module:attr, ID=path/file.py:attr, "
        "ID=model.joblib, ID=model.pkl or ID=model.onnx, with ?features=a,b,c for the column "
        "order of an array model, e.g. 'gbr@3=gbr.joblib?features=sqft,bedrooms'",
    )
    p.add_argument("--batch-size", type=_positive_int, default=500)
    p.add_argument(
        "--budget",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="each candidate's time budget per batch; past it, its predictions for the batch "
        "are published as timeouts (default 5)",
    )
    p.add_argument(
        "--latency-sample",
        type=float,
        default=1 / 32,
        metavar="FRACTION",
        help="share of a vectorized candidate's requests also scored alone to measure the "
        "single-call latency it publishes (default 1/32, at least one per batch)",
    )
    p.add_argument(
        "--warm-up-request",
        metavar="JSON",
        help="features of a request every candidate is called with once at start (a JSON "
        "object, or @file.json); a candidate that raises on it is refused",
    )
    p.add_argument(
        "--no-pin-threads",
        action="store_true",
        help="leave the worker's Python threads wherever Linux runs them; by default the "
        "poll thread and the candidates' threads share one CPU, which moves every 2 s "
        "(fewer cache misses between them; librdkafka's threads are never pinned)",
    )
    p.add_argument(
        "--exactly-once",
        action="store_true",
        help="commit each batch's predictions and offsets in one Kafka transaction, so a "
        "restart after a crash publishes no duplicate (also worker_exactly_once in the "
        "config); default: at-least-once",
    )
    p.add_argument(
        "--learn",
        action="append",
        default=[],
        metavar="MODEL_ID",
        help="this candidate (a river model, with learn_one) keeps learning from "
        "<prefix>.labels while shadowed: predict first, learn when the label comes "
        "(repeatable; see docs/online-learning.md)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where learners keep their checkpoints (needed with --learn); its files are "
        "pickles, as trusted as a model file",
    )
    p.add_argument(
        "--learn-cap",
        type=int,
        metavar="N",
        help="requests' features a learner keeps awaiting labels, and early labels awaiting "
        "their request (default 100000 each); the oldest beyond it are dropped and counted",
    )
    p.add_argument(
        "--learn-horizon",
        type=_seconds,
        metavar="SECONDS",
        help="how long (event time) a learner waits for a request's label (default: "
        "label_horizon_ms of the config, 24 h)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="seconds between a learner's checkpoints (one more when the worker stops; default 30)",
    )
    _instance_argument(p)
    p.add_argument("--idle-exit", type=_seconds, help="exit after this many idle seconds")
    _common(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("joiner", help="join events and accumulate partial statistics")
    _instance_argument(p)
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        help="most messages one batch (one transaction) takes; larger ones catch up a backlog "
        "with fewer transactions (default 5000, the joiner's DEFAULT_BATCH)",
    )
    p.add_argument("--idle-exit", type=_seconds, help="exit after this many idle seconds")
    _common(p)
    p.set_defaults(func=cmd_joiner)

    p = sub.add_parser("evaluator", help="merge partials, publish metric snapshots (faust)")
    p.add_argument("--loglevel", default="warn", choices=["crit", "error", "warn", "info", "debug"])
    p.add_argument("--rules", help="alert rules YAML (default: the shipped deploy/rules.yaml)")
    p.add_argument(
        "--baseline", help="drift reference built by `understudy baseline build` (default: none)"
    )
    p.add_argument(
        "--reference-requests",
        type=int,
        help="without --baseline: the first N requests are the drift reference (default 2000)",
    )
    p.add_argument(
        "--auto-promote",
        action="store_true",
        default=None,
        help="publish a promotion on <prefix>.control on a PROMOTE verdict (also auto_promote)",
    )
    p.add_argument(
        "--old-primary",
        dest="auto_old_primary",
        choices=["retire", "shadow"],
        help="with --auto-promote: retire the old primary or keep it as a shadow "
        "(default retire; also promote_old_primary)",
    )
    _common(p)
    p.set_defaults(func=cmd_evaluator)

    p = sub.add_parser(
        "promote", help="make a candidate the primary: a Control event the taps follow"
    )
    p.add_argument("candidate", help="model id (name@version) that becomes the primary")
    p.add_argument("--reason", default="", help="why, for the record")
    p.add_argument(
        "--old-primary",
        choices=["retire", "shadow"],
        default="retire",
        help="what happens to the model it replaces: retired, or kept as a shadow candidate "
        "(default retire)",
    )
    p.add_argument(
        "--previous-primary",
        help="model id it replaces (default: the latest promotion's, else the primary of "
        "the candidate's latest verdict)",
    )
    _common(p)
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("alerts", help="follow the alert transitions (FIRING / RESOLVED)")
    p.add_argument("--json", action="store_true", help="one JSON object per alert")
    p.add_argument("--once", action="store_true", help="print what is there now and exit")
    p.add_argument("--idle-exit", type=_seconds, help="exit after this many seconds without one")
    _common(p)
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser(
        "status",
        help="each candidate's latest figures and verdict, the alerts firing, the stages' lag",
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    _timeout_argument(p)
    _common(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "report",
        help="an HTML file with plots: disagreement, latency, drift and the promotion evidence "
        "over time, read from the deployment's topics",
    )
    p.add_argument("--out", default="understudy-report.html", help="the file to write")
    _timeout_argument(p)
    _common(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "exporter",
        help="serve each candidate's latest figures, verdicts and alerts as Prometheus metrics",
    )
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument(
        "--port", type=int, default=9464, help="port to listen on (default 9464; 0: any free)"
    )
    _common(p)
    p.set_defaults(func=cmd_exporter)

    p = sub.add_parser("baseline", help="drift reference profiles")
    bsub = p.add_subparsers(dest="baseline_command", required=True)
    b = bsub.add_parser("build", help="a reference profile from CSV, Parquet or JSON lines")
    _baseline_arguments(b)
    b.set_defaults(func=cmd_baseline)

    p = sub.add_parser("demo-service", help="the simulated production service alone")
    p.add_argument("--events", type=int, help="requests to send (default: until stopped)")
    p.add_argument("--rate", type=_rate, default=200.0, help="requests per second (0: max)")
    p.add_argument("--seed", type=int, default=7)
    _common(p)
    p.set_defaults(func=cmd_demo_service)

    p = sub.add_parser("demo", help="the whole flow on a local broker, with live metrics")
    p.add_argument("--events", type=int, help="stop after N requests and the final snapshot")
    p.add_argument("--duration", type=_seconds, help="stop after S seconds of traffic")
    p.add_argument(
        "--rate",
        type=_rate,
        default=300.0,
        help="requests per second (300: ~300 per 1 s window, enough for the drift rule's 200)",
    )
    p.add_argument("--window-ms", type=int, default=1000, help="evaluation window")
    p.add_argument(
        "--reference-requests",
        type=int,
        help="requests in the drift reference (default: a quarter of --events, at most 2000)",
    )
    p.add_argument(
        "--label-lag",
        type=int,
        default=100,
        help="each sale price is published as a label this many requests later (-1: none)",
    )
    p.add_argument("--json", action="store_true", help="print final snapshots as JSON lines")
    p.add_argument("--keep-broker", action="store_true", help="leave the embedded broker up")
    p.add_argument("--seed", type=int, default=7)
    _common(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader gone by now is a broken pipe below
        return rc
    except UnderstudyError as exc:
        _err(f"understudy: error: {_one_line(exc)}")
        return 1
    except KafkaException as exc:  # a client error no stage wrapped: still one line
        _err(f"understudy: Kafka error: {_one_line(exc)}")
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`understudy status | head`): stop quietly, as
        # a Unix tool killed by SIGPIPE does, and keep the interpreter's last flush of
        # stdout from printing the same error again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
