"""The tap's promises without a broker: sampling, bounded buffer, no raising, Kafka away.

"Kafka away" is real here, not mocked: the tap points at 127.0.0.1:1, where nothing
listens, so every connection attempt is refused as it would be during an outage.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.clientlog import CLIENT_LOG, RateLimiter
from streams.config import Config
from streams.errors import ConfigError
from streams.tap import PRODUCER_DEFAULTS, Tap, TapStats, producer_config

ROOT = Path(__file__).resolve().parents[2]
AWAY = "127.0.0.1:1"


def away(**kafka: str) -> Config:
    """A config whose broker is unreachable; deliveries never succeed."""
    return Config(bootstrap_servers=AWAY, prefix="unit-tap", kafka=kafka)


def settled(stats: TapStats) -> int:
    """Calls accounted for: after close() every call is in exactly one of these."""
    return stats.sampled_out + stats.sent + stats.failed + stats.dropped + stats.encode_errors


@pytest.fixture
def tap() -> Iterator[Tap]:
    t = Tap(away())
    yield t
    t.close(timeout=2.0)


# ---------------------------------------------------------------------------------------
# Sampling


def test_sampling_is_deterministic_and_near_the_rate() -> None:
    ids = [f"req-{i:06d}" for i in range(20_000)]
    a, b = Tap(away(), sample_rate=0.3), Tap(away(), sample_rate=0.3)
    try:
        picked = [a.sampled(i) for i in ids]
        assert picked == [b.sampled(i) for i in ids]
        assert sum(picked) / len(ids) == pytest.approx(0.3, abs=0.02)
        # The documented rule, so any other implementation can reproduce the decision.
        threshold = math.floor(0.3 * 2**32)
        assert picked == [zlib.crc32(i.encode("utf-8")) < threshold for i in ids]
    finally:
        a.close(timeout=1.0)
        b.close(timeout=1.0)


def test_sampling_is_stable_across_processes() -> None:
    """Not Python's salted hash(): another process (another replica) decides the same."""
    ids = [f"order-{i}" for i in range(500)]
    code = (
        "import json, sys\n"
        "from streams.config import Config\n"
        "from streams.tap import Tap\n"
        f"tap = Tap(Config(bootstrap_servers={AWAY!r}), sample_rate=0.5)\n"
        "ids = json.load(sys.stdin)\n"
        "print(json.dumps([tap.sampled(i) for i in ids]))\n"
        "tap.close(timeout=1.0)\n"
    )
    env = {**_clean_env(), "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(ids),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    with Tap(away(), sample_rate=0.5) as here:
        assert json.loads(out.stdout) == [here.sampled(i) for i in ids]


def test_request_and_predictions_of_one_id_share_the_decision() -> None:
    tap = Tap(away(), sample_rate=0.25)
    ids = [f"r{i}" for i in range(2_000)]
    requests = [tap.record_request(i, {"x": 1.0}) for i in ids]
    predictions = [tap.record_prediction(i, "m@1", value=1.0) for i in ids]
    stats = tap.close(timeout=2.0)
    assert requests == predictions == [tap.sampled(i) for i in ids]
    assert stats.sampled_out == 2 * requests.count(False)
    assert stats.accepted == 2 * requests.count(True)


@pytest.mark.parametrize(("rate", "expected"), [(0.0, False), (1.0, True)])
def test_rate_bounds_sample_none_or_all(rate: float, expected: bool) -> None:
    with Tap(away(), sample_rate=rate) as tap:
        assert {tap.sampled(f"id-{i}") for i in range(1_000)} == {expected}


def test_unknown_client_options_are_refused_at_once() -> None:
    with pytest.raises(ConfigError, match=r"no\.such\.option"):
        Tap(away(**{"no.such.option": "1"}))


def test_an_option_librdkafka_would_ignore_is_refused_without_leaking_secrets() -> None:
    secret = "hunter2-secret"
    with pytest.raises(ConfigError, match=r"sasl\.username") as info:
        Tap(away(**{"sasl.username": "svc", "sasl.password": secret}))  # no SASL protocol
    assert secret not in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [{"sample_rate": 1.5}, {"sample_rate": -0.1}, {"sample_rate": math.nan}, {"buffer_size": 0}],
)
def test_bad_construction_arguments_are_refused_at_once(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Tap(away(), **kwargs)


# ---------------------------------------------------------------------------------------
# Bounded buffer, never blocking


def test_full_buffer_drops_and_returns_false_without_blocking() -> None:
    tap = Tap(away(), buffer_size=100)
    # Hold the encoder thread out of the buffer so that it stays full: the callers must
    # still return (the test would hang here if record_* waited for the encoder).
    with tap._take_lock:
        results = [tap.record_request(f"r{i}", {"x": float(i)}) for i in range(10_000)]
        results += [tap.record_prediction(f"r{i}", "m@1", value=1.0) for i in range(1_000)]
    assert results.count(True) == 100
    assert results[:100] == [True] * 100
    stats = tap.close(timeout=1.0)
    assert stats.accepted == 100
    assert stats.dropped == 11_000 - 100
    assert stats.failed == 100  # Kafka is away: the accepted ones never got delivered
    assert stats.sent == 0
    assert settled(stats) == 11_000


def test_records_after_close_are_dropped_and_close_is_idempotent() -> None:
    tap = Tap(away())
    assert tap.record_request("a", {"x": 1.0})
    first = tap.close(timeout=1.0)
    assert tap.close(timeout=1.0) == first
    assert tap.record_request("b", {"x": 1.0}) is False
    assert tap.record_prediction("b", "m@1", value=1.0) is False
    after = tap.stats()
    assert after.dropped == first.dropped + 2
    assert after.accepted == first.accepted == 1


def test_context_manager_closes() -> None:
    with Tap(away(**{"message.timeout.ms": "100"})) as tap:
        tap.record_request("a")
    assert tap.record_request("b") is False
    assert settled(tap.stats()) == 2


# ---------------------------------------------------------------------------------------
# Never raising


class Hostile:
    """An argument whose every use raises."""

    def __bool__(self) -> bool:
        raise RuntimeError("no truth")

    def __len__(self) -> int:
        raise RuntimeError("no length")

    def items(self) -> object:
        raise RuntimeError("no items")

    def encode(self, *args: object) -> bytes:
        raise RuntimeError("no bytes")


def test_garbage_arguments_never_raise_and_count_as_encode_errors() -> None:
    garbage_requests: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((None,), {}),
        ((123, {"x": 1.0}), {}),
        ((object(),), {}),
        (("\ud800",), {}),  # not encodable as UTF-8
        (("r", [1.0, 2.0]), {}),
        (("r", "abc"), {}),
        (("r", {1: 2.0}), {}),
        (("r", {"x": "not a number"}), {}),
        (("r", {"x": None}), {}),
        (("r", {"x": 10**400}), {}),
        (("r", None, {"c": 3}), {}),
        (("r", None, {"c": b"bytes"}), {}),
        (("r",), {"context": "region=eu"}),
        (("r",), {"context": {"k": None}}),
        (("r",), {"event_time_ms": "now"}),
        (("r",), {"event_time_ms": 2**80}),
        (("r", Hostile()), {}),
        ((Hostile(),), {}),
    ]
    garbage_predictions: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((None, "m@1"), {}),
        (("r", None), {}),
        (("r", 42), {}),
        (("r", "m@1"), {"value": "high"}),
        (("r", "m@1"), {"label": 3}),
        (("r", "m@1"), {"scores": [0.1, 0.9]}),
        (("r", "m@1"), {"scores": {"a": "b"}}),
        (("r", "m@1"), {"latency_ms": "fast"}),
        (("r", "m@1"), {"error": ValueError("boom")}),
        (("r", "m@1"), {"scores": Hostile()}),
    ]
    # NaN and infinities are valid doubles: they are mirrored, not errors.
    valid: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("request", ("n1", {"x": math.nan, "y": math.inf, "z": -math.inf}), {}),
        ("prediction", ("n1", "m@1"), {"value": math.nan, "latency_ms": math.inf}),
        ("prediction", ("n1", "m@1"), {"label": "a", "scores": {"a": math.nan}}),
        ("request", ("n2", {"x": 1, "flag": True}), {}),  # ints and bools are doubles
    ]
    tap = Tap(away())
    for args, kwargs in garbage_requests:
        tap.record_request(*args, **kwargs)
    for args, kwargs in garbage_predictions:
        tap.record_prediction(*args, **kwargs)
    for kind, args, kwargs in valid:
        method: Callable[..., bool] = (
            tap.record_request if kind == "request" else tap.record_prediction
        )
        assert method(*args, **kwargs) is True
    stats = tap.close(timeout=2.0)
    calls = len(garbage_requests) + len(garbage_predictions) + len(valid)
    assert stats.encode_errors == len(garbage_requests) + len(garbage_predictions)
    assert stats.failed == len(valid)  # encoded fine, then Kafka was away
    assert settled(stats) == calls


def test_garbage_ids_with_sampling_never_raise() -> None:
    tap = Tap(away(), sample_rate=0.5)
    bad_ids: list[Any] = [None, 12, object(), "\ud800", Hostile()]
    for bad in bad_ids:
        assert tap.record_request(bad) is False
        assert tap.record_prediction(bad, "m@1") is False
        assert tap.sampled(bad) is False
    stats = tap.close(timeout=1.0)
    assert stats.encode_errors == 10
    assert settled(stats) == 10


def test_an_id_that_is_not_a_string_is_refused_at_the_call() -> None:
    """False at once (the docstring's "unusable arguments"), counted as an encode error:
    not True, then an error found later on the tap's thread."""
    tap = Tap(away())
    for bad in (None, 123, b"r-1"):
        assert tap.record_request(bad, {"x": 1.0}) is False  # type: ignore[arg-type]
        assert tap.record_prediction(bad, "m@1", value=1.0) is False  # type: ignore[arg-type]
    stats = tap.close(timeout=1.0)
    assert stats.encode_errors == 6 and stats.accepted == 0
    assert settled(stats) == 6


def test_a_str_subclass_id_is_taken() -> None:
    """An id type of the service's own (a ``str`` subclass, a StrEnum) is a string."""

    class RequestId(str):
        pass

    tap = Tap(away())
    assert tap.record_request(RequestId("r-1"), {"x": 1.0}) is True
    assert tap.record_prediction(RequestId("r-1"), "m@1", value=1.0) is True
    stats = tap.close(timeout=1.0)
    assert stats.accepted == 2 and stats.encode_errors == 0


# ---------------------------------------------------------------------------------------
# Kafka away


@pytest.mark.timeout(60)
def test_kafka_away_close_honours_its_timeout_and_counts_failed() -> None:
    """Messages would wait 120 s for Kafka; close(1 s) purges them and counts them."""
    tap = Tap(away(**{"message.timeout.ms": "120000"}))
    for i in range(1_000):
        tap.record_request(f"r{i}", {"x": float(i)})
        tap.record_prediction(f"r{i}", "m@1", value=0.5)
    assert tap.flush(timeout=0.2) > 0  # nothing can be delivered
    stats = tap.close(timeout=1.0)
    assert stats.accepted == 2_000
    assert stats.sent == 0
    assert stats.failed + stats.dropped == 2_000
    assert settled(stats) == 2_000
    assert tap._done.wait(timeout=10.0)  # the encoder thread ended and released librdkafka
    assert tap._producer is None


@pytest.mark.timeout(60)
def test_kafka_away_full_client_queue_counts_dropped() -> None:
    """librdkafka's own queue fills while Kafka is away: records are dropped, not waited."""
    tap = Tap(away(**{"queue.buffering.max.messages": "100", "message.timeout.ms": "120000"}))
    for i in range(1_000):
        tap.record_request(f"r{i}", {"x": float(i)})
    stats = tap.close(timeout=3.0)
    assert stats.accepted == 1_000
    assert stats.dropped > 0
    assert stats.failed > 0
    assert stats.failed + stats.dropped == 1_000


def test_kafka_away_logs_a_line_or_two_not_a_flood(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librdkafka reports a refused connection ~4 times a second; the service sees one line
    per 30 s of each kind (streams.clientlog), whatever the tap does meanwhile."""
    monkeypatch.setattr(CLIENT_LOG, "limiter", RateLimiter())  # a fresh budget
    caplog.set_level(logging.DEBUG)
    with Tap(away(**{"message.timeout.ms": "1000"})) as tap:
        for i in range(4):
            tap.record_request(f"r-{i}", {"x": 1.0})
            time.sleep(1.0)
    librdkafka = [r for r in caplog.records if r.name.startswith("streams.librdkafka")]
    assert 1 <= len(librdkafka) <= 2, [r.getMessage() for r in librdkafka]
    assert any("Connection refused" in r.getMessage() for r in librdkafka)


def test_concurrent_callers_are_counted_exactly() -> None:
    tap = Tap(away(), buffer_size=5_000, sample_rate=0.8)
    per_thread, threads = 5_000, 4

    def hammer(n: int) -> None:
        for i in range(per_thread):
            tap.record_request(f"t{n}-{i}", {"x": 1.0})
            tap.record_prediction(f"t{n}-{i}", "m@1", value=1.0)

    workers = [threading.Thread(target=hammer, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stats = tap.close(timeout=2.0)
    calls = 2 * per_thread * threads
    assert settled(stats) == calls
    assert stats.accepted + stats.sampled_out <= calls
    assert stats.encode_errors == stats.sent == 0


# ---------------------------------------------------------------------------------------
# Configuration and secrets


def test_producer_defaults_and_user_overrides() -> None:
    conf = producer_config(away())
    for option, value in PRODUCER_DEFAULTS.items():
        assert conf[option] == value
    assert conf["partitioner"] == "murmur2_random"
    assert conf["enable.idempotence"] == "true"
    assert conf["bootstrap.servers"] == AWAY
    tuned = producer_config(away(**{"linger.ms": "50", "compression.type": "zstd"}))
    assert (tuned["linger.ms"], tuned["compression.type"]) == ("50", "zstd")
    assert tuned["partitioner"] == "murmur2_random"


def test_secrets_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    cfg = away(
        **{
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.password": "hunter2-secret",
            "sasl.username": "svc",
            "message.timeout.ms": "100",
        }
    )
    with Tap(cfg) as tap:
        tap.record_request("a")
        assert "hunter2" not in repr(tap.config)
    assert "tap started" in caplog.text
    assert "hunter2" not in caplog.text


# ---------------------------------------------------------------------------------------
# What importing the tap costs a production service


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNDERSTUDY_", "KAFKA_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_importing_and_using_the_tap_needs_only_confluent_kafka_and_fastavro() -> None:
    code = (
        "import sys\n"
        "import streams.tap\n"
        "from streams import Config, Tap\n"
        f"tap = Tap(Config(bootstrap_servers={AWAY!r}))\n"
        "tap.record_request('a', {'x': 1.0})\n"
        "tap.close(timeout=1.0)\n"
        "heavy = {'numpy', 'faust', 'yaml', 'mode', 'river', 'scipy', 'aiokafka', 'pandas'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=_clean_env(),
    )
    assert out.stdout.strip() == "[]", out.stdout
