"""librdkafka security options, translated for faust (aiokafka) clients.

Every confluent-kafka client takes the user's ``kafka:`` options unchanged; the evaluator's
faust app speaks aiokafka, which wants a credentials object instead. This module maps the
common settings (TLS files, SASL PLAIN / SCRAM) so one configuration serves both, and
refuses what it cannot map rather than connecting without the security that was asked for.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from streams.errors import ConfigError

#: Options that concern only librdkafka's own tuning or that aiokafka sets itself.
_IGNORED_PREFIXES = (
    "linger.",
    "batch.",
    "queue.",
    "compression.",
    "enable.",
    "message.",
    "socket.",
    "client.",
    "statistics.",
    "fetch.",
    "session.",
    "heartbeat.",
    "max.",
    "request.",
    "retry.",
    "retries",
    "acks",
    "partitioner",
    "debug",
    "log",
    "api.",
    "broker.",
    "topic.",
    "metadata.",
    "reconnect.",
    "auto.",
    "isolation.",
    "group.",
)
_SECURITY_KEYS = {
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
}


def ssl_context(options: Mapping[str, str]) -> ssl.SSLContext:
    """A client TLS context from librdkafka's ``ssl.*`` file options."""
    ctx = ssl.create_default_context(
        purpose=ssl.Purpose.SERVER_AUTH, cafile=options.get("ssl.ca.location")
    )
    cert = options.get("ssl.certificate.location")
    if cert:
        ctx.load_cert_chain(cert, options.get("ssl.key.location"), options.get("ssl.key.password"))
    if options.get("ssl.endpoint.identification.algorithm", "https").lower() == "none":
        ctx.check_hostname = False
    return ctx


def faust_credentials(options: Mapping[str, str]) -> Any | None:
    """faust ``broker_credentials`` for these librdkafka options (None for plaintext)."""
    import faust

    unknown = sorted(
        k
        for k in options
        if k not in _SECURITY_KEYS
        and not k.startswith(_IGNORED_PREFIXES)
        and (k.startswith("ssl.") or k.startswith("sasl."))
    )
    if unknown:
        raise ConfigError(
            f"the evaluator (faust/aiokafka) cannot apply these options: {', '.join(unknown)}"
        )
    protocol = options.get("security.protocol", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(options))
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        mechanism = options.get("sasl.mechanism") or options.get("sasl.mechanisms") or "PLAIN"
        if mechanism.upper() not in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
            raise ConfigError(f"the evaluator supports SASL PLAIN and SCRAM, not {mechanism}")
        return faust.SASLCredentials(
            username=options.get("sasl.username"),
            password=options.get("sasl.password"),
            mechanism=mechanism.upper(),
            ssl_context=ssl_context(options) if protocol == "SASL_SSL" else None,
        )
    raise ConfigError(f"unknown security.protocol {protocol!r}")
