"""``understudy demo``: the whole flow on one machine, with live metrics.

It finds or starts a real Kafka (the embedded broker by default), creates a fresh set of
topics, starts the shadow worker (two candidates), the joiner and the evaluator as separate
processes, exactly as a deployment would run them, runs the simulated house-price service
in this process, and shows the evaluator's cumulative snapshots as they arrive. It stops
after ``--events`` requests (once every candidate's final snapshot is in) or ``--duration``
seconds, or on Ctrl-C, and leaves no process behind but a broker it was asked to keep.

With ``--json`` it prints each candidate's final CUMULATIVE snapshot as one JSON line, as
the evaluator published it; its ``conservation`` is the law over every joiner partition:
``{"requests": N, "terms": {name: count, ...}, "holds": true|false}``, where ``holds``
says whether the terms add up to ``requests``. Two keys are added to it: ``window_drift``,
the drift rows (features and outputs against the reference) of that candidate's last
WINDOW snapshot with traffic (a window of late labels only has none), and
``alerts_raised``, every alert transition of that candidate or of the shared features
(candidate ``*``) seen on ``<prefix>.alerts``, in order.

The simulated market drifts halfway through (:mod:`streams.simulation`); the first quarter
of the requests (at most 2,000) is the drift reference, so the drift shows up in the live
table, and its alerts as they fire. The defaults (300 requests/s, 1 s windows) give each
window more than the 200 values the drift rule needs as evidence, and ``--events 2000``
about three windows after the onset: the alarm, which needs two drifting windows in a
row, fired two windows after the onset window in each of three runs measured.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from streams import broker
from streams.config import Config
from streams.demo_models import CANDIDATE_SPECS
from streams.errors import UnderstudyError
from streams.kafka import ensure_topics
from streams.view import MetricsView

CANDIDATES = CANDIDATE_SPECS
FINAL_WAIT_S = 180.0
#: Longest wait, once every request is settled, for the labels still coming.
LABELS_WAIT_S = 10.0


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised in the main thread so that the stages get stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (``timeout``, a service manager) end the demo the same way.

    The stages run in their own sessions, so a demo that died of SIGTERM would leave them
    running. SIGINT is set too, not left to Python: a shell that starts a command in the
    background sets SIGINT to ignored, and Python keeps an inherited ignore.
    """

    def handler(signum: int, _frame: object) -> None:
        raise _Stopped(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)


def _ignore_stop_signals() -> None:
    """While the stages are being stopped: a second signal must not cut that short."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _term_when_parent_dies() -> None:
    """In the child before exec: SIGTERM it when the demo dies, even of SIGKILL.

    The stages have their own sessions, so nothing else would stop them; a demo killed
    with SIGKILL (an OOM killer, a test timeout) used to leave three of them running.
    Linux only; elsewhere the demo's own signal handling is all there is.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


class Roles:
    """The stage processes of the demo, with their logs, stopped together."""

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.cfg.to_env())
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def spawn(self, name: str, *argv: str) -> None:
        log_path = self.run_dir / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", name, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
            preexec_fn=_term_when_parent_dies,
        )

    def check(self) -> None:
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                tail = (self.run_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise UnderstudyError(f"the {name} process exited with {code}:\n{tail}")

    def stop(self, timeout: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in self._logs:
            log.close()


#: coverage counters that settle a request for one candidate: joined, or why not
_SETTLED = ("pairs", "no_candidate", "no_primary", "no_prediction")


def _settled(snapshot: dict[str, Any], total: int) -> bool:
    """Whether a CUMULATIVE snapshot is final: every request settled and in the law.

    The law (``conservation``) comes from the joiners' ledgers; its ``requests`` reach
    ``total`` once every joiner partition has published a ledger after its last request.
    """
    cov = snapshot["coverage"]
    law = snapshot.get("conservation")
    return (
        sum(cov.get(name, 0) for name in _SETTLED) >= total
        and law is not None
        and law["requests"] >= total
    )


def _reference(events: int | None) -> int:
    """The first quarter of the run, at most 2,000 requests: before the market drifts."""
    return 2_000 if not events else max(1, min(2_000, events // 4))


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the process exit code."""
    prefix = args.prefix or f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    cfg = Config.load(
        args.config,
        bootstrap_servers=args.bootstrap,
        prefix=prefix,
        window_ms=args.window_ms,
        idle_flush_ms=1500,
        lateness_ms=1000,
        reference_requests=args.reference_requests or _reference(args.events),
    )
    started_broker = False
    if not cfg.bootstrap_servers:
        info = broker.status()
        if info is None:
            info = broker.start(progress=_err)
            started_broker = True
        _err(f"kafka: embedded broker at {info.bootstrap} (log {info.log_file})")
        cfg = cfg.replace(bootstrap_servers=info.bootstrap)
    else:
        _err(f"kafka: {cfg.bootstrap_servers}")
    run_dir = broker.cache_dir() / "demo" / cfg.prefix
    run_dir.mkdir(parents=True, exist_ok=True)
    roles = Roles(cfg, run_dir)
    view: MetricsView | None = None
    stop = threading.Event()
    interrupted = False
    _stop_on_signals()
    try:
        ensure_topics(cfg)
        _err(f"topics: {cfg.prefix}.* ; stage logs in {run_dir}")
        worker_args: list[str] = []
        for spec in CANDIDATES:
            worker_args += ["--candidate", spec]
        roles.spawn("worker", *worker_args)
        roles.spawn("joiner")
        # a PROMOTE verdict becomes a promotion the service obeys through its tap
        roles.spawn("evaluator", "--auto-promote")
        view = MetricsView(cfg)
        result = _drive(args, cfg, roles, view, stop)
        if args.json:
            for cand in sorted(view.cumulative):
                print(json.dumps(view.final(cand), sort_keys=True), flush=True)
        return result
    except KeyboardInterrupt as exc:
        _ignore_stop_signals()
        interrupted = True
        signum = exc.signum if isinstance(exc, _Stopped) else signal.SIGINT
        _err(f"\ninterrupted ({signal.Signals(signum).name}): stopping the stages")
        return 128 + signum
    finally:
        _ignore_stop_signals()
        stop.set()
        roles.stop()
        if view is not None:
            view.close()
        if started_broker and not args.keep_broker:
            broker.stop()
            _err("embedded broker stopped")
        elif not interrupted:
            _err(f"kafka left running at {cfg.bootstrap_servers}")


def _drive(
    args: argparse.Namespace, cfg: Config, roles: Roles, view: MetricsView, stop: threading.Event
) -> int:
    from streams.simulation import ServiceStats, run_service

    out = sys.stderr if args.json else sys.stdout
    result: dict[str, ServiceStats] = {}
    errors: list[BaseException] = []
    sent = [0]

    def serve() -> None:
        try:
            result["stats"] = run_service(
                cfg,
                events=args.events,
                rate=args.rate,
                seed=args.seed,
                stop=stop,
                progress=lambda i: sent.__setitem__(0, i),
                label_lag=args.label_lag if args.label_lag >= 0 else None,
            )
        except BaseException as exc:
            errors.append(exc)

    if args.duration:
        timer = threading.Timer(args.duration, stop.set)
        timer.daemon = True  # an interrupted demo must not wait for it
        timer.start()
    service = threading.Thread(target=serve, name="demo-service", daemon=True)
    service.start()
    last_draw = 0.0
    done_at: float | None = None
    settled_at: float | None = None
    while True:
        view.poll(0.5)
        roles.check()
        if errors:
            raise UnderstudyError(f"the simulated service failed: {errors[0]!r}")
        now = time.monotonic()
        if now - last_draw >= 1.0:
            last_draw = now
            if out.isatty():
                out.write("\x1b[H\x1b[2J")  # redraw in place on a terminal
            print(f"\nrequests sent: {sent[0]}", file=out)
            print(view.table(), file=out, flush=True)
        if service.is_alive():
            continue
        stats = result.get("stats")
        total = stats.requests if stats else sent[0]
        if done_at is None:
            done_at = now
            _err(f"service done: {total} requests; waiting for the final snapshots")
        final = [r for r in view.cumulative.values() if _settled(r, total)]
        if len(final) >= len(CANDIDATES) and total > 0:
            if settled_at is None:
                settled_at = now
            labels = stats.labels if stats else 0
            # the last labels (published --label-lag requests late) may still be on their
            # way: a bounded wait, so the final snapshot has them, never a failed run
            waiting = [r for r in final if r["coverage"].get("labels", 0) < labels]
            if waiting and now - settled_at < LABELS_WAIT_S:
                continue
            print("\nfinal cumulative metrics", file=out)
            print(view.table(), file=out, flush=True)
            return 0
        if now - done_at > FINAL_WAIT_S:
            _err("gave up waiting for the final snapshots; the last ones are shown")
            print(view.table(), file=out, flush=True)
            return 1
