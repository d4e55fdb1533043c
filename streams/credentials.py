"""librdkafka security options, translated for faust (aiokafka) clients.

Every confluent-kafka client takes the user's ``kafka:`` options unchanged; the evaluator's
faust app speaks aiokafka, which wants a credentials object instead. This module maps the
common settings (TLS files, SASL PLAIN / SCRAM) so one configuration serves both, and
refuses what it cannot map rather than connecting without the security that was asked for.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Mapping
from typing import Any

from streams.errors import ConfigError

#: Options that concern only librdkafka's own tuning or that aiokafka sets itself.
log = logging.getLogger(__name__)

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
    "ssl.ca.pem",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
    "enable.ssl.certificate.verification",
}


def ssl_context(options: Mapping[str, str]) -> ssl.SSLContext:
    """A client TLS context from librdkafka's ``ssl.*`` options, verifying as librdkafka does.

    ``ssl.ca.location`` may be a file or a directory of CA certificates, or ``probe`` (the
    system's store, as when it is absent); ``ssl.ca.pem`` gives the CA certificates inline.
    Host names are checked unless ``ssl.endpoint.identification.algorithm=none``; nothing is
    verified with ``enable.ssl.certificate.verification=false``. A file that cannot be
    used is a ConfigError naming the option and the path (never the key's password).
    """
    ca = options.get("ssl.ca.location") or None
    if ca is not None and ca.strip().lower() == "probe":
        ca = None
    try:
        if ca is not None and os.path.isdir(ca):
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, capath=ca)
        else:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"ssl.ca.location {ca}: cannot load CA certificates ({exc})") from exc
    if options.get("ssl.ca.pem"):
        try:
            ctx.load_verify_locations(cadata=options["ssl.ca.pem"])
        except (ValueError, ssl.SSLError) as exc:
            raise ConfigError(f"ssl.ca.pem holds no usable CA certificate ({exc})") from exc
    cert = options.get("ssl.certificate.location")
    if cert:
        key = options.get("ssl.key.location")
        try:
            ctx.load_cert_chain(cert, key, options.get("ssl.key.password"))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"ssl.certificate.location {cert} / ssl.key.location {key}: cannot load the "
                f"client certificate ({exc})"
            ) from exc
    if options.get("ssl.endpoint.identification.algorithm", "https").strip().lower() == "none":
        ctx.check_hostname = False
    if options.get("enable.ssl.certificate.verification", "true").strip().lower() == "false":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
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
    tuning = sorted(k for k in options if k.startswith(_IGNORED_PREFIXES))
    if tuning:
        # librdkafka tuning the other stages apply; said once, never silently dropped
        log.warning(
            "the evaluator (faust/aiokafka) does not apply these librdkafka tuning options, "
            "which the tap, worker and joiner do: %s",
            ", ".join(tuning),
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
        missing = [k for k in ("sasl.username", "sasl.password") if not options.get(k)]
        if missing:
            raise ConfigError(f"security.protocol {protocol} needs {' and '.join(missing)}")
        return faust.SASLCredentials(
            username=options.get("sasl.username"),
            password=options.get("sasl.password"),
            mechanism=mechanism.upper(),
            ssl_context=ssl_context(options) if protocol == "SASL_SSL" else None,
        )
    raise ConfigError(f"unknown security.protocol {protocol!r}")
