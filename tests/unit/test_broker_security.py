"""What a SASL_SSL broker is told: listeners, SCRAM, the PEM key store; secrets kept out.

No broker starts here: these check the rendered ``server.properties`` (read back the way
``java.util.Properties`` reads it) and that passwords stay out of reprs and errors.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from streams.broker import BrokerSecurity, ScramUser
from streams.broker.files import write_private
from streams.broker.properties import escape_property, server_properties
from streams.errors import BrokerError

PASSWORD = "correct horse battery staple"
CERT = "-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIGHkey\n-----END PRIVATE KEY-----\n"


def _load_properties(text: str) -> dict[str, str]:
    """Read ``key=value`` lines as java.util.Properties does for what we write."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, value = line.split("=", 1)
        chars: list[str] = []
        it = iter(value)
        for c in it:
            if c == "\\":
                nxt = next(it)
                chars.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            else:
                chars.append(c)
        out[key] = "".join(chars)
    return out


@pytest.fixture
def security(tmp_path: Path) -> BrokerSecurity:
    (tmp_path / "broker.pem").write_text(CERT)
    (tmp_path / "broker.key").write_text(KEY)
    return BrokerSecurity(
        certificate=tmp_path / "broker.pem",
        private_key=tmp_path / "broker.key",
        users=(ScramUser("alice", PASSWORD), ScramUser("bob", "other secret")),
    )


def test_only_the_client_listener_is_sasl_ssl(security: BrokerSecurity, tmp_path: Path) -> None:
    text = server_properties(9092, 9093, tmp_path, security=security, internal_port=9094)
    settings = _load_properties(text)
    assert settings["listeners"] == (
        "SASL_SSL://127.0.0.1:9092,INTERNAL://127.0.0.1:9094,CONTROLLER://127.0.0.1:9093"
    )
    assert settings["advertised.listeners"] == (
        "SASL_SSL://127.0.0.1:9092,INTERNAL://127.0.0.1:9094"
    )
    assert settings["inter.broker.listener.name"] == "INTERNAL"
    protocols = dict(
        pair.split(":") for pair in settings["listener.security.protocol.map"].split(",")
    )
    assert protocols == {"CONTROLLER": "PLAINTEXT", "INTERNAL": "PLAINTEXT", "SASL_SSL": "SASL_SSL"}
    assert settings["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert settings["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"] == (
        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    )
    assert settings["listener.name.sasl_ssl.ssl.keystore.type"] == "PEM"
    # the PEM text, line breaks and all, survives the properties escaping
    assert settings["listener.name.sasl_ssl.ssl.keystore.certificate.chain"] == CERT
    assert settings["listener.name.sasl_ssl.ssl.keystore.key"] == KEY
    assert settings["transaction.state.log.min.isr"] == "1"  # the single-node settings stay


def test_passwords_are_in_no_file_and_no_repr(security: BrokerSecurity, tmp_path: Path) -> None:
    text = server_properties(9092, 9093, tmp_path, security=security, internal_port=9094)
    for secret in (PASSWORD, "other secret"):
        assert secret not in text  # users are created through the Admin API, not a file
        assert secret not in repr(security) and secret not in str(security)
    assert "alice" in repr(security)  # who, without how
    assert PASSWORD not in repr(ScramUser("alice", PASSWORD))


def test_an_encrypted_key_needs_its_password(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text(CERT)
    encrypted = KEY.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY")
    (tmp_path / "k.pem").write_text(encrypted)
    users = (ScramUser("alice", PASSWORD),)
    bare = BrokerSecurity(tmp_path / "c.pem", tmp_path / "k.pem", users)
    with pytest.raises(BrokerError, match="encrypted: give key_password"):
        bare.listener_settings(1, 2, 3)
    keyed = BrokerSecurity(tmp_path / "c.pem", tmp_path / "k.pem", users, key_password="kp-123")
    settings = keyed.listener_settings(1, 2, 3)
    assert settings["listener.name.sasl_ssl.ssl.key.password"] == "kp-123"
    assert "kp-123" not in repr(keyed)


@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        (CERT, "-----BEGIN RSA PRIVATE KEY-----\nx\n-----END RSA PRIVATE KEY-----\n", "PKCS#8"),
        ("not a certificate", KEY, "not a PEM certificate"),
        (None, KEY, "cannot read the broker's certificate"),
    ],
)
def test_unusable_files_are_refused_by_name(
    tmp_path: Path, cert: str | None, key: str, message: str
) -> None:
    if cert is not None:
        (tmp_path / "c.pem").write_text(cert)
    (tmp_path / "k.pem").write_text(key)
    security = BrokerSecurity(tmp_path / "c.pem", tmp_path / "k.pem", (ScramUser("a", PASSWORD),))
    with pytest.raises(BrokerError, match=message) as caught:
        security.listener_settings(1, 2, 3)
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"users": ()}, "at least one SCRAM user"),
        ({"mechanism": "PLAIN"}, "mechanism must be one of"),
        ({"users": (ScramUser("a", "x"), ScramUser("a", "y"))}, "repeat"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "certificate": Path("c"),
        "private_key": Path("k"),
        "users": (ScramUser("a", PASSWORD),),
    }
    with pytest.raises(ValueError, match=message):
        BrokerSecurity(**{**base, **kwargs})  # type: ignore[arg-type]


def test_a_user_needs_a_name_and_a_password() -> None:
    with pytest.raises(ValueError, match="needs a password"):
        ScramUser("alice", "")
    with pytest.raises(ValueError, match="needs a name"):
        ScramUser("", PASSWORD)


def test_plain_brokers_are_unchanged(tmp_path: Path) -> None:
    settings = _load_properties(server_properties(9092, 9093, tmp_path))
    assert settings["listeners"] == "PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert not any(key.startswith("listener.name.") for key in settings)
    with pytest.raises(ValueError, match="internal port"):
        server_properties(9092, 9093, tmp_path, security=_any_security(tmp_path))


def _any_security(tmp_path: Path) -> BrokerSecurity:
    (tmp_path / "c.pem").write_text(CERT)
    (tmp_path / "k.pem").write_text(KEY)
    return BrokerSecurity(tmp_path / "c.pem", tmp_path / "k.pem", (ScramUser("a", PASSWORD),))


def test_escaping_keeps_backslashes_and_line_breaks() -> None:
    assert _load_properties("k=" + escape_property("a\\b\nc\r\n")) == {"k": "a\\b\nc\n"}


def test_private_files_are_owner_only_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "server.properties"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "secret=1\n")
    assert path.read_text() == "secret=1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not (tmp_path / "server.properties.tmp").exists()
