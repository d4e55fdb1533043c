"""SASL_SSL for the embedded broker's clients: TLS with a given certificate, SCRAM users.

Only the listener clients use is secured. The controller and the broker's own traffic stay
PLAINTEXT on a second 127.0.0.1 port, which nothing outside this machine can reach: that
keeps the one-node cluster as simple as the plain one while every client (and every test
of the pipeline) goes through authentication and encryption.

Passwords never leave this process on a command line or in a file: the SCRAM users are
created through the Admin API on the internal listener once the broker answers
(``kafka-storage format --add-scram`` would put them in the JVM's argv, readable by every
local user in ``ps``). ``server.properties`` holds the private key, so it is written 0600.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.errors import BrokerError

log = logging.getLogger(__name__)

SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
LISTENER = "SASL_SSL"
"""Name (and protocol) of the client listener of a secured broker."""
INTERNAL_LISTENER = "INTERNAL"
"""Name of the PLAINTEXT listener of the broker's own traffic when clients use SASL_SSL."""
SCRAM_ITERATIONS = 8192
"""PBKDF2 rounds of the stored SCRAM credentials (Kafka requires at least 4096)."""

_PKCS8_HEADERS = ("-----BEGIN PRIVATE KEY-----", "-----BEGIN ENCRYPTED PRIVATE KEY-----")


@dataclass(frozen=True)
class ScramUser:
    """A SCRAM user of the broker. The password is left out of ``repr``."""

    name: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a SCRAM user needs a name")
        if not self.password:
            raise ValueError(f"SCRAM user {self.name!r} needs a password")


@dataclass(frozen=True)
class BrokerSecurity:
    """A SASL_SSL client listener: TLS with ``certificate`` and ``private_key``, SCRAM users.

    ``certificate`` is a PEM file with the broker's certificate first, then any
    intermediates; it should name ``127.0.0.1`` (and ``localhost``) as subject alternative
    names, since clients check the host name. ``private_key`` is a PEM PKCS#8 key
    (``BEGIN PRIVATE KEY``; an encrypted one needs ``key_password``). Clients connect with
    ``security.protocol=SASL_SSL``, ``sasl.mechanisms=<mechanism>``, their user's name and
    password, and ``ssl.ca.location`` pointing at the CA that signed ``certificate``.
    """

    certificate: Path
    private_key: Path
    users: tuple[ScramUser, ...]
    mechanism: str = "SCRAM-SHA-512"
    key_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mechanism not in SCRAM_MECHANISMS:
            raise ValueError(
                f"mechanism must be one of {', '.join(SCRAM_MECHANISMS)}, not {self.mechanism!r}"
            )
        if not self.users:
            raise ValueError("a SASL_SSL listener needs at least one SCRAM user")
        names = [user.name for user in self.users]
        if len(set(names)) != len(names):
            raise ValueError(f"SCRAM user names repeat: {names}")

    def listener_settings(
        self, port: int, internal_port: int, controller_port: int
    ) -> dict[str, str]:
        """The ``server.properties`` entries of the SASL_SSL client listener.

        They replace the plain listeners: clients on ``port``, the broker's own traffic on
        ``internal_port``, the controller on ``controller_port``. The certificate and key
        go in as PEM text (``ssl.keystore.type=PEM``), which Kafka accepts without a key
        password when the key is not encrypted.
        """
        chain = _read_pem(self.certificate, "certificate", ("-----BEGIN CERTIFICATE-----",))
        key = _read_pem(self.private_key, "private key", _PKCS8_HEADERS)
        if "ENCRYPTED" in key.split("\n", 1)[0] and self.key_password is None:
            raise BrokerError(f"the private key {self.private_key} is encrypted: give key_password")
        prefix = f"listener.name.{LISTENER.lower()}."
        mech = self.mechanism.lower()
        settings = {
            "listeners": f"{LISTENER}://127.0.0.1:{port},"
            f"{INTERNAL_LISTENER}://127.0.0.1:{internal_port},"
            f"CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"{LISTENER}://127.0.0.1:{port},"
            f"{INTERNAL_LISTENER}://127.0.0.1:{internal_port}",
            "inter.broker.listener.name": INTERNAL_LISTENER,
            "listener.security.protocol.map": f"CONTROLLER:PLAINTEXT,"
            f"{INTERNAL_LISTENER}:PLAINTEXT,{LISTENER}:SASL_SSL",
            f"{prefix}sasl.enabled.mechanisms": self.mechanism,
            f"{prefix}{mech}.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            f"{prefix}ssl.keystore.type": "PEM",
            f"{prefix}ssl.keystore.certificate.chain": chain,
            f"{prefix}ssl.keystore.key": key,
            f"{prefix}ssl.client.auth": "none",
        }
        if self.key_password is not None:
            settings[f"{prefix}ssl.key.password"] = self.key_password
        return settings

    def create_users(self, internal_bootstrap: str, timeout: float = 30.0) -> None:
        """Create (or update) the SCRAM users through the internal PLAINTEXT listener.

        Returns once the broker itself lists every user, so a client that connects next is
        not refused by a broker that has not yet applied the new credentials.
        """
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import (
            AdminClient,
            ScramCredentialInfo,
            ScramMechanism,
            UserScramCredentialAlteration,
            UserScramCredentialUpsertion,
        )

        mechanism = ScramMechanism[self.mechanism.replace("-", "_")]
        info = ScramCredentialInfo(mechanism, SCRAM_ITERATIONS)
        config: dict[str, Any] = {"bootstrap.servers": internal_bootstrap, "logger": log}
        admin = AdminClient(config)
        upserts: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(user.name, info, user.password.encode())
            for user in self.users
        ]
        names = [user.name for user in self.users]
        deadline = time.monotonic() + timeout
        try:
            for name, future in admin.alter_user_scram_credentials(upserts).items():
                # the error names the user and Kafka's reason; never the request (password)
                future.result(timeout=max(1.0, deadline - time.monotonic()))
                log.info("SCRAM user %s (%s) ready", name, self.mechanism)
            while True:
                try:
                    described = admin.describe_user_scram_credentials(names)
                    assert isinstance(described, dict)  # a dict when users are named
                    found = {n: f.result(timeout=5) for n, f in described.items()}
                    if all(
                        any(c.mechanism == mechanism for c in d.scram_credential_infos)
                        for d in found.values()
                    ):
                        return
                except KafkaException:
                    pass  # not applied yet: RESOURCE_NOT_FOUND until the broker has it
                if time.monotonic() >= deadline:
                    raise BrokerError(f"the broker did not list SCRAM users {names} in time")
                time.sleep(0.1)
        except KafkaException as exc:
            raise BrokerError(f"creating SCRAM users {names} failed: {exc.args[0]}") from exc


def _read_pem(path: Path, what: str, headers: tuple[str, ...]) -> str:
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokerError(f"cannot read the broker's {what} {path}: {exc}") from exc
    if not any(header in text for header in headers):
        hint = ""
        if what == "private key":
            hint = " (Kafka needs PKCS#8: `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY8`)"
        raise BrokerError(f"{path} is not a PEM {what}{hint}")
    return text.strip() + "\n"
