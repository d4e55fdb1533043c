"""A simulated production service: the house-price API, mirrored through the tap.

The demo and the integration tests need a service that behaves like a real one: it draws
requests from a market that drifts (:class:`streams.demo_models.HouseMarket`), answers each
with the production model, measures that model's latency, and mirrors the request and the
answer through a :class:`streams.tap.Tap` exactly as an instrumented service would. The
shadow worker, joiner and evaluator then see nothing that a real deployment would not send.

Request ids are deterministic (``f"{seed}-{i}"``), so a rerun with the same seed sends the
same requests with the same ids and the same features (event times are wall-clock, or
simulated, see ``time_step_ms``).

The drift schedule: no drift for the first ``drift_after`` fraction of the events, then a
linear ramp to full drift over the next :data:`RAMP_FRACTION` of them (the seed's market
shifted *fast*), then full drift to the end. An endless run (``events=None``) places the
schedule on a nominal run of :data:`NOMINAL_EVENTS` events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streams.config import Config
from streams.demo_models import PRIMARY_ID, HouseMarket, primary, ridge_candidate, tree_candidate
from streams.labelsource import LabelSource
from streams.tap import Tap

__all__ = ["NOMINAL_EVENTS", "RAMP_FRACTION", "USE_CASE", "ServiceStats", "drift_at", "run_service"]

log = logging.getLogger(__name__)

#: The simulated endpoint, copied into every request and prediction.
USE_CASE = "house-price"
#: Fraction of the events over which the drift ramps from 0 to 1.
RAMP_FRACTION = 0.1
#: Length of the drift schedule of an endless run.
NOMINAL_EVENTS = 10_000
#: Requests drawn from the market at a time (the drift is constant within a chunk).
_CHUNK = 50
#: The models the service can answer with: the primary, and each demo candidate once a
#: promotion on ``<prefix>.control`` makes it the primary (the tap says which, per request).
MODELS: dict[str, Callable[[dict[str, Any]], float]] = {
    PRIMARY_ID: primary.predict_one,
    "price-ridge@4": ridge_candidate.predict_one,
    "price-tree@1": tree_candidate.predict_one,
}


@dataclass
class ServiceStats:
    """What the simulated service did, and what its tap reported."""

    #: Requests the service answered.
    requests: int = 0
    #: Requests whose primary model raised (answered with an error prediction).
    primary_errors: int = 0
    #: Events the tap delivered to Kafka (requests and predictions).
    sent: int = 0
    #: Events the tap dropped (buffer full, Kafka away); never raised into the service.
    dropped: int = 0
    #: Events whose delivery failed or that could not be encoded.
    failed: int = 0
    elapsed_s: float = 0.0
    #: Drift of the market at the last request.
    final_drift: float = 0.0
    #: Labels (sale prices) delivered, and dropped or failed, when labels were on.
    labels: int = 0
    labels_lost: int = 0


def drift_at(i: int, events: int | None, drift_after: float) -> float:
    """Market drift in ``[0, 1]`` at request ``i`` (see the module docstring)."""
    total = events if events else NOMINAL_EVENTS
    start = drift_after * total
    if i < start:
        return 0.0
    return min(1.0, (i - start) / (RAMP_FRACTION * total))


def run_service(
    cfg: Config,
    *,
    events: int | None,
    rate: float,
    drift_after: float = 0.5,
    seed: int = 7,
    stop: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
    time_step_ms: float | None = None,
    tap: Tap | None = None,
    use_case: str = USE_CASE,
    label_lag: int | None = None,
) -> ServiceStats:
    """Serve ``events`` requests (forever if ``None``) at ``rate`` per second (0: flat out).

    ``time_step_ms`` switches the event time to a simulated clock that starts now and
    advances that much per request, so a short, fast demo still spans many event-time
    windows (and the drift shows up window by window). ``None`` stamps wall-clock time.
    ``tap`` lets a caller pass its own :class:`streams.tap.Tap` (it is then neither
    closed nor flushed, and the counts are its totals so far); by default one is opened on
    ``cfg`` with ``use_case`` and closed, flushing, at the end.
    ``progress`` is called with the number of requests served so far, every chunk.
    ``label_lag``: publish each request's true sale price on ``<prefix>.labels`` that many
    requests later (:class:`streams.labelsource.LabelSource`); None: no labels.
    """
    if events is not None and events < 0:
        raise ValueError(f"events must be >= 0, got {events}")
    if rate < 0:
        raise ValueError(f"rate must be >= 0, got {rate}")
    if not 0.0 <= drift_after <= 1.0:
        raise ValueError(f"drift_after must be in [0, 1], got {drift_after}")

    stop = stop or threading.Event()  # one code path: pacing waits on it either way
    own_tap = tap is None
    if tap is None:
        tap = Tap(cfg, use_case=use_case, primary=PRIMARY_ID)
    market = HouseMarket(seed)
    labels = LabelSource(cfg, label_lag) if label_lag is not None else None
    stats = ServiceStats()
    start_wall = time.monotonic()
    start_ms = int(time.time() * 1000)
    event_ms = start_ms
    i = 0
    try:
        while (events is None or i < events) and not stop.is_set():
            drift = drift_at(i, events, drift_after)
            n = _CHUNK if events is None else min(_CHUNK, events - i)
            for numeric, categorical, context in market.sample(n, drift):
                if rate > 0:
                    ahead = start_wall + i / rate - time.monotonic()
                    if ahead > 0.001 and stop.wait(ahead):
                        break
                if time_step_ms is None:
                    event_ms = int(time.time() * 1000)
                else:
                    event_ms = start_ms + int(i * time_step_ms)
                request_id = f"{seed}-{i}"
                tap.record_request(
                    request_id, numeric, categorical, context=context, event_time_ms=event_ms
                )
                if labels is not None:  # the label RNG is its own: requests are unchanged
                    labels.add(request_id, market.price(numeric, categorical, drift), event_ms)
                # the model a promotion made primary, as a real service would route
                model_id = tap.primary or PRIMARY_ID
                predict = MODELS.get(model_id)
                if predict is None:  # a promotion to a model this service cannot run
                    model_id, predict = PRIMARY_ID, primary.predict_one
                t0 = time.perf_counter()
                value: float | None
                error: str | None
                try:
                    value, error = float(predict({**numeric, **categorical})), None
                except Exception as exc:  # a real service answers with an error, goes on
                    value, error = None, f"{type(exc).__name__}: {exc}"
                    stats.primary_errors += 1
                latency_ms = (time.perf_counter() - t0) * 1000.0
                tap.record_prediction(
                    request_id,
                    model_id,
                    value=value,
                    label=None,
                    scores=None,
                    latency_ms=latency_ms,
                    error=error,
                    event_time_ms=event_ms,
                )
                i += 1
            stats.final_drift = drift
            if progress is not None:
                progress(i)
    finally:
        stats.requests = i
        stats.elapsed_s = time.monotonic() - start_wall
        if own_tap:
            # within a stage's 10 s stop budget even when Kafka is away (the rest is counted)
            tap.close(timeout=7.0)
        if labels is not None:
            labels.close(int(time.time() * 1000) if time_step_ms is None else event_ms, 5.0)
            stats.labels, stats.labels_lost = labels.sent, labels.dropped + labels.failed
        tap_stats = tap.stats()
        stats.sent, stats.dropped = tap_stats.sent, tap_stats.dropped
        stats.failed = tap_stats.failed + tap_stats.encode_errors
    log.info(
        "simulated service: %d requests in %.1f s, %d events sent, %d dropped, %d failed",
        stats.requests,
        stats.elapsed_s,
        stats.sent,
        stats.dropped,
        stats.failed,
    )
    return stats
