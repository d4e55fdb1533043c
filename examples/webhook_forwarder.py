"""Forward every alert transition on ``<prefix>.alerts`` to an HTTP webhook, losing none.

    python examples/webhook_forwarder.py --url https://hooks.example.com/T0/B0/xyz \\
        --bootstrap-servers localhost:9092 --prefix understudy

Each ``Alert`` record (FIRING or RESOLVED, ``schemas/Alert.avsc``) is decoded with the
project's codec and POSTed as one JSON object: every field of the record, plus ``key``
(``rule|candidate|feature``: the latest state per key is what counts), ``dedup_id`` (the
same for a redelivered transition, so a receiver can drop duplicates) and ``text`` (the
human message, the field Slack and Mattermost incoming webhooks show).

Never lose an alert: the consumer's offset is committed only after the webhook answered
2xx. A network error, a timeout, 408, 429 or 5xx is retried with exponential backoff (0.5 s
doubling up to 30 s, with jitter) for as long as it takes, the consumer's group membership
kept alive meanwhile; any other answer (a 4xx: wrong URL, refused token) cannot succeed by
retrying, so the forwarder stops with exit code 1 without committing, and the alert is
delivered when it is restarted with a fixed configuration. So delivery is at least once: a
crash between the POST and the commit sends that transition again (same ``dedup_id``).

The pure part, :func:`payload` and :func:`deliver`, takes a message value and knows no
Kafka; ``tests/unit/test_webhook.py`` runs it against a local HTTP server.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from streams.schemas import Codec, default_codec

log = logging.getLogger("webhook_forwarder")

#: Answers worth retrying: the receiver may take it later.
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})


class PermanentFailure(Exception):
    """The webhook refused the alert in a way retrying cannot fix (a 4xx answer)."""


class Stopped(Exception):
    """Asked to stop while retrying: the alert was not delivered (nor committed)."""


def payload(value: bytes, codec: Codec | None = None) -> dict[str, Any]:
    """The JSON object posted for one ``Alert`` message value (single-object encoded)."""
    record = (codec or default_codec()).decode_as("Alert", value)
    body: dict[str, Any] = {k: _json_safe(v) for k, v in record.items()}
    key = f"{record['rule']}|{record['candidate']}|{record['feature']}"
    body["key"] = key
    body["dedup_id"] = f"{key}|{record['state']}|{record['window_end']}"
    body["text"] = record["message"] or f"{record['state']} {key}"
    return body


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no inf or NaN
    return v


def post_json(
    url: str,
    body: Mapping[str, Any],
    *,
    timeout: float = 10.0,
    headers: Mapping[str, str] | None = None,
) -> int:
    """POST ``body`` as JSON once; the HTTP status (an HTTP error status too)."""
    data = json.dumps(body, allow_nan=False).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)


def deliver(
    value: bytes,
    url: str,
    *,
    codec: Codec | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
    backoff: float = 0.5,
    max_backoff: float = 30.0,
    attempts: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    stopping: Callable[[], bool] = lambda: False,
) -> int:
    """POST one alert until the webhook answers 2xx; returns the attempts it took.

    Retries network errors, timeouts and :data:`RETRYABLE` answers, waiting ``backoff``
    seconds doubling up to ``max_backoff`` (times a random 0.5-1 jitter) between tries, for
    ever unless ``attempts`` is given (then a :class:`PermanentFailure` after that many).
    Another answer is a :class:`PermanentFailure` at once; ``stopping()`` turning true
    between tries is :class:`Stopped`.
    """
    body = payload(value, codec)
    wait = backoff
    tried = 0
    while True:
        tried += 1
        try:
            status = post_json(url, body, timeout=timeout, headers=headers)
            problem = f"HTTP {status}"
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, timed out, DNS
            status, problem = 0, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if 200 <= status < 300:
            return tried
        if status and status not in RETRYABLE:
            raise PermanentFailure(f"webhook answered {problem} for {body['dedup_id']}")
        if attempts is not None and tried >= attempts:
            raise PermanentFailure(f"gave up after {tried} attempts ({problem})")
        log.warning("webhook %s (attempt %d); retrying in %.1f s", problem, tried, wait)
        sleep(wait * random.uniform(0.5, 1.0))
        if stopping():
            raise Stopped(f"stopped before {body['dedup_id']} was delivered")
        wait = min(wait * 2.0, max_backoff)


def _options(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="webhook URL to POST each alert to")
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092"),
        help="Kafka bootstrap servers (default $KAFKA_BOOTSTRAP_SERVERS or localhost:9092)",
    )
    parser.add_argument("--prefix", default="understudy", help="topic prefix (default understudy)")
    parser.add_argument("--group", default="understudy-webhook", help="consumer group id")
    parser.add_argument(
        "--header", action="append", default=[], metavar="NAME:VALUE", help="extra HTTP header"
    )
    parser.add_argument(
        "-X", dest="options", action="append", default=[], metavar="KEY=VALUE",
        help="librdkafka consumer option (SASL, TLS, ...), repeatable",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=10.0, help="HTTP timeout in seconds")
    parser.add_argument("--max-backoff", type=float, default=30.0, help="longest retry wait, s")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Follow ``<prefix>.alerts`` and forward each transition; 0 on a requested stop."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    args = _options(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    conf: dict[str, Any] = {
        "bootstrap.servers": args.bootstrap_servers,
        "group.id": args.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",  # a new group starts with every retained alert
    }
    conf.update(dict(o.split("=", 1) for o in args.options))
    codec = default_codec()
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    consumer = Consumer(conf)
    topic = f"{args.prefix}.alerts"
    consumer.subscribe([topic])

    def wait_alive(seconds: float) -> None:
        """Wait between retries while polling, so the group keeps the consumer."""
        parts = consumer.assignment()
        consumer.pause(parts)
        end = time.monotonic() + seconds
        try:
            while not stop and (left := end - time.monotonic()) > 0:
                stray = consumer.poll(min(left, 1.0))
                if stray is not None and not stray.error():  # read it again after the resume
                    t, p, o = stray.topic(), stray.partition(), stray.offset()
                    if t is not None and p is not None and o is not None:
                        consumer.seek(TopicPartition(t, p, o))
        finally:
            consumer.resume(parts)

    log.info("forwarding %s to %s", topic, args.url)
    try:
        while not stop:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            error = msg.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("consumer: %s", error)
                continue
            value = msg.value()
            if value is not None:  # a tombstone carries no alert
                deliver(
                    value,
                    args.url,
                    codec=codec,
                    headers=headers,
                    timeout=args.timeout,
                    max_backoff=args.max_backoff,
                    sleep=wait_alive,
                    stopping=lambda: stop,
                )
            try:
                consumer.commit(message=msg, asynchronous=False)
            except KafkaException as exc:  # revoked meanwhile: its new owner sends it again
                log.warning(
                    "commit of %s [%d] @%d failed: %s", topic, msg.partition(), msg.offset(), exc
                )
        return 0
    except Stopped as exc:
        log.info("%s", exc)
        return 0
    except Exception as exc:  # a bad alert, a refusing webhook, a fatal Kafka error
        log.error("stopping, nothing committed for the current alert: %s", exc)
        return 1
    finally:
        consumer.close()


if __name__ == "__main__":
    sys.exit(main())
