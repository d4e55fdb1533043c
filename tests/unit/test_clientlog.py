"""librdkafka's log lines and errors, rate-limited: a fake clock for the rules, and real
clients against a closed port (no broker) for the outage they are meant for."""

from __future__ import annotations

import doctest
import logging
import socket
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from streams import clientlog
from streams.clientlog import CLIENT_LOG, LOG_EVERY_S, ClientLog, RateLimiter
from streams.config import Config
from streams.kafka import client_config

LOGGER = "test.clientlog"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fresh(clock: Callable[[], float], every: float = 30.0) -> ClientLog:
    return ClientLog(logging.getLogger(LOGGER), every=every, clock=clock)


def messages(caplog: pytest.LogCaptureFixture, name: str = LOGGER) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == name]


def fail_line(log: ClientLog, broker: str = "b:9092") -> None:
    """What confluent-kafka calls for librdkafka's connection failure line."""
    log.log(
        logging.ERROR,
        "%s [%s] %s",
        "FAIL",
        "rdkafka#producer-1",
        f"[thrd:{broker}]: {broker}: Connect failed: Connection refused",
    )


def test_doctests() -> None:
    result = doctest.testmod(clientlog)
    assert result.attempted > 0
    assert result.failed == 0


def test_limiter_allows_one_per_key_per_period_and_counts_the_rest() -> None:
    clock = Clock()
    limiter = RateLimiter(every=30.0, clock=clock)
    assert limiter.allow("a") == 0
    assert limiter.allow("b") == 0  # keys are independent
    for _ in range(5):
        clock.now += 5.0
        assert limiter.allow("a") is None
    assert limiter.allow("b") is None
    clock.now += 4.9  # 29.9 s after the first: still inside the period
    assert limiter.allow("a") is None
    clock.now += 0.1
    assert limiter.allow("a") == 6
    assert limiter.allow("b") == 1
    clock.now += 30.0
    assert limiter.allow("a") == 0  # the count starts again after each line


def test_log_lines_of_one_facility_are_rate_limited_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clock = Clock()
    log = fresh(clock)
    for _ in range(120):  # 4 a second for 30 s: librdkafka during an outage
        fail_line(log)
        clock.now += 0.25
    fail_line(log)
    lines = messages(caplog)
    assert len(lines) == 2
    assert "FAIL [rdkafka#producer-1]" in lines[0] and "Connection refused" in lines[0]
    assert lines[1].endswith("(119 more like this in the last 30 s)")
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.ERROR] * 2


def test_one_outage_is_one_kind_whichever_way_librdkafka_reports_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    log = fresh(Clock())
    fail_line(log)
    log.error_cb(KafkaError(KafkaError._TRANSPORT, "b:9092/bootstrap: Connection refused"))
    log.error_cb(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    log.log(logging.WARNING, "%s [%s] %s", "CONFWARN", "rdkafka#producer-1", "deprecated")
    log.error_cb(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication failed"))
    lines = messages(caplog)
    assert len(lines) == 3, lines
    assert "Connection refused" in lines[0]
    assert "CONFWARN" in lines[1]
    assert "SASL authentication failed" in lines[2]


def test_fatal_errors_and_debug_lines_are_never_suppressed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    log = fresh(Clock())
    fatal = KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
    for _ in range(3):
        log.error_cb(fatal)
        log.log(logging.DEBUG, "%s [%s] %s", "BROKER", "rdkafka#consumer-1", "debug line")
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelno for r in records] == [logging.ERROR, logging.DEBUG] * 3
    assert "fatal" in records[0].getMessage()


def test_lines_below_the_logger_level_do_not_use_the_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    log = fresh(Clock())
    log.log(logging.WARNING, "%s [%s] %s", "FAIL", "rdkafka#producer-1", "filtered out")
    fail_line(log)
    assert len(messages(caplog)) == 1
    assert "(1 more" not in messages(caplog)[0]


def test_default_period_is_thirty_seconds() -> None:
    assert LOG_EVERY_S == 30.0
    assert CLIENT_LOG.limiter.every == LOG_EVERY_S


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def test_clients_against_a_closed_port_log_a_couple_of_lines_in_5_s(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the rate limit librdkafka logs ~4 connection failures a second per client."""
    monkeypatch.setattr(CLIENT_LOG, "limiter", RateLimiter())  # a fresh budget
    caplog.set_level(logging.DEBUG, logger="streams.librdkafka")
    cfg = Config(bootstrap_servers=closed_port(), prefix="unit-clientlog")
    producer = Producer(client_config(cfg))
    consumer = Consumer(client_config(cfg, **{"group.id": "unit-clientlog"}))
    consumer.subscribe(["unit-clientlog.requests"])
    producer.produce("unit-clientlog.requests", b"v", b"k")
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        producer.poll(0.2)
        consumer.consume(num_messages=10, timeout=0.2)
    consumer.close()
    producer.purge()
    producer.flush(1.0)
    lines = messages(caplog, "streams.librdkafka")
    assert 1 <= len(lines) <= 2, lines
    assert any("Connection refused" in line for line in lines)


def test_python_client_records_are_rate_limited_with_a_count() -> None:
    import logging

    from streams.clientlog import RateLimitFilter

    now = [0.0]
    f = RateLimitFilter(every=30.0, clock=lambda: now[0])

    def rec(msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("aiokafka.conn", level, __file__, 1, msg, None, None)

    assert f.filter(rec("Unable connect to %s"))
    assert not any(f.filter(rec("Unable connect to %s")) for _ in range(100))
    assert f.filter(rec("another message"))
    assert f.filter(rec("Unable connect to %s", logging.INFO))  # below WARNING: untouched
    now[0] = 31.0
    again = rec("Unable connect to %s")
    assert f.filter(again)
    assert "100 more like this" in str(again.msg)


def test_child_loggers_of_the_python_clients_are_rate_limited_too() -> None:
    import logging

    from streams.clientlog import RateLimitFilter, quiet_python_clients

    child = logging.getLogger("aiokafka.consumer.fetcher.test")
    quiet_python_clients()
    assert any(isinstance(f, RateLimitFilter) for f in child.filters)
