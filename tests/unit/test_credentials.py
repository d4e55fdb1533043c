"""librdkafka security options become faust credentials, or a clear refusal."""

from __future__ import annotations

import pytest
from faust.types.auth import AuthProtocol, SASLMechanism

from streams.credentials import faust_credentials
from streams.errors import ConfigError


def test_plaintext_needs_no_credentials() -> None:
    assert faust_credentials({}) is None
    assert faust_credentials({"security.protocol": "plaintext", "linger.ms": "5"}) is None


def test_sasl_scram_over_tls_keeps_user_mechanism_and_hides_the_password() -> None:
    creds = faust_credentials(
        {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "svc",
            "sasl.password": "hunter2",
        }
    )
    assert creds.protocol == AuthProtocol.SASL_SSL
    assert creds.mechanism == SASLMechanism.SCRAM_SHA_512
    assert (creds.username, creds.password) == ("svc", "hunter2")
    assert "hunter2" not in repr(creds)


def test_sasl_plain_without_tls() -> None:
    creds = faust_credentials(
        {"security.protocol": "SASL_PLAINTEXT", "sasl.username": "u", "sasl.password": "p"}
    )
    assert creds.protocol == AuthProtocol.SASL_PLAINTEXT
    assert creds.mechanism == SASLMechanism.PLAIN


def test_tls_only() -> None:
    creds = faust_credentials({"security.protocol": "SSL"})
    assert creds.protocol == AuthProtocol.SSL


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI"}, "GSSAPI"),
        ({"security.protocol": "SSL", "ssl.keystore.location": "/k.p12"}, "ssl.keystore"),
        ({"security.protocol": "CARRIER_PIGEON"}, "CARRIER_PIGEON"),
    ],
)
def test_what_cannot_be_mapped_is_refused(options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        faust_credentials(options)
