"""librdkafka's own log lines and client errors, rate-limited into Python logging.

While a broker is away, librdkafka reports the same connection failure three or four times
a second per client (its ``FAIL`` log line, then ``_TRANSPORT`` and ``_ALL_BROKERS_DOWN``
errors). A service that embeds the tap, or a stage left running through an outage, must
not drown its logs in them. :class:`ClientLog` is both the ``logger`` and the ``error_cb``
of a confluent-kafka client (:func:`streams.kafka.client_config` attaches :data:`CLIENT_LOG`
by default): it writes at most one line per kind of event every :data:`LOG_EVERY_S`
seconds, and the next line of that kind says how many were suppressed meanwhile.

A "kind" is the librdkafka log facility (``FAIL``, ``CONFWARN``, ...) or the error code;
a broker connection failure is one kind, whichever of the three ways it is reported.
Fatal errors and DEBUG lines (asked for with librdkafka's ``debug`` option) are never
suppressed.

>>> now = [0.0]
>>> limiter = RateLimiter(every=30.0, clock=lambda: now[0])
>>> limiter.allow("FAIL"), limiter.allow("FAIL"), limiter.allow("FAIL")
(0, None, None)
>>> now[0] = 31.0
>>> limiter.allow("FAIL")  # two suppressed since the last line
2
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Final

__all__ = ["CLIENT_LOG", "LOG_EVERY_S", "ClientLog", "RateLimiter"]

#: Seconds between two lines of the same kind.
LOG_EVERY_S: Final = 30.0

#: The kind shared by every report of "cannot connect to a broker".
_CONNECTION: Final = "broker connection"
#: librdkafka log facilities and error names that report a broker connection failure.
_CONNECTION_KINDS: Final = frozenset({"FAIL", "_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE"})


class RateLimiter:
    """At most one event per key every ``every`` seconds; counts what it suppressed.

    Thread-safe: librdkafka calls its callbacks from its own threads.
    """

    def __init__(self, every: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}

    def allow(self, key: Hashable) -> int | None:
        """``None`` if this event is to be suppressed, else how many were since the last."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)


class ClientLog:
    """A confluent-kafka ``logger`` and ``error_cb`` that logs each kind of event rarely.

    Pass the instance itself as ``logger`` (librdkafka calls its :meth:`log`) and
    :meth:`error_cb` as ``error_cb``.
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        every: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger or logging.getLogger("streams.librdkafka")
        self.limiter = RateLimiter(every, clock)

    def _emit(self, level: int, kind: str, message: str) -> None:
        if not self.logger.isEnabledFor(level):
            return
        key = _CONNECTION if kind in _CONNECTION_KINDS else kind
        if level > logging.DEBUG:
            suppressed = self.limiter.allow(key)
            if suppressed is None:
                return
            if suppressed:
                message = (
                    f"{message} ({suppressed} more like this in the last "
                    f"{self.limiter.every:.0f} s)"
                )
        self.logger.log(level, "%s", message)

    def log(self, level: int, msg: str, *args: Any) -> None:
        """librdkafka's log line: confluent-kafka calls ``log(level, "%s [%s] %s", fac, name,
        text)``, with the syslog level already mapped to a Python one."""
        try:
            text = msg % args if args else msg
        except (TypeError, ValueError):
            text = " ".join([msg, *map(str, args)])
        kind = str(args[0]) if args else "log"
        self._emit(level, kind, f"librdkafka {text}")

    def error_cb(self, err: Any) -> None:
        """librdkafka's client-level error (a ``KafkaError``): a warning, rate-limited,
        unless it is fatal (the client is then unusable: always an error line)."""
        if err.fatal():
            self.logger.error("Kafka client fatal error: %s", err.str())
            return
        self._emit(logging.WARNING, str(err.name()), f"Kafka client error: {err.str()}")


#: The process-wide instance every client made by ``client_config`` shares, so an outage
#: is reported once per kind whatever the number of clients.
CLIENT_LOG: Final = ClientLog()


class RateLimitFilter(logging.Filter):
    """A logging filter for Python Kafka clients (aiokafka, under faust): one record per
    (logger, level, message template) every ``every`` seconds, with the suppressed count
    appended to the next one; errors of the same shape during an outage come rarely.
    """

    def __init__(self, every: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.limiter = RateLimiter(every, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        suppressed = self.limiter.allow((record.name, record.levelno, str(record.msg)))
        if suppressed is None:
            return False
        if suppressed:
            record.msg = f"{record.msg} ({suppressed} more like this in the last period)"
        return True


def quiet_python_clients(names: tuple[str, ...] = ("aiokafka", "kafka", "faust")) -> None:
    """Rate-limit the warnings and errors of Python Kafka client loggers (idempotent).

    A logger's filters see only the records logged on that very logger, not its children's
    (``aiokafka.consumer.fetcher``), so every logger under ``names`` that exists now gets
    one: call this after the clients are imported.
    """
    shared = RateLimitFilter()
    known = list(logging.root.manager.loggerDict)
    for name in known + list(names):
        if not any(name == n or name.startswith(n + ".") for n in names):
            continue
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
            logger.addFilter(shared)
