"""librdkafka security options become faust credentials, or a clear refusal."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from faust.types.auth import AuthProtocol, SASLMechanism

from streams.credentials import faust_credentials, ssl_context
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


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A self-signed CA certificate (openssl), for the TLS context tests."""
    directory = tmp_path_factory.mktemp("ca")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(directory / "ca.key"), "-out", str(directory / "ca.pem")),
            *("-days", "1", "-subj", "/CN=test CA"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory / "ca.pem"


def _subjects(ctx: ssl.SSLContext) -> list[str]:
    return [str(cert.get("subject")) for cert in ctx.get_ca_certs()]


def test_the_ca_may_be_a_file_a_directory_or_inline(ca_pem: Path) -> None:
    from_file = ssl_context({"ssl.ca.location": str(ca_pem)})
    assert any("test CA" in s for s in _subjects(from_file))
    assert from_file.check_hostname and from_file.verify_mode == ssl.CERT_REQUIRED
    ssl_context({"ssl.ca.location": str(ca_pem.parent)})  # a directory: capath, no error
    inline = ssl_context({"ssl.ca.location": "probe", "ssl.ca.pem": ca_pem.read_text()})
    assert any("test CA" in s for s in _subjects(inline))


def test_verification_follows_librdkafka_switches(ca_pem: Path) -> None:
    no_host = ssl_context(
        {"ssl.ca.location": str(ca_pem), "ssl.endpoint.identification.algorithm": "none"}
    )
    assert not no_host.check_hostname and no_host.verify_mode == ssl.CERT_REQUIRED
    unverified = ssl_context({"enable.ssl.certificate.verification": "false"})
    assert unverified.verify_mode == ssl.CERT_NONE


def test_unusable_tls_files_are_config_errors_without_the_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ssl\.ca\.location"):
        ssl_context({"ssl.ca.location": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError, match="client certificate") as caught:
        ssl_context(
            {
                "ssl.certificate.location": str(tmp_path / "c.pem"),
                "ssl.key.location": str(tmp_path / "k.pem"),
                "ssl.key.password": "key-secret-1",
            }
        )
    assert "key-secret-1" not in str(caught.value)


def test_sasl_needs_a_user_and_a_password() -> None:
    with pytest.raises(ConfigError, match=r"sasl\.password"):
        faust_credentials({"security.protocol": "SASL_SSL", "sasl.username": "svc"})


def test_tuning_options_the_evaluator_cannot_apply_are_named_not_dropped_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from streams.credentials import faust_credentials

    with caplog.at_level("WARNING", logger="streams.credentials"):
        faust_credentials({"session.timeout.ms": "10000", "linger.ms": "5"})
    assert "linger.ms, session.timeout.ms" in caplog.text
