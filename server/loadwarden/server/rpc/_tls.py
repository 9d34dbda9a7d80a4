"""TLS for the service's two ports: settings from ``[tls]``, and the credentials built from them.

One certificate serves both ports: the gRPC port with ``grpc.ssl_server_credentials``
(mutual TLS when ``require_client_cert``), the admin HTTP port with an
``ssl.SSLContext`` (server authentication only; its callers present the admin
token). Files are read once, at start: rotating a certificate means a restart.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from .._errors import ConfigError

_FILE_KEYS = ("cert_file", "key_file", "client_ca_file")
_PEM_MARKER = b"-----BEGIN "


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """The ``[tls]`` section: off (plaintext) unless ``cert_file`` is set.

    Attributes:
        cert_file: PEM certificate chain the service presents on both ports, leaf first.
        key_file: PEM private key of ``cert_file`` (unencrypted); required with ``cert_file``.
        client_ca_file: PEM bundle of the CAs gRPC client certificates are verified
            against; set together with ``require_client_cert`` (gRPC asks for a client
            certificate only when it requires one).
        require_client_cert: True refuses gRPC clients without a certificate issued by
            ``client_ca_file`` (mutual TLS). The admin HTTP port never asks for one.
    """

    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        for key in _FILE_KEYS:
            if not isinstance(getattr(self, key), str):
                raise ConfigError(f"tls.{key}", f"must be a file path string, got {getattr(self, key)!r}")
        if not isinstance(self.require_client_cert, bool):
            raise ConfigError("tls.require_client_cert", f"must be true or false, got {self.require_client_cert!r}")
        if self.key_file and not self.cert_file:
            raise ConfigError("tls.cert_file", "is required when tls.key_file is set")
        if self.cert_file and not self.key_file:
            raise ConfigError("tls.key_file", "is required when tls.cert_file is set")
        if self.client_ca_file and not self.cert_file:
            raise ConfigError(
                "tls.cert_file",
                "is required when tls.client_ca_file is set (client certificates are only asked for over TLS)",
            )
        if self.require_client_cert and not self.client_ca_file:
            raise ConfigError("tls.client_ca_file", "is required when tls.require_client_cert is true")
        if self.client_ca_file and not self.require_client_cert:
            raise ConfigError(
                "tls.require_client_cert",
                "must be true when tls.client_ca_file is set: gRPC asks "
                "for a client certificate only when it requires one",
            )

    @property
    def enabled(self) -> bool:
        """Whether the ports serve TLS."""
        return bool(self.cert_file)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The files of a ``TlsSettings``, read and checked; build credentials from it.

    Attributes:
        settings: Where the files came from.
        cert_chain: PEM certificate chain.
        private_key: PEM private key; never shown in a repr.
        client_ca: PEM CA bundle for client certificates; None when not configured.
    """

    settings: TlsSettings
    cert_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = field(default=None, repr=False)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials for ``add_secure_port``; mutual TLS when ``require_client_cert``."""
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.settings.require_client_cert,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A server context for the admin HTTP port: TLS 1.2 or newer, no client certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_chain(context, self.settings)
        return context


def load_tls(settings: TlsSettings) -> TlsMaterial | None:
    """Reads and checks the files of ``settings``; None when TLS is off.

    Raises:
        ConfigError: naming the ``tls.*`` key whose file is missing, unreadable, not
            PEM, or does not fit (a key that is not the certificate's, a bad CA bundle).
    """
    if not settings.enabled:
        return None
    contents = {key: _read(settings, key) for key in _FILE_KEYS if getattr(settings, key)}
    # OpenSSL parses what grpc would only reject at the first handshake.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_verify_locations(cadata=contents["cert_file"].decode("ascii", "replace"))
    except (ssl.SSLError, ValueError):
        raise ConfigError("tls.cert_file", f"{settings.cert_file!r} holds no valid PEM certificate") from None
    _load_chain(context, settings)
    if "client_ca_file" in contents:
        try:
            context.load_verify_locations(cadata=contents["client_ca_file"].decode("ascii", "replace"))
        except (ssl.SSLError, ValueError):
            raise ConfigError(
                "tls.client_ca_file", f"{settings.client_ca_file!r} holds no valid PEM CA certificate"
            ) from None
    return TlsMaterial(settings, contents["cert_file"], contents["key_file"], contents.get("client_ca_file"))


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    raise _EncryptedKey  # instead of OpenSSL prompting on the terminal


def _load_chain(context: ssl.SSLContext, settings: TlsSettings) -> None:
    try:
        context.load_cert_chain(settings.cert_file, settings.key_file, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(
            "tls.key_file",
            f"{settings.key_file!r} is encrypted; give an unencrypted key (readable by the service user only)",
        ) from None
    except OSError as exc:  # ssl.SSLError is an OSError; a file that vanished since it was read too
        problem = (
            "is not the private key of tls.cert_file"
            if "MISMATCH" in str(exc).upper()
            else "holds no valid PEM private key"
        )
        raise ConfigError("tls.key_file", f"{settings.key_file!r} {problem}") from None


def _read(settings: TlsSettings, key: str) -> bytes:
    path = getattr(settings, key)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"tls.{key}", f"cannot read {path!r}: {exc.strerror or exc}") from None
    if _PEM_MARKER not in data:
        raise ConfigError(f"tls.{key}", f"{path!r} is not a PEM file")
    return data
