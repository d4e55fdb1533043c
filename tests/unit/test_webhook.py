"""The webhook forwarder's delivery, against a real HTTP server on 127.0.0.1 (no Kafka)."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import streams.schemas
from streams.alerts.rules import Rule
from streams.alerts.state import AlertState
from streams.schemas import Codec

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "webhook_forwarder.py"


@pytest.fixture(scope="module")
def forwarder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("webhook_forwarder", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Hook:
    """A local webhook: answers with the scripted statuses (then 200), records each body."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                hook.bodies.append(json.loads(self.rfile.read(length)))
                hook.headers.append(dict(self.headers))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


@pytest.fixture
def codec(monkeypatch: pytest.MonkeyPatch) -> Codec:
    """A codec that knows Alert, whether or not streams.schemas.EVENTS lists it yet."""
    if "Alert" not in streams.schemas.EVENTS:
        monkeypatch.setattr(streams.schemas, "EVENTS", (*streams.schemas.EVENTS, "Alert"))
    return Codec()


def alert_value(codec: Codec, value: float = 0.083) -> tuple[dict[str, Any], bytes]:
    rule = Rule("candidate-errors", "errors.candidate_rate", ">", 0.05, "critical")
    (t,) = AlertState([rule]).observe(
        1_718_000_020_000,
        "fraud@2",
        {("errors.candidate_rate", ""): value},
        window_start=1_718_000_010_000,
        primary="fraud@1",
    )
    record = t.to_record(emitted_at=1_718_000_021_000)
    return record, codec.encode("Alert", record)


def test_a_2xx_delivers_once_with_every_field(
    forwarder: ModuleType, hook: Hook, codec: Codec
) -> None:
    record, value = alert_value(codec)
    tries = forwarder.deliver(value, hook.url, codec=codec, headers={"X-Token": "t0k"})
    assert tries == 1
    (body,) = hook.bodies
    assert {k: body[k] for k in record} == record
    assert body["state"] == "FIRING" and body["value"] == 0.083 and body["feature"] == ""
    assert body["key"] == "candidate-errors|fraud@2|"
    assert body["dedup_id"] == "candidate-errors|fraud@2||FIRING|1718000020000"
    assert body["text"] == record["message"] and "CRITICAL candidate-errors" in body["text"]
    assert hook.headers[0]["Content-Type"] == "application/json"
    assert hook.headers[0]["X-Token"] == "t0k"


def test_a_500_then_200_retries(forwarder: ModuleType, hook: Hook, codec: Codec) -> None:
    _, value = alert_value(codec)
    hook.statuses = [500, 503, 429]
    waits: list[float] = []
    tries = forwarder.deliver(value, hook.url, codec=codec, backoff=0.5, sleep=waits.append)
    assert tries == 4
    assert len(hook.bodies) == 4 and all(b == hook.bodies[0] for b in hook.bodies)
    # exponential backoff with jitter in [0.5, 1) of 0.5, 1, 2 s
    assert len(waits) == 3
    for w, base in zip(waits, (0.5, 1.0, 2.0), strict=True):
        assert 0.5 * base <= w <= base


def test_a_refusal_is_not_retried(forwarder: ModuleType, hook: Hook, codec: Codec) -> None:
    _, value = alert_value(codec)
    hook.statuses = [404]
    with pytest.raises(forwarder.PermanentFailure, match="HTTP 404"):
        forwarder.deliver(value, hook.url, codec=codec, sleep=lambda _: None)
    assert len(hook.bodies) == 1


def test_an_unreachable_webhook_is_retried(forwarder: ModuleType, codec: Codec) -> None:
    _, value = alert_value(codec)
    dead = Hook()
    url = dead.url
    dead.close()  # nothing listens there now: connection refused
    waits: list[float] = []
    with pytest.raises(forwarder.PermanentFailure, match="gave up after 3 attempts"):
        forwarder.deliver(value, url, codec=codec, attempts=3, sleep=waits.append, timeout=2)
    assert len(waits) == 2


def test_a_stop_while_retrying_delivers_nothing(
    forwarder: ModuleType, hook: Hook, codec: Codec
) -> None:
    _, value = alert_value(codec)
    hook.statuses = [500]
    with pytest.raises(forwarder.Stopped):
        forwarder.deliver(value, hook.url, codec=codec, sleep=lambda _: None, stopping=lambda: True)


def test_non_finite_values_stay_valid_json(forwarder: ModuleType, hook: Hook, codec: Codec) -> None:
    _, value = alert_value(codec, value=float("inf"))
    forwarder.deliver(value, hook.url, codec=codec)
    assert hook.bodies[0]["value"] == "inf"
