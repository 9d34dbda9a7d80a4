"""The [tls] section: parsing, and the checks on its files at start; every error names its key."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from loadwarden.observability.net import is_loopback
from loadwarden.server import ConfigError, TlsSettings, load_config
from loadwarden.server.app._config import parse_config
from loadwarden.server.rpc._tls import load_tls

from ..._certs import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_tls_is_off_by_default() -> None:
    settings = parse_config({}).tls
    assert settings == TlsSettings() and not settings.enabled
    assert load_tls(settings) is None


def test_tls_from_file_and_environment(tmp_path: Path, certs: Certs) -> None:
    path = tmp_path / "loadwarden.toml"
    path.write_text(f'[tls]\ncert_file = "{certs.server_cert}"\nkey_file = "{certs.server_key}"\n', encoding="utf-8")
    env = {"LOADWARDEN_TLS__CLIENT_CA_FILE": str(certs.ca), "LOADWARDEN_TLS__REQUIRE_CLIENT_CERT": "true"}
    settings = load_config(path, env).tls
    assert settings == TlsSettings(str(certs.server_cert), str(certs.server_key), str(certs.ca), True)
    material = load_tls(settings)
    assert material is not None and material.cert_chain == certs.server_cert.read_bytes()
    assert material.client_ca == certs.ca.read_bytes()
    assert b"PRIVATE KEY" not in repr(material).encode()  # the key is never shown
    assert material.ssl_context().minimum_version is ssl.TLSVersion.TLSv1_2
    material.grpc_credentials()  # grpc accepts the pair


def test_a_numeric_looking_path_from_the_environment_stays_a_path() -> None:
    settings = load_config(None, {"LOADWARDEN_TLS__CERT_FILE": "1234", "LOADWARDEN_TLS__KEY_FILE": "true"}).tls
    assert (settings.cert_file, settings.key_file) == ("1234", "true")


@pytest.mark.parametrize(
    ("tls", "key", "fragment"),
    [
        ({"cert_file": "/x.pem"}, "tls.key_file", "required when tls.cert_file"),
        ({"key_file": "/x.key"}, "tls.cert_file", "required when tls.key_file"),
        ({"client_ca_file": "/ca.pem"}, "tls.cert_file", "required when tls.client_ca_file"),
        ({"cert_file": "/x.pem", "key_file": "/x.key", "require_client_cert": True}, "tls.client_ca_file", "required"),
        (
            {"cert_file": "/x.pem", "key_file": "/x.key", "client_ca_file": "/ca.pem"},
            "tls.require_client_cert",
            "must be true when tls.client_ca_file is set",
        ),
        ({"cert_file": 5}, "tls.cert_file", "string"),
        ({"require_client_cert": "yes"}, "tls.require_client_cert", "true or false"),
        ({"ca_file": "/ca.pem"}, "tls.ca_file", "valid keys: cert_file, client_ca_file, key_file, require_client_cert"),
    ],
)
def test_invalid_tls_settings_name_the_key(tls: dict[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config({"tls": tls})
    assert error.value.key == key and fragment in str(error.value)


def _settings(certs: Certs, **overrides: object) -> TlsSettings:
    values: dict[str, Any] = {
        "cert_file": str(certs.server_cert),
        "key_file": str(certs.server_key),
        "client_ca_file": str(certs.ca),
        "require_client_cert": True,
    }
    values.update(overrides)
    return TlsSettings(**values)


def test_unusable_files_name_their_key(tmp_path: Path, certs: Certs) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello", encoding="utf-8")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", encoding="utf-8")
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cases = [
        ({"cert_file": str(tmp_path / "missing.pem")}, "tls.cert_file", "cannot read"),
        ({"key_file": str(tmp_path)}, "tls.key_file", "cannot read"),  # a directory: unreadable as a file
        ({"client_ca_file": str(tmp_path / "missing-ca.pem")}, "tls.client_ca_file", "cannot read"),
        ({"cert_file": str(not_pem)}, "tls.cert_file", "not a PEM file"),
        ({"cert_file": str(broken)}, "tls.cert_file", "no valid PEM certificate"),
        ({"key_file": str(certs.client_key)}, "tls.key_file", "not the private key of tls.cert_file"),
        ({"key_file": str(certs.server_cert)}, "tls.key_file", "no valid PEM private key"),
        ({"key_file": str(encrypted)}, "tls.key_file", "encrypted"),
        ({"client_ca_file": str(broken)}, "tls.client_ca_file", "no valid PEM CA certificate"),
    ]
    for overrides, key_name, fragment in cases:
        with pytest.raises(ConfigError) as error:
            load_tls(_settings(certs, **overrides))
        assert error.value.key == key_name and fragment in str(error.value), (overrides, str(error.value))
        assert "PRIVATE KEY" not in str(error.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("[::]", False),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
